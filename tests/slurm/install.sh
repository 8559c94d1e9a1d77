#!/usr/bin/env bash
# Debian's Slurm and MUNGE for tests/test_slurm.py (a real one-node cluster, tests/slurm_cluster.py).
# Called by `make test`; quick when they are installed. Without root or apt-get it installs nothing and
# says so: the Slurm tests then skip, with that reason.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "tests/slurm/install.sh: slurm-wlm and munge are not installed and cannot be here (needs root and" \
        "apt-get); tests/test_slurm.py will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
