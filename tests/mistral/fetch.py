"""Put Mistral-7B's SentencePiece model, as PyPI's `mistral-common` ships it, at the path given (`make test`).

The file is `mistral_common/data/tokenizer.model.v1` of the mistral-common 1.13.1 wheel: the tokenizer of
Mistral-7B-Instruct-v0.2 and Mixtral-8x7B-Instruct-v0.1 (32,000 pieces). Only the wheel is fetched, from the
package index (`pip download --no-deps`): installing the package would pin numpy below what the Slurm
executor plugin needs. The digest is checked before the file is written; tests/conftest.py checks it again.

    python tests/mistral/fetch.py .venv/fixtures/mistral-tokenizer.model.v1
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "mistral-common==1.13.1"
MEMBER = "mistral_common/data/tokenizer.model.v1"
SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", folder, WHEEL]
        subprocess.run(command, check=True)
        (wheel,) = Path(folder).glob("*.whl")
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"{wheel.name}:{MEMBER} has sha256 {digest}, not Mistral-7B's tokenizer {SHA256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(data)
    partial.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
