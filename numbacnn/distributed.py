"""Data-parallel training over MPI: synchronous SGD on K ranks, written out (Horovod's pattern).

    mpiexec -n K numbacnn train ...            (or any script that calls numbacnn.recipe.run)

Every rank holds the whole model and sees the same global batch order (a pure function of
(seed, epoch): numbacnn.data.loader). Three collective calls keep the K replicas one model:

    1. Bcast      rank 0's parameters and buffers to every rank, once at the start
                  (``World.broadcast``): the replicas start equal.
    2. Allreduce  the gradients after every backward pass (``GradientExchange``): rank r
                  computes the gradient of ITS share of the global batch, scaled by
                  (its images / global batch), and the SUM over ranks is the gradient of the
                  mean loss over the whole batch -- exactly what one process computes. Every
                  rank then takes the same optimizer step, so the replicas stay equal.
    3. Allreduce  (with --sync-bn) each batch norm's per-channel statistics in the forward
                  pass and its two gradient sums in the backward pass (``SyncBatchNorm``),
                  so K ranks normalise with the statistics of the whole batch.

The gradients go in a few flat buckets, not one call per parameter: a bucket's
non-blocking Iallreduce starts as soon as the backward pass has produced all its
gradients (the last layers' first), and runs while the earlier layers are differentiated;
buckets start in one fixed order on every rank, as MPI requires of collectives. Gradients
held on a GPU (numba.cuda device arrays) are all-reduced where they are when the MPI
library is CUDA-aware (``cuda_aware_mpi``), else staged through pinned host memory:
``GradientExchange.path`` says which.

Which images rank r sees: images [lo_r, hi_r) of each global batch, ``np.array_split``'s
split of the batch into K nearly equal parts (``World.shard``); a function of (seed,
epoch, rank) only. Rank 0 alone prints, evaluates, and writes checkpoints, metrics and
plots; every rank reads a checkpoint to resume, so OUT must be visible to all (one machine,
or a shared file system). A failure on any rank aborts all of them (``World.abort``).

Every rank must build the same model and loaders: ``fit`` checks the data's description and
``broadcast`` the model's size across the ranks first (ValueError naming what differs). An
exception no one catches on one rank ends every rank (``world()`` installs an excepthook
that calls MPI_Abort, as ``python -m mpi4py`` does), so a script never hangs on a dead rank.

Without MPI (or with one rank) ``World`` is a single rank and every call is the identity.
``docs/scaling.md`` explains the ring all-reduce behind Allreduce and what it costs.
"""

import contextlib
import ctypes
import os
import sys
import time

import numpy as np

from . import functional as F
from ._checks import check_int
from ._io import directory_lock
from .kernels import is_device_array
from .layers import _BatchNorm

__all__ = ["World", "world", "GradientExchange", "SyncBatchNorm", "convert_sync_batchnorm", "launched_ranks",
           "shard_sizes", "cuda_aware_mpi", "launched_rank"]  # fmt: skip

BUCKET_BYTES = 4 << 20  # a bucket closes once it holds 4 MiB or more (ResNet-18: 7 buckets)


