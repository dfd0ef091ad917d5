"""Run by tests/test_distributed.py under ``mpiexec -n 2``: ``numbacnn train`` in which rank 1
raises in its third batch while rank 0 goes on into the gradient Allreduce: every rank must
end (MPI_Abort), with rank 1's message, instead of rank 0 waiting forever.

    python fail_rank.py OUT
"""

import sys

import numbacnn.train
from numbacnn import distributed
from numbacnn.cli import main

if distributed.world().rank == 1:
    real, calls = numbacnn.train.F.cross_entropy, []

    def cross_entropy(logits, labels):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("injected failure on rank 1")
        return real(logits, labels)

    numbacnn.train.F.cross_entropy = cross_entropy
argv = "train --limit-train 512 --limit-test 64 --epochs 1 --no-progress --out".split()
sys.exit(main([*argv, sys.argv[1]]))
