"""Run by tests/test_distributed.py under ``mpiexec -n K``: SyncBatchNorm made from a
BatchNorm1d (by convert_sync_batchnorm) on (N, C) and (N, C, L) inputs, each rank holding
its share of the rows (np.array_split's), equals BatchNorm1d on the whole batch in one
process (every rank computes that reference itself): outputs, input gradients, parameter
gradients summed over the ranks, running statistics. Rank 0 prints "ok".

    python sync_bn_shapes.py
"""

import numpy as np

from numbacnn import distributed
from numbacnn.layers import BatchNorm1d
from numbacnn.module import Module

world = distributed.world()
rng = np.random.default_rng(0)
for shape in [(11, 3), (7, 3, 5)]:
    x = rng.standard_normal(shape) * 3 + 2
    dy = rng.standard_normal(shape)
    ref = BatchNorm1d(3).astype(np.float64)
    y_ref, dx_ref = ref(x), ref.backward(dy)
    model = Module()
    model.bn = BatchNorm1d(3).astype(np.float64)
    distributed.convert_sync_batchnorm(model, world)
    assert type(model.bn) is distributed.SyncBatchNorm
    lo, hi = world.shard(shape[0])
    y, dx = model.bn(x[lo:hi]), model.bn.backward(dy[lo:hi])
    np.testing.assert_allclose(y, y_ref[lo:hi], atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref[lo:hi], atol=1e-12)
    grads = world.allreduce(np.concatenate([model.bn.weight.grad, model.bn.bias.grad]))
    np.testing.assert_allclose(grads, np.concatenate([ref.weight.grad, ref.bias.grad]), atol=1e-12)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(model.bn, name), getattr(ref, name), atol=1e-12)
if world.is_root:
    print("ok")