def launched_ranks():
    """The number of ranks ``mpiexec`` started this process among (1 when not under MPI),
    read from the launcher's environment (MPICH/Hydra, Intel MPI, srun --mpi=pmi2: PMI_SIZE;
    Open MPI: OMPI_COMM_WORLD_SIZE; srun --mpi=pmix: SLURM_STEP_NUM_TASKS)."""
    keys = ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE"]
    if "PMIX_RANK" in os.environ:
        keys += ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"]
    for key in keys:
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def launched_rank():
    """This process's rank according to the launcher's environment (0 when not under MPI)."""
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class World:
    """The ranks of this run: MPI's COMM_WORLD when launched by mpiexec with more than one
    rank (mpi4py), else one rank with no communication. ``rank``, ``size``, ``is_root``."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.is_root = self.rank == 0
        # a second communicator, for failing ranks only (all_failed): its calls can never be
        # matched with the training's collectives
        self._failures = comm.Dup() if comm is not None else None

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size})"

    # ---- the collectives --------------------------------------------------------------
    def broadcast(self, model):
        """1. Bcast: every parameter and buffer of ``model`` takes rank 0's values (one flat
        float64 buffer, so one call; integer buffers such as num_batches_tracked round-trip
        exactly). Every rank must pass the same model: ValueError (on every rank) when the
        ranks' state_dict names or shapes differ."""
        if self.size == 1:
            return
        state = model.state_dict()
        layout = [(k, np.shape(v), str(np.asarray(v).dtype)) for k, v in state.items()]
        self.check_same({"model's state_dict (names, shapes, dtypes)": layout})
        flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in state.values()])
        self.comm.Bcast(flat, root=0)
        offset, arrays = 0, {}
        for k, v in state.items():
            arrays[k] = flat[offset : offset + v.size].reshape(v.shape).astype(v.dtype)
            offset += v.size
        model.load_state_dict(arrays)

    def allreduce(self, values):
        """The element-wise SUM over ranks of a float64 vector (a new array)."""
        values = np.array(values, dtype=np.float64)
        if self.size > 1:
            self.comm.Allreduce(self._mpi().IN_PLACE, values, op=self._mpi().SUM)
        return values

    def check_same(self, values):
        """ValueError on every rank unless every rank passed equal ``values`` (a dict of
        name -> plain value: numbers, strings, tuples and lists of them, compared with ==);
        the message names the first value that differs and each rank's. One allgather."""
        if self.size == 1:
            return
        every = self.comm.allgather(values)
        for name in values:
            seen = [v.get(name) for v in every]
            if any(v != seen[0] for v in seen[1:]):
                ranks = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(seen))
                raise ValueError(f"every rank must be given the same {name}, got {ranks}")

    def bcast_value(self, value):
        """Rank 0's float64 vector, on every rank."""
        values = np.array(value, dtype=np.float64)
        if self.size > 1:
            self.comm.Bcast(values, root=0)
        return values

    # ---- the split of work ----------------------------------------------------------------
    def shard(self, n):
        """[lo, hi): this rank's part of a global batch of ``n`` images (np.array_split's: the
        first n % K ranks get one more). n: an int >= 0 (TypeError / ValueError)."""
        base, extra = divmod(check_int("World.shard", "n", n, minimum=0), self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def bcast_object(self, obj):
        """Rank 0's ``obj`` (any picklable object), on every rank."""
        return self.comm.bcast(obj, root=0) if self.size > 1 else obj

    def on_root(self, fn):
        """fn() on rank 0 alone; its result on every rank, or its exception raised on every
        rank (so one rank's refusal is every rank's, and none is left waiting)."""
        if self.size == 1:
            return fn()
        outcome = None
        if self.is_root:
            try:
                outcome = (True, fn())
            except Exception as e:  # handed to every rank, raised there
                outcome = (False, e)
        ok, value = self.comm.bcast(outcome, root=0)
        if not ok:
            raise value
        return value

    @contextlib.contextmanager
    def lock(self, directory):
        """Rank 0 locks OUT (numbacnn._io.directory_lock) for the block; the other ranks write
        nothing. DirectoryInUse on every rank when another run holds it."""
        with contextlib.ExitStack() as stack:
            self.on_root(lambda: stack.enter_context(directory_lock(directory)))  # the lock yields None
            yield

    def all_failed(self, timeout=2.0):
        """Called by a rank that failed: True when every rank calls it within ``timeout``
        seconds (they all met the failure, e.g. one mistake in their common arguments), so
        they may all exit without MPI_Abort; False otherwise (then abort)."""
        if self.size == 1:
            return True
        request, deadline = self._failures.Ibarrier(), time.monotonic() + timeout
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def abort(self, code=1):
        """End every rank now (MPI_Abort): a failure on one rank must not leave the others
        waiting in a collective call forever."""
        if self.size > 1:
            self.comm.Abort(code)

    @staticmethod
    def _mpi():
        from mpi4py import MPI

        return MPI


_WORLD = None


def world():
    """This process's World (made once): MPI's when mpiexec launched more than one rank.
    Under MPI each rank also takes its share of the machine's cores for Numba's threads
    (unless NUMBA_NUM_THREADS is set), so K ranks on one machine do not oversubscribe it.
    RuntimeError (naming the fix) when launched by mpiexec without mpi4py installed."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if launched_ranks() <= 1:
        _WORLD = World()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(
            f"mpiexec started {launched_ranks()} ranks but mpi4py is not installed: "
            "pip install 'numbacnn[mpi]' (mpi4py and the mpich wheel)"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != launched_ranks():
        raise RuntimeError(
            f"mpiexec started {launched_ranks()} ranks but MPI sees {comm.Get_size()}: mpiexec and "
            "mpi4py come from different MPI libraries (use the mpiexec installed beside mpi4py, "
            f"{os.path.join(os.path.dirname(sys.executable), 'mpiexec')})"
        )
    _WORLD = World(comm if comm.Get_size() > 1 else None)
    if _WORLD.size > 1:
        _abort_on_uncaught_exceptions(comm)
    if _WORLD.size > 1 and "NUMBA_NUM_THREADS" not in os.environ:
        import numba

        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()  # ranks on this machine
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, (os.cpu_count() or 1) // local)))
    return _WORLD


def _abort_on_uncaught_exceptions(comm):
    """An exception nobody catches on one rank prints its traceback, then ends every rank
    (MPI_Abort), instead of leaving the others waiting in a collective call forever."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.flush()
        if not _WORLD.all_failed():  # unless every rank failed alike: then they all end alone
            comm.Abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = hook


def shard_sizes(n, size):
    """The set of share sizes of a batch of ``n`` images over ``size`` ranks (World.shard);
    n >= 0, size >= 1 (ValueError)."""
    base, extra = divmod(
        check_int("shard_sizes", "n", n, minimum=0), check_int("shard_sizes", "size", size, minimum=1)
    )
    return {base + 1, base} if extra else {base}


def cuda_aware_mpi():
    """True when the MPI library this process loaded can read and write CUDA device memory
    itself: its ``MPIX_Query_cuda_support()`` (an extension both MPICH >= 4 and Open MPI
    export, looked up with ctypes in the libmpi mapped into this process) returns 1. False
    when it returns 0 (the ``mpich`` wheel does), when the library lacks the query, or
    without MPI. mpi4py then passes device arrays (``__cuda_array_interface__``) straight
    to MPI."""
    try:
        from mpi4py import MPI  # noqa: F401  (loads libmpi)
    except ImportError:
        return False
    try:
        with open("/proc/self/maps") as maps:
            libs = sorted({line.split()[-1] for line in maps if "/libmpi" in line})
    except OSError:  # not Linux
        libs = []
    for path in libs:
        query = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
        if query is not None:
            query.restype = ctypes.c_int
            return bool(query())
    return False


# ------------------------------------------------------------------------------ gradients
class GradientExchange:
    """2. Allreduce of the gradients, bucketed and overlapped with the backward pass.

    ``attach(model)`` once, then every step: ``start()`` before ``model.backward``, which
    launches each bucket's Iallreduce as its last gradient is produced (a hook on each layer
    that owns parameters), and ``finish()`` after it, which launches what is left, waits,
    and writes the summed gradients back into every ``Parameter.grad``.

    Buckets: the parameters in reverse registration order (about the order backward
    produces them), cut every ``bucket_bytes``; each bucket is one contiguous float buffer
    of its parameters' gradients (the parameters' dtype). Buckets are launched in index
    order on every rank (a ready bucket waits for the ones before it): MPI matches
    collectives by call order.

    Where the buffers live, ``path`` (set by ``attach``):

        "host"         NumPy gradients, NumPy buckets.
        "cuda-aware"   device gradients (numba.cuda), device buckets handed to MPI as they
                       are (``cuda_aware_mpi()``): no copy through the host.
        "staged"       device gradients, an MPI that cannot read device memory: each
                       gradient is copied into a bucket in pinned (page-locked) host memory,
                       all-reduced there, and copied back.

    TypeError from ``attach`` when some gradients are device arrays and others are not.
    """

    def __init__(self, world, bucket_bytes=BUCKET_BYTES):
        self.world = _check_world("GradientExchange", world)
        self.bucket_bytes = check_int("GradientExchange", "bucket_bytes", bucket_bytes, minimum=1)
        self.buckets, self._hooked = [], []

    def attach(self, model):
        """Cut ``model``'s parameters into buckets and hook its layers; returns self.
        RuntimeError when already attached (``detach()`` first)."""
        if self.buckets:
            raise RuntimeError("GradientExchange.attach: already attached to a model; detach() first")
        params = list(model.parameters())[::-1]
        bucket, size = [], 0
        for p in params:
            bucket.append(p)
            size += p.data.nbytes
            if size >= self.bucket_bytes:
                self.buckets.append(bucket)
                bucket, size = [], 0
        if bucket:
            self.buckets.append(bucket)
        on_device = [is_device_array(p.grad) for p in params]
        if any(on_device) and not all(on_device):
            named = dict(model.named_parameters())
            device = next(n for n, p in named.items() if is_device_array(p.grad))
            host = next(n for n, p in named.items() if not is_device_array(p.grad))
            raise TypeError(
                "GradientExchange: gradients must be all NumPy arrays or all device arrays, got "
                f"{device!r} on the device and {host!r} on the host"
            )
        self.path = "host" if not any(on_device) else "cuda-aware" if cuda_aware_mpi() else "staged"
        self._buffers = [self._allocate(sum(p.data.size for p in b), b[0].data.dtype) for b in self.buckets]
        index = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        for _, module in model.named_modules():
            own = [p for p in module._parameters.values() if p is not None]
            if own and self.world.size > 1:
                self._hook(module, [index[id(p)] for p in own])
        return self

    def _allocate(self, n, dtype):
        """One bucket's buffer, (n,), where ``path`` says."""
        if self.path == "host" or self.world.size == 1:
            return np.empty(n, dtype)
        from numba import cuda

        return cuda.device_array(n, dtype) if self.path == "cuda-aware" else cuda.pinned_array(n, dtype)

    def describe(self):
        """One line: the buckets, their size, and where they are all-reduced."""
        where = {
            "host": "in host memory",
            "cuda-aware": "in device memory (CUDA-aware MPI)",
            "staged": "staged through pinned host memory (MPI is not CUDA-aware)",
        }[self.path]
        total = sum(p.data.nbytes for b in self.buckets for p in b)
        return f"gradients all-reduced in {len(self.buckets)} bucket(s), {total / 2**20:.2f} MiB, {where}"

    def _hook(self, module, bucket_ids):
        original = module.backward

        def backward(dy, **options):  # options: input_grad (Conv2d, Graph)
            dx = original(dy, **options)
            for b in bucket_ids:
                self._ready[b] -= 1
            self._launch_ready()
            if self._requests:  # drive MPI's progress engine: buckets in flight move on meanwhile
                World._mpi().Request.Testall(self._requests)
            return dx

        module.backward = backward  # an instance attribute: shadows the class's method
        self._hooked.append(module)

    def detach(self):
        """Remove the backward hooks; the exchange may then attach to a model again."""
        for module in self._hooked:
            module.__dict__.pop("backward", None)
        self._hooked, self.buckets = [], []

    def start(self):
        """Before the backward pass: every bucket waits for all its parameters."""
        self._ready = [len(b) for b in self.buckets]
        self._requests, self._next = [], 0

    def _launch_ready(self, everything=False):
        MPI = World._mpi()
        while self._next < len(self.buckets) and (everything or self._ready[self._next] <= 0):
            b, buf = self.buckets[self._next], self._buffers[self._next]
            offset = 0
            for p in b:  # pack: the bucket's gradients, one after the other
                part = buf[offset : offset + p.data.size].reshape(p.data.shape)
                if self.path == "host":
                    part[...] = p.grad
                elif self.path == "staged":
                    p.grad.copy_to_host(part)  # device -> pinned host
                else:
                    part.copy_to_device(p.grad)  # device -> device
                offset += p.data.size
            if self.path == "cuda-aware":
                from numba import cuda

                cuda.synchronize()  # the copies are done before MPI reads the bucket
            self._requests.append(self.world.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))
            self._next += 1

    def finish(self):
        """After the backward pass: launch the rest, wait, unpack the sums into the grads."""
        if self.world.size == 1:
            return
        self._launch_ready(everything=True)
        World._mpi().Request.Waitall(self._requests)
        for b, buf in zip(self.buckets, self._buffers, strict=True):
            offset = 0
            for p in b:
                part = buf[offset : offset + p.data.size].reshape(p.data.shape)
                if self.path == "host":
                    p.grad[...] = part
                else:
                    p.grad.copy_to_device(part)  # pinned host or device -> the device gradient
                offset += p.data.size


