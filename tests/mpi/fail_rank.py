"""Run by tests/test_distributed.py under ``mpiexec -n 2``: rank 1 fails while rank 0 goes on
into a collective call; every rank must end (MPI_Abort), with rank 1's message, instead of
rank 0 waiting forever.

    python fail_rank.py cli OUT      numbacnn train; rank 1 raises in its third batch
    python fail_rank.py api OUT      the same through numbacnn.train.fit in a script (no
                                     numbacnn.cli: the excepthook of distributed.world())
    python fail_rank.py unequal OUT  fit where rank 1 was given fewer images: refused on
                                     every rank before the first batch
"""

import sys

import numpy as np

import numbacnn.train
from numbacnn import distributed
from numbacnn.cli import main
from numbacnn.data import DataLoader
from numbacnn.models import build_model
from numbacnn.optim import SGD

mode, out = sys.argv[1:3]
world = distributed.world()
if world.rank == 1 and mode in ("cli", "api"):
    real, calls = numbacnn.train.F.cross_entropy, []

    def cross_entropy(logits, labels):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("injected failure on rank 1")
        return real(logits, labels)

    numbacnn.train.F.cross_entropy = cross_entropy
if mode == "cli":
    argv = "train --limit-train 512 --limit-test 64 --epochs 1 --no-progress --out".split()
    sys.exit(main([*argv, out]))
rng = np.random.default_rng(0)
n = 256 if mode == "unequal" and world.rank == 1 else 320
x, y = rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, n)
model = build_model("lenet5", num_classes=10, in_channels=1)
numbacnn.train.fit(model, SGD(model.parameters(), lr=0.01), DataLoader(x, y, 64), DataLoader(x, y, 64), 1,
                   out, progress=False, world=world)  # fmt: skip
