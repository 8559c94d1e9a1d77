#!/usr/bin/env bash
# Run by Snakemake in the new env, from the workflow's working directory (this checkout's root). Editable and
# without dependencies: the env file lists every package the steps import (tests/test_workflow.py checks),
# and the env always runs this checkout's code.
set -euo pipefail
pip install --no-deps --no-build-isolation -e .
