"""Run by tests/test_distributed.py, alone or under ``mpiexec -n K``: STEPS SGD steps of
MODEL through numbacnn.train.fit on real MNIST digits (zero-padded to 32 x 32, normalised),
then rank 0 saves the final state_dict to OUT.npz.

    python fit_steps.py MODEL BATCH STEPS SYNC_BN DTYPE OUT
"""

import sys

import numpy as np

import numbacnn.random as nrandom
from numbacnn import distributed
from numbacnn.data import DataLoader, mnist
from numbacnn.models import build_model
from numbacnn.optim import SGD
from numbacnn.train import fit

name, batch, steps, sync_bn, dtype, out = sys.argv[1:7]
batch, steps, sync_bn = int(batch), int(steps), sync_bn == "1"
world = distributed.world()
d = mnist.load_mnist()
x, y = mnist.preprocess(d["x_train"][: batch * steps], pad=2).astype(dtype), d["y_train"][: batch * steps]
nrandom.seed(0)
model = build_model(name, num_classes=10, in_channels=1).astype(dtype)
if sync_bn:
    distributed.convert_sync_batchnorm(model, world)
optimizer = SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
loader = DataLoader(x, y, batch, shuffle=True, seed=0, dtype=dtype)
fit(model, optimizer, loader, DataLoader(x[:batch], y[:batch], batch, dtype=dtype), 1, out, progress=False,
    log=lambda *a: None, world=world)  # fmt: skip
if world.is_root:
    np.savez(f"{out}.npz", **model.state_dict())
