"""Run by tests/test_distributed.py under ``mpiexec -n 2``: rank 1 fails while rank 0 goes on
into a collective call; every rank must end (MPI_Abort), with rank 1's message, instead of
rank 0 waiting forever.

    python fail_rank.py cli OUT      numbacnn train; rank 1 raises in its third batch
    python fail_rank.py api OUT      the same through numbacnn.train.fit in a script (no
                                     numbacnn.cli: the excepthook of distributed.world())
    python fail_rank.py unequal OUT  fit where rank 1 was given fewer images: refused on
                                     every rank before the first batch
    python fail_rank.py noise OUT    ... other images with the same labels: refused
    python fail_rank.py dtype OUT    ... a float64 model on rank 1: refused
    python fail_rank.py locked OUT   OUT locked by a live process: DirectoryInUse on every
                                     rank, caught, sys.exit(2) on every rank
    python fail_rank.py returns OUT  2 epochs; every rank returns rank 0's metrics and finds
                                     the checkpoint of the last epoch: prints "returned ..."
"""

import os
import sys

import numpy as np

import numbacnn.train
from numbacnn import distributed
from numbacnn._io import DirectoryInUse
from numbacnn.cli import main
from numbacnn.data import DataLoader
from numbacnn.models import build_model
from numbacnn.optim import SGD

mode, out = sys.argv[1:3]
world = distributed.world()
if world.rank == 1 and mode in ("cli", "api"):
    real, calls = numbacnn.train.F.loss_and_hits, []

    def loss_and_hits(logits, labels, totals):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("injected failure on rank 1")
        return real(logits, labels, totals)

    numbacnn.train.F.loss_and_hits = loss_and_hits
if mode == "cli":
    argv = "train --limit-train 512 --limit-test 64 --epochs 1 --no-progress --out".split()
    sys.exit(main([*argv, out]))
rng = np.random.default_rng(0)
n = 256 if mode == "unequal" and world.rank == 1 else 320
x, y = rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, n)
if mode == "noise" and world.rank == 1:
    x += 1
model = build_model("lenet5", num_classes=10, in_channels=1)
if mode == "dtype" and world.rank == 1:
    model.astype(np.float64)
if mode == "locked" and world.is_root:
    os.makedirs(out)
    with open(os.path.join(out, ".numbacnn.lock"), "w") as f:
        f.write(f"{os.getppid()}\n")  # a live process: mpiexec
try:
    metrics = numbacnn.train.fit(model, SGD(model.parameters(), lr=0.01), DataLoader(x, y, 64),
                                 DataLoader(x, y, 64), 2, out, progress=False, world=world)  # fmt: skip
except DirectoryInUse:
    sys.exit(2)
if mode == "returns":
    from numbacnn import checkpoint

    saved = checkpoint.load(os.path.join(out, "checkpoint.npz")).meta["epoch"]
    lines = world.comm.gather(f"returned {len(metrics)} rows, checkpoint epoch {saved} on rank {world.rank}")
    if world.is_root:  # one writer: mpiexec interleaves two
        print("\n".join(lines))
