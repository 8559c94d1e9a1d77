"""Run the command in argv[1:] (torchrun and its script) as `cumo launch` runs torchrun on one node
(`cumo.train.launch.supervise`), and exit with the job's exit code."""

import sys

from cumo.train.launch import supervise

if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1:], {}))
