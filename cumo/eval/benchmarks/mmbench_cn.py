"""MMBench-CN, dev split: MMBench's questions asked in Chinese, with the Chinese letter instruction.

Everything but the file (`eval/mmbench/mmbench_dev_cn_20231003.tsv`, CuMo scripts/cumo/eval/mmbench_cn.sh) and
the instruction ("请直接回答选项字母。", model_vqa_mmbench.py `--lang cn`) is MMBench-EN's: see mmbench.py.
"""

from cumo.eval.benchmarks.mmbench import declare

BENCHMARK = declare("cn")
