"""The 13 benchmarks' question and annotation files, in each benchmark's own format, over the shapes world.

`write_benchmarks(data_root)` writes under `data_root/eval/` the files that LLaVA-1.5's and CuMo's evaluation
scripts read, at the paths of https://github.com/SHI-Labs/CuMo scripts/cumo/eval/*.sh (LLaVA's
scripts/v1_5/eval/*.sh with ./playground/data/eval replaced by $CuMo_DIR/data/eval), so that the evaluation
code runs on the real formats in the tiny DAG. Every answer is read off the image (colours, shapes, positions,
counts, the rendered word, existence); yes/no labels and option letters are balanced; all follows from `seed`.

One module per benchmark (its folder under eval/, the files written, where the format comes from) and
`common` for what they share; `BENCHMARKS` below is the table of them.

Where we differ from the real files, on purpose:
- Images are PNG (lossless, so a rendered colour is exactly the colour asked about), named as the real ones
  with a .png extension; MMBench embeds them base64 in the TSV as the real one does.
- MMMU and MathVista are the Hub datasets' parquet layout with a README.md that declares the configs, so
  `datasets.load_dataset(<folder>, "<Subject>", split="validation")` and `load_dataset(<folder>,
  split="testmini")` work as CuMo's model_vqa_mmmu.py and model_vqa_mathvista.py call them with --data_path.
"""

import random
from functools import partial
from pathlib import Path

from cumo.data.synthetic_benchmarks.common import Writer
from cumo.data.synthetic_benchmarks.gqa import write_gqa
from cumo.data.synthetic_benchmarks.llava_wild import write_llava_wild
from cumo.data.synthetic_benchmarks.mathvista import MATHVISTA_FEATURES, write_mathvista
from cumo.data.synthetic_benchmarks.mmbench import write_mmbench
from cumo.data.synthetic_benchmarks.mme import write_mme
from cumo.data.synthetic_benchmarks.mmmu import MMMU_FEATURES, MMMU_SUBJECTS, write_mmmu
from cumo.data.synthetic_benchmarks.mmvet import write_mmvet
from cumo.data.synthetic_benchmarks.pope import write_pope
from cumo.data.synthetic_benchmarks.seed import write_seed
from cumo.data.synthetic_benchmarks.sqa import write_sqa
from cumo.data.synthetic_benchmarks.textvqa import write_textvqa
from cumo.data.synthetic_benchmarks.vqav2 import write_vqav2

# benchmark -> (folder under eval/, writer); folders as CuMo's scripts/cumo/eval/*.sh name them.
BENCHMARKS = {
    "sqa": ("scienceqa", write_sqa),
    "textvqa": ("textvqa", write_textvqa),
    "gqa": ("gqa", write_gqa),
    "pope": ("pope", write_pope),
    "mme": ("MME", write_mme),
    "mmbench": ("mmbench", partial(write_mmbench, lang="en")),
    "mmbench_cn": ("mmbench", partial(write_mmbench, lang="cn")),
    "seed": ("seed_bench", write_seed),
    "mmvet": ("mm-vet", write_mmvet),
    "llava_wild": ("llava-bench-in-the-wild", write_llava_wild),
    "mmmu": ("MMMU", write_mmmu),
    "mathvista": ("mathvista", write_mathvista),
    "vqav2": ("vqav2", write_vqav2),
}


def write_benchmarks(
    data_root: str | Path, seed: int = 0, per_benchmark: int = 40, image_size: int = 64
) -> dict[str, dict[str, Path]]:
    """Write all 13 benchmarks under `data_root/eval/`; returns {benchmark: {role: path}}.

    `per_benchmark` is the number of questions in each benchmark's question set, rounded up to the format's
    unit: per POPE setting, MMBench's questions before their circular copies, a whole number per MMMU subject.
    Each benchmark draws from its own random stream (seeded by `seed` and its name), so adding or changing one
    leaves the others' files as they were. Below 64 pixels the rendered word may cover a shape."""
    if per_benchmark < 1:
        raise ValueError(f"per_benchmark must be at least 1 question, got {per_benchmark}")
    eval_root = Path(data_root) / "eval"
    return {
        name: writer(Writer(eval_root / folder, random.Random(f"{seed}:{name}"), image_size), per_benchmark)
        for name, (folder, writer) in BENCHMARKS.items()
    }


# Imported from here by the tests (formats, MMMU's subjects) and the pipeline (write_benchmarks).
__all__ = ["BENCHMARKS", "MATHVISTA_FEATURES", "MMMU_FEATURES", "MMMU_SUBJECTS", "Writer", "write_benchmarks"]
