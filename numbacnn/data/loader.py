"""A minimal, reproducible mini-batch loader over in-memory arrays.

Reproducibility contract: for a given (seed, epoch) the sequence of batches -- the
sample order *and* every random augmentation -- is a pure function of (seed, epoch),
independent of anything else (the global RNG, earlier epochs, how far a previous
iteration got). Concretely, each ``iter(loader)`` does::

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(N) if shuffle else arange(N)
    batch_seeds = rng.integers(2**63, size=len(loader))
    # batch b: transform(x[order[b*B:(b+1)*B]], rng=np.random.default_rng(batch_seeds[b]))

so batch b's augmentation does not depend on how many numbers the transform drew for
earlier batches. Call ``loader.set_epoch(e)`` before each epoch to get a new order; the
epoch is *not* advanced automatically (iterating twice without `set_epoch` repeats
the same batches).
"""

import numpy as np

from .._checks import check_bool, check_int, labels_checked
from ..kernels import get as _kernels_for

__all__ = ["DataLoader", "DeviceLoader"]


class DataLoader:
    """Iterate over (x, y) in mini-batches.

    Args:
        x: (N, C, H, W) array (or (N, H, W), given a channel axis of 1). Batches are
            float32 (converted per batch, so uint8 storage is fine but is *not*
            normalised -- use `numbacnn.data.mnist.preprocess` first for MNIST).
        y: (N,) integer labels; batches are int64.
        batch_size: samples per batch (the last batch may be smaller unless `drop_last`).
        shuffle: draw a new random order each epoch (from (seed, epoch)).
        seed: non-negative int; together with the epoch it fixes order and augmentation.
        transform: optional callable ``transform(xb, rng=rng) -> xb`` applied to each
            float32 batch (see `numbacnn.data.augment`).
        drop_last: drop the final incomplete batch.
        dtype: the batches' float dtype, float32 (the models') or float64 (for a model cast
            with ``Module.astype(np.float64)``).

    Yields ``(xb, yb)``: xb float32 (or ``dtype``) (B, C, H, W) C-contiguous, yb int64 (B,).
    """

    def __init__(self, x, y, batch_size, shuffle=False, seed=0, transform=None, drop_last=False,
                 dtype=np.float32):  # fmt: skip
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim == 3:
            x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
        if x.ndim != 4:
            raise ValueError(f"DataLoader: x must be (N, C, H, W) or (N, H, W), got shape {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"DataLoader: y must be (N,) with N = x.shape[0]; got x.shape={x.shape}, y.shape={y.shape}"
            )
        if x.dtype.kind not in "fiu":
            raise TypeError(f"DataLoader: x must hold real numbers (float or int), got dtype {x.dtype}")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"DataLoader: y must hold integer labels, got dtype {y.dtype}")
        if y.size and (int(y.min()) < 0 or int(y.max()) > np.iinfo(np.int64).max):
            raise ValueError(
                f"DataLoader: labels must be in [0, 2**63), got values in [{y.min()}, {y.max()}]"
            )
        batch_size = check_int("DataLoader", "batch_size", batch_size, minimum=1)
        seed = check_int("DataLoader", "seed", seed, minimum=0)
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader: transform must be callable, got {type(transform).__name__}")
        self.x = x
        self.y = y
        self.batch_size = int(batch_size)
        self.shuffle = check_bool("DataLoader", "shuffle", shuffle)
        self.seed = int(seed)
        self.transform = transform
        self.drop_last = check_bool("DataLoader", "drop_last", drop_last)
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"DataLoader: dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.dtype = np.dtype(dtype)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Select the epoch whose order/augmentation the next iteration uses."""
        self.epoch = check_int("DataLoader.set_epoch", "epoch", epoch, minimum=0)

    def __len__(self):
        n = self.x.shape[0]
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    @property
    def num_samples(self):
        """Samples yielded per epoch (N, or fewer with `drop_last`)."""
        return len(self) * self.batch_size if self.drop_last else self.x.shape[0]

    def order(self, epoch=None):
        """The sample order of `epoch` (default: the current one), int64 (N,)."""
        epoch = self.epoch if epoch is None else check_int("DataLoader.order", "epoch", epoch, minimum=0)
        return self._order(np.random.default_rng([self.seed, epoch]))

    def _order(self, rng):
        n = self.x.shape[0]
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._order(rng)
        nb = len(self)
        batch_seeds = rng.integers(2**63, size=nb)
        bs = self.batch_size
        for b in range(nb):
            idx = order[b * bs : (b + 1) * bs]
            xb = np.ascontiguousarray(self.x[idx], dtype=self.dtype)  # (B, C, H, W)
            yb = self.y[idx].astype(np.int64)  # (B,)
            if self.transform is not None:
                xb = self.transform(xb, rng=np.random.default_rng(batch_seeds[b]))
                xb = np.ascontiguousarray(xb, dtype=self.dtype)
            yield xb, yb

    def __repr__(self):
        return (
            f"DataLoader(N={self.x.shape[0]}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, epoch={self.epoch}, transform={self.transform!r}, drop_last={self.drop_last})"
        )


class DeviceLoader:
    """A loader's (x, y) batches on the GPU: each batch uploaded once, the next one queued
    while the current one trains.

    loader: a DataLoader (or any iterable of NumPy (x, y) batches; ``len``, ``set_epoch``
    and the other attributes pass through). Each batch is copied into page-locked (pinned)
    host memory, two slots used in turn, and uploaded on a stream of its own; batch i + 1's
    upload is queued before batch i is handed out, and waited for only when it is needed.
    The labels are range-checked ONCE, on the host: a DataLoader's whole ``y`` at
    construction (any other loader's batches as they come); ``numbacnn.functional`` then
    needs no device-to-host copy to check them (``_checks.labels_checked``).

    Yields (xb, yb): numba.cuda device arrays, xb of the loader's float dtype, yb int64.
    """

    def __init__(self, loader):
        self.loader = loader
        y = getattr(loader, "y", None)
        self._range = (int(np.min(y)), int(np.max(y))) if isinstance(y, np.ndarray) and y.size else None

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # batch_size, seed, set_epoch, x, y, ...
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        be = _kernels_for("cuda")
        stream = be.new_stream()
        slots = [{}, {}]  # two pinned host buffers per (shape, dtype), used in turn
        ready = None
        for i, (xb, yb) in enumerate(self.loader):
            queued = self._queue(be, stream, slots[i % 2], np.asarray(xb), np.asarray(yb))
            if ready is not None:
                yield ready  # trains while `queued` uploads
            stream.synchronize()
            ready = queued
        if ready is not None:
            yield ready

    def _queue(self, be, stream, slot, xb, yb):
        yb = np.ascontiguousarray(yb, dtype=np.int64)
        lo, hi = self._range if self._range else ((int(yb.min()), int(yb.max())) if yb.size else (0, 0))
        out = []
        for a in (np.ascontiguousarray(xb), yb):
            key = (a.shape, a.dtype.str, len(out))
            if key not in slot:
                slot[key] = be.pinned_empty(a.shape, a.dtype)
            np.copyto(slot[key], a)
            out.append(be.upload(slot[key], stream))
        return out[0], labels_checked(out[1], lo, hi)
