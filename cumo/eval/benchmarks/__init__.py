"""The 13 benchmarks of the paper, one module each, in the order of its Table 1.

`get(name)` imports `cumo.eval.benchmarks.<name>` and returns its `BENCHMARK`; nothing else here knows what
a benchmark contains, so adding one is a module and a line in `NAMES` (cumo/eval/README.md, "Adding a benchmark").
"""

import importlib

from cumo.eval.benchmark import Benchmark

# CuMo's Table 1 order: SQA-IMG, TextVQA, GQA, POPE, MME, MMB-EN, MMB-CN, MM-Vet, VQAv2, LLaVA-W, SEED-IMG,
# MMMU, MathVista.
NAMES = (
    "sqa",
    "textvqa",
    "gqa",
    "pope",
    "mme",
    "mmbench",
    "mmbench_cn",
    "mmvet",
    "vqav2",
    "llava_wild",
    "seed",
    "mmmu",
    "mathvista",
)


def get(name: str) -> Benchmark:
    if name not in NAMES:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(NAMES)}")
    benchmark = importlib.import_module(f"cumo.eval.benchmarks.{name}").BENCHMARK
    if benchmark.name != name:
        raise RuntimeError(f"cumo/eval/benchmarks/{name}.py declares a benchmark named {benchmark.name!r}")
    return benchmark