# ---------------------------------------------------------------------------- batch norm
def _check_world(op, given):
    """``given`` itself, or this process's ``world()`` for None; TypeError for anything else."""
    if given is None:
        return world()
    if not isinstance(given, World):
        raise TypeError(f"{op}: world must be a numbacnn.distributed.World (distributed.world()), got "
                        f"{type(given).__name__}")  # fmt: skip
    return given


class SyncBatchNorm(_BatchNorm):
    """3. Batch norm over the whole global batch (torch.nn.SyncBatchNorm): in training, the
    per-channel statistics combine every rank's (count, mean, centred sum of squares) by
    Chan et al.'s parallel formula (an Allgather, combined in rank order on every rank, so
    every rank gets the same numbers), and the backward pass all-reduces the two per-channel
    gradient sums sum(dy) and sum(dy * xhat). With one rank, or in eval mode, it is batch norm.

    x: (N, C, H, W), (N, C) or (N, C, L), as BatchNorm2d / BatchNorm1d; a rank's N may be 0.
    ``world``: a World (default: ``world()``). Every rank must run each training-mode
    forward and backward of every SyncBatchNorm in step (they are collective calls: a rank
    that skips one leaves the others waiting). ValueError when the whole global batch holds
    one value per channel (the variance is undefined), on every rank. CPU arrays only.

    Built from a model's batch norms by ``convert_sync_batchnorm(model, world)``."""

    ranks = (2, 3, 4)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, world=None):
        super().__init__(num_features, eps, momentum)
        self.world = _check_world("SyncBatchNorm", world)

    def _as_functional(self, x):
        return x.reshape(x.shape + (1,)) if x.ndim == 3 else x  # (N, C, L) -> (N, C, L, 1)

    def forward(self, x):
        if not self.training or self.world.size == 1:
            return super().forward(x)
        self.output_shape(x.shape)
        xf = self._as_functional(x)
        self.num_batches_tracked += 1
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        count, mean, m2 = F.batch_norm_stats(xf)  # this rank's, float64 (C,)
        count, mean, m2 = _combine(self.world, count, mean, m2)  # the global batch's
        if count <= 1:
            raise ValueError(
                f"SyncBatchNorm: expected more than 1 value per channel, got {int(count)} in all"
            )
        var = m2 / count  # biased: normalises
        self.running_mean[...] = (1 - factor) * self.running_mean + factor * mean
        self.running_var[...] = (1 - factor) * self.running_var + factor * m2 / (count - 1)  # unbiased
        self._x, self._trained, self._stats = xf, True, (count, mean, var)
        return F.batch_norm_elemt(xf, self.weight.data, self.bias.data, mean, var, self.eps).reshape(x.shape)

    def backward(self, dy):
        if not getattr(self, "_stats", None) or not self._trained or self.world.size == 1:
            return super().backward(dy)
        count, mean, var = self._stats
        self._stats = None
        shape, dy = dy.shape, self._as_functional(dy)
        sum_dy, sum_dy_xhat = F.batch_norm_backward_reduce(dy, self._x, mean, var, self.eps)  # local
        sums = self.world.allreduce(np.concatenate([sum_dy, sum_dy_xhat]))
        c = self.num_features
        self.weight.grad += sum_dy_xhat.astype(self.weight.grad.dtype)  # this rank's share: the
        self.bias.grad += sum_dy.astype(self.bias.grad.dtype)  # gradient Allreduce sums them
        w = self.weight.data
        dx = F.batch_norm_backward_elemt(dy, self._x, w, mean, var, self.eps, sums[:c], sums[c:], count)
        return dx.reshape(shape)


