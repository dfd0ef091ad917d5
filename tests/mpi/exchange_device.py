"""Run by tests/test_distributed.py under ``mpiexec -n K`` with NUMBA_ENABLE_CUDASIM=1: the
gradient exchange on gradients held as numba.cuda device arrays (the CUDA simulator's here).

Each rank's backward writes (rank + 1) * g into its device gradients, in three buckets; after
``finish`` every rank must hold (1 + 2 + ... + K) * g on the device. The mpich wheel is not
CUDA-aware, so the buckets are staged through pinned host memory (path "staged"). A model
with gradients both on the device and on the host is refused with a TypeError.

    python exchange_device.py
"""

import numpy as np
from numba import cuda

from numbacnn import distributed
from numbacnn.module import Module, Parameter


class Layer(Module):
    """Two parameters; backward writes (rank + 1) * their fixed gradient g."""

    def __init__(self, shapes, rank):
        super().__init__()
        self.rank = rank
        for i, shape in enumerate(shapes):
            setattr(self, f"p{i}", Parameter(np.zeros(shape, np.float32)))

    def backward(self, dy):
        for name, p in self._parameters.items():
            p.grad.copy_to_device((self.rank + 1) * g[(id(self), name)])
        return dy


world = distributed.world()
rng = np.random.default_rng(0)  # the same g on every rank
model = Module()
model.first = Layer([(3, 4), (5,)], world.rank)
model.second = Layer([(2, 3, 3), (7,)], world.rank)
g = {(id(m), n): rng.standard_normal(p.data.shape).astype(np.float32)
     for m in (model.first, model.second) for n, p in m._parameters.items()}  # fmt: skip

model.first.p0.grad = cuda.to_device(model.first.p0.grad)  # one on the device, the rest not
try:
    distributed.GradientExchange(world).attach(model)
    raise SystemExit("a model with gradients on the device and on the host was accepted")
except TypeError as e:
    assert "'first.p0' on the device and 'first.p1' on the host" in str(e), e

for p in model.parameters():
    p.data, p.grad = cuda.to_device(p.data), cuda.to_device(np.asarray(p.grad))
exchange = distributed.GradientExchange(world, bucket_bytes=24).attach(model)
assert exchange.path == "staged" and len(exchange.buckets) == 3, (exchange.path, exchange.buckets)
for _step in range(2):  # a second step reuses the buckets
    exchange.start()
    model.second.backward(None)  # the reverse order of registration, as a backward pass runs
    model.first.backward(None)
    exchange.finish()
    total = world.size * (world.size + 1) / 2
    for m in (model.first, model.second):
        for n, p in m._parameters.items():
            np.testing.assert_allclose(p.grad.copy_to_host(), total * g[(id(m), n)], rtol=1e-6)
lines = world.comm.gather(f"rank {world.rank}: {exchange.describe()}", root=0)  # one writer
if world.is_root:
    print("\n".join(lines))
