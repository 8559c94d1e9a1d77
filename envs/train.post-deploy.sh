#!/usr/bin/env bash
# Run by Snakemake in the new env, from this checkout's root. DeepSpeed builds against the torch already in
# the env (--no-build-isolation: an isolated build would fetch a torch of its own), then cumo as in
# data.post-deploy.sh.
set -euo pipefail
pip install --no-build-isolation deepspeed==0.19.8
bash envs/data.post-deploy.sh