def _combine(world, count, mean, m2):
    """Chan et al.'s pairwise combination of (n, mean, M2) over the ranks, in rank order."""
    parts = np.empty((world.size, 1 + 2 * len(mean)))
    world.comm.Allgather(np.concatenate([[count], mean, m2]), parts)
    c = len(mean)
    n, mu, s = parts[0, 0], parts[0, 1 : 1 + c].copy(), parts[0, 1 + c :].copy()
    for row in parts[1:]:
        nb, mub, sb = row[0], row[1 : 1 + c], row[1 + c :]
        total = n + nb
        if nb > 0:
            delta = mub - mu
            mu = mu + delta * (nb / total)
            s = s + sb + delta * delta * (n * nb / total)
            n = total
    return n, mu, s


def convert_sync_batchnorm(model, world=None):
    """Replace every batch norm of ``model`` (BatchNorm2d, BatchNorm1d) by a SyncBatchNorm
    sharing its parameters and buffers, in place (torch.nn.SyncBatchNorm.
    convert_sync_batchnorm); returns the model. world: a World (default: ``world()``);
    TypeError for anything else."""
    world = _check_world("convert_sync_batchnorm", world)
    for _, module in list(model.named_modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, _BatchNorm) and not isinstance(child, SyncBatchNorm):
                sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, world)
                sync.weight, sync.bias = child.weight, child.bias
                for b in ("running_mean", "running_var", "num_batches_tracked"):
                    sync._buffers[b] = child._buffers[b]
                sync.train(child.training)
                module._modules[name] = sync
    return model
