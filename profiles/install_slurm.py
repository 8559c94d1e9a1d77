"""`make slurm-profile`: profiles/slurm installed as the user's Snakemake profile named `slurm`, so that
`snakemake --profile slurm all` works from the repository root (README, "Run the paper on Slurm").

Snakemake looks a profile name up in the current folder, then in the user's and the site's config folders
(snakemake/cli.py `get_profile_dir`, platformdirs' AppDirs("snakemake", "snakemake")), never under
profiles/. The installed file is a copy of profiles/slurm/config.yaml with, where given, the cluster's account
and partition as `default-resources`; profiles/default (the workflow profile) does not set
`default-resources`, so Snakemake passes these through to every job (`snakemake --help`, --workflow-profile).

Running it again rewrites the copy from profiles/slurm, as long as the copy is the one it wrote: the first
line holds the SHA-256 of the rest. A profile `slurm` it did not write (another project's, or this one edited
by hand) is left as it is, with what to do.
"""

import argparse
import hashlib
import json
import re
from pathlib import Path

import platformdirs

SOURCE = Path(__file__).resolve().parent / "slurm" / "config.yaml"
# The first line, which only this script writes; the second is part of what the digest covers.
HEADER = "# Written by `make slurm-profile`; sha256 of the lines below: {digest}\n"
DIGEST = re.compile(r"sha256 of the lines below: ([0-9a-f]{64})$")
ORIGIN = "# From {source}: edit that file and run `make slurm-profile` again; an edited copy here is not updated.\n"


def profile_text(account: str, partition: str) -> str:
    """profiles/slurm/config.yaml, and `default-resources` with the account and partition that are not empty."""
    body = ORIGIN.format(source=SOURCE) + SOURCE.read_text()
    resources = {"slurm_account": account, "slurm_partition": partition}
    given = {key: value for key, value in resources.items() if value}
    if given:
        # JSON strings are YAML strings: an account like 12345 stays a string, quotes and colons stay text.
        body += "default-resources:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in given.items())
    digest = hashlib.sha256(body.encode()).hexdigest()
    return HEADER.format(digest=digest) + body


def written_here(text: str) -> bool:
    """Whether `text` is a profile this script wrote and nobody edited since."""
    header, _, body = text.partition("\n")
    match = DIGEST.search(header)
    return match is not None and match[1] == hashlib.sha256(body.encode()).hexdigest()


def install(config_dir: Path, account: str = "", partition: str = "") -> Path:
    """Write `config_dir`/slurm/config.yaml (config_dir: where Snakemake looks profiles up); its path."""
    folder = config_dir / "slurm"
    path = folder / "config.yaml"
    partial = path.with_name(path.name + ".partial")  # left by an interrupted run: ours
    ours = {path.name, partial.name}
    others = sorted(p.name for p in folder.iterdir() if p.name not in ours) if folder.is_dir() else []
    if others or (path.exists() and not written_here(path.read_text())):
        what = (
            f"holds {', '.join(others)}"
            if others
            else f"has a {path.name} that `make slurm-profile` did not write"
        )
        raise SystemExit(
            f"{folder} {what} (another project's profile `slurm`, or this one edited by hand): left as it is. "
            f"Move it away (mv {folder} {folder}.old) and run `make slurm-profile` again; changes of your own "
            f"belong in {SOURCE}, or on the command line (snakemake --profile slurm --jobs 16 ...)."
        )
    folder.mkdir(parents=True, exist_ok=True)
    partial.write_text(profile_text(account, partition))
    partial.replace(path)  # whole or not at all: a Snakemake started meanwhile never reads half a profile
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--account", default="", help="Slurm account (sbatch -A); empty: none is written")
    parser.add_argument("--partition", default="", help="Slurm partition (sbatch -p); empty: none is written")
    args = parser.parse_args()
    path = install(Path(platformdirs.user_config_dir("snakemake", "snakemake")), args.account, args.partition)
    print(
        f"{path}: Snakemake profile `slurm` from {SOURCE}; run `snakemake --profile slurm all` from the repository root."
    )


if __name__ == "__main__":
    main()
