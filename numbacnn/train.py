"""The training loop: the lecture's SGD, epoch by epoch, with evaluation, metrics,
checkpoints and exact resume.

    for epoch = 1 .. epochs:
        loader.set_epoch(epoch)                    # shuffle (and augment) = f(seed, epoch)
        model.train()
        for each batch (x, y):
            logits = model(x); loss = cross_entropy(logits, y)
            model.zero_grad(); model.backward(cross_entropy_backward(logits, y))
            optimizer.step()                       # theta -= lr * g (+ momentum, decay)
        model.eval(); test loss/accuracy
        schedule.step()
        write OUT/checkpoint.npz, OUT/metrics.json, OUT/curves.png  (each atomically)

Exact resume: the checkpoint holds the model state (BN running statistics included), the
optimizer's momentum buffers, the schedule's epoch, kind and length, the ``numbacnn.random``
generator state and the metrics so far. Shuffling and augmentation are pure functions of
(seed, epoch), so a run interrupted after epoch 2 of 3 and resumed to 3 gives bit-identical
weights to the 3 epochs trained straight. Resuming to MORE epochs is bit-identical only
when the schedule's length does not depend on the epochs (none, or step with a fixed
step_size); the cosine schedule spans ``epochs``, so it changes, and numbacnn.resume says so
when it happens.

A diverged run (loss NaN, infinite, or DIVERGED * log(K) or more) stops at once with
``TrainingDiverged``, keeping the last complete checkpoint. OUT is locked while fit runs
(``numbacnn._io.directory_lock``): a second run on the same OUT refuses.

Ctrl-C: the loop stops, the last complete checkpoint (atomically written) stays intact,
its location is printed, and ``TrainingInterrupted`` (a KeyboardInterrupt) is raised; the
CLI turns it into exit code 130.
"""

import json
import math
import os
import sys
import time
import zlib

import numpy as np
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed, kernels
from . import functional as F
from . import random as nrandom
from ._checks import is_int
from ._interrupt import caused_by_ctrl_c
from ._io import atomic_write
from .data.loader import DeviceLoader
from .distributed import GradientExchange, World
from .graph import takes_input_grad
from .kernels import jit_counts

__all__ = [
    "fit",
    "TrainingDiverged",
    "evaluate",
    "TrainingInterrupted",
    "write_metrics",
    "plot_curves",
    "METRIC_KEYS",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "CURVES_NAME",
]

CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.json"
CURVES_NAME = "curves.png"
METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "lr",
    "seconds",
    "images_per_second",
)
_SCHED_PREFIX = "schedule."


# A training loss above DIVERGED * log(K), a thousand times the loss of guessing uniformly
# among K classes, means the logits have blown up: no run that is learning gets near it.
DIVERGED = 1000.0

# A model on "cuda" keeps the epoch's loss and hits on the device and reads them back (one
# 16-byte copy) every READ_EVERY batches and at the end of the epoch; the divergence check
# runs on each read, over the batches since the last one. On the CPU every batch is read.
READ_EVERY = 10


class TrainingDiverged(RuntimeError):
    """The training loss became NaN, infinite, or larger than DIVERGED * log(K): training
    stopped before the optimizer step that would have spread it further into the weights.
    ``checkpoint`` is the last complete checkpoint (or None)."""

    def __init__(self, epoch, batch, loss, lr):
        self.epoch, self.batch, self.loss, self.lr = epoch, batch, loss, lr
        self.checkpoint = None
        super().__init__(f"epoch {epoch}, batch {batch}")

    def __str__(self):
        kept = f"the last complete checkpoint {self.checkpoint} is kept"
        if not self.checkpoint:
            kept = "no epoch of this run completed, so it wrote no checkpoint"
        return (f"the training loss became {self.loss:.4g} at epoch {self.epoch}, batch {self.batch}; "
                f"the learning rate ({self.lr:g}) is probably too high; {kept}")  # fmt: skip


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. ``checkpoint`` is the last complete checkpoint (or None),
    ``epoch`` the number of epochs it holds."""

    def __init__(self, checkpoint, epoch):
        super().__init__(checkpoint, epoch)
        self.checkpoint = checkpoint
        self.epoch = epoch


def evaluate(model, loader):
    """Mean cross-entropy and accuracy (0-1) of ``model`` in eval mode over ``loader``.
    Restores the model's previous mode. A model on "cuda" gets each batch uploaded once
    (DeviceLoader); its loss and hits are summed on the device and read once, at the end."""
    was_training = getattr(model, "training", True)
    model.eval()
    device = model.device
    backend = kernels.get(device)
    backend.trim()  # the training steps' free outputs: not held beside the test pass's
    totals = backend.full((2,), 0.0, np.float64)  # (loss sum, hits) on the device
    n = 0
    try:
        for xb, yb in DeviceLoader(loader) if device == "cuda" else loader:
            F.loss_and_hits(model(xb), yb, totals)
            n += yb.shape[0]
    finally:
        model.train(was_training)
        backend.trim()  # and the test pass's, before training makes its own again
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    total_loss, correct = backend.to_host(totals)
    return float(total_loss) / n, float(correct) / n


def _atomic_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_metrics(path, metrics):
    """OUT/metrics.json: a JSON list with one object per epoch (keys METRIC_KEYS)."""
    _atomic_text(path, json.dumps(metrics, indent=2) + "\n")


def plot_curves(path, metrics, title=None):
    """Loss and accuracy vs epoch (train and test) as a PNG, with the Agg canvas (no
    display needed, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    ax1.plot(epochs, [m["test_loss"] for m in metrics], "s-", label="test")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.set_title("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 * m["train_accuracy"] for m in metrics], "o-", label="train")
    ax2.plot(epochs, [100 * m["test_accuracy"] for m in metrics], "s-", label="test")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title("accuracy")
    ax2.legend()
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _optim_state(optimizer, schedule):
    state = dict(optimizer.state_dict())
    if schedule is not None:
        for k, v in schedule.state_dict().items():
            state[_SCHED_PREFIX + k] = v
    return state


def _restore(path, model, optimizer, schedule):
    """Load a checkpoint into model/optimizer/schedule/random; returns its meta."""
    model_state, optim_state, meta = ckpt.load(path)
    ckpt.load_model_state(model, model_state)
    opt_state = {k: v for k, v in optim_state.items() if not k.startswith(_SCHED_PREFIX)}
    sched_state = {k[len(_SCHED_PREFIX) :]: v for k, v in optim_state.items() if k.startswith(_SCHED_PREFIX)}
    try:
        optimizer.load_state_dict(opt_state)
        if schedule is not None and sched_state:
            schedule.load_state_dict(sched_state)
    except (KeyError, ValueError, TypeError) as e:
        raise ckpt.CheckpointError(f"{path}: optimizer state does not fit: {e}") from None
    check_training_meta(path, meta)
    nrandom.set_state(meta["random_state"])
    return meta


def check_training_meta(path, meta):
    """CheckpointError unless ``meta`` is a training checkpoint's: a whole-number epoch and
    a random state numbacnn.random can restore (checked on a scratch generator)."""
    for key in ("epoch", "random_state"):
        if key not in meta:
            raise ckpt.CheckpointError(f"{path}: not a training checkpoint (meta has no {key!r})")
    if not is_int(meta["epoch"]) or meta["epoch"] < 0:
        raise ckpt.CheckpointError(f"{path}: meta['epoch'] must be a whole number, got {meta['epoch']!r}")
    metrics = meta.get("metrics", [])
    if not isinstance(metrics, list) or not all(
        isinstance(row, dict) and all(k in row for k in METRIC_KEYS) for row in metrics
    ):
        raise ckpt.CheckpointError(
            f"{path}: meta['metrics'] must be a list of rows with the keys {METRIC_KEYS}"
        )
    try:
        np.random.default_rng().bit_generator.state = json.loads(meta["random_state"])
    except (TypeError, ValueError, KeyError) as e:
        raise ckpt.CheckpointError(f"{path}: meta['random_state'] is not a generator state ({e})") from None


def fit(
    model,
    optimizer,
    train_loader,
    test_loader,
    epochs,
    out_dir,
    schedule=None,
    resume=False,
    config=None,
    progress=True,
    on_batch=None,
    log=None,
    on_resume=None,
    world=None,
):
    """Train ``model`` for ``epochs`` epochs in total; returns the metrics list.

    train_loader: a DataLoader with ``set_epoch(e)``; test_loader: any iterable of
    (x, y) batches. config: a JSON-able dict (e.g. the CLI arguments) stored in every
    checkpoint's meta. resume: continue from OUT/checkpoint.npz (the optimizer, schedule
    and random state come from it; training continues with epoch ``meta.epoch + 1``).
    on_batch(epoch, batch_index, loss): called after every optimizer step (tests use it
    to simulate Ctrl-C). log: a print-like function (default: print to stderr).
    on_resume(meta): called once the checkpoint is restored, before the first resumed epoch
    (numbacnn.recipe uses it to apply optimizer settings the user changed on resume).
    world: a ``numbacnn.distributed.World``: data-parallel training over its ranks. Every
    rank passes the same model, optimizer settings, loaders and epochs (checked first:
    ValueError on every rank naming what differs); rank 0 alone logs, evaluates and writes
    OUT; every rank returns rank 0's metrics, once rank 0 has written them. Default: this
    process's ``numbacnn.distributed.world()`` (one rank unless launched by mpiexec).
    On the CPU with one rank, a cold first batch compiles its kernels on every core at once
    (numbacnn.kernels.cpu.precompile): ValueError at once for a NUMBACNN_JIT_WORKERS that
    is not a whole number.
    """
    world = distributed.world() if world is None else world
    if not isinstance(world, World):
        raise TypeError(f"fit: world must be a numbacnn.distributed.World, got {type(world).__name__}")
    if world.size > 1 and model.device != "cpu":
        raise ValueError(
            f"fit: a model on {model.device!r} trains on one process only so far ({world.size} ranks)"
        )
    if model.device == "cpu" and world.size == 1:
        from .kernels.cpu.precompile import default_workers

        default_workers()  # a bad NUMBACNN_JIT_WORKERS: ValueError now, not at the first batch
    log = (log or (lambda *a: print(*a, file=sys.stderr, flush=True))) if world.is_root else (lambda *a: None)
    out_dir = os.fspath(out_dir)
    world.on_root(lambda: os.makedirs(out_dir, exist_ok=True))
    with world.lock(out_dir):  # a second run on the same OUT refuses instead of racing
        return _fit(model, optimizer, train_loader, test_loader, epochs, out_dir, schedule, resume,
                    dict(config or {}), progress, on_batch, log, on_resume, world)  # fmt: skip


def _one_step(model, optimizer, xb, yb):
    """The kernels' view of a training batch in one process (_train_epoch's loop body without
    its reads and checks): what compile_ahead traces."""
    logits = model(xb)
    F.loss_and_hits(logits, yb, np.zeros(2))
    model.zero_grad()
    dlogits = F.cross_entropy_backward(logits, yb)
    if takes_input_grad(model):
        model.backward(dlogits, input_grad=False)
    else:
        model.backward(dlogits)
    optimizer.step()


def _first_batch_note(before, seconds, device="cpu", ahead=None):
    """What the first batch spent on Numba's JIT, in one line (None when it compiled or loaded
    nothing): `before` is kernels.jit_counts() from before it, `ahead` what compile_ahead
    returned (kernels compiled here and by the other processes). On "cuda" the kernels are
    compiled at their first launch in every run (numba.cuda keeps no disk cache here)."""
    if device == "cuda":
        from numba import config

        if config.ENABLE_CUDASIM:
            return (
                f"the first batch took {seconds:.1f} s in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1: "
                "every CUDA thread runs as Python, slowly; nothing is compiled)"
            )
        return f"the first batch compiled its CUDA kernels in {seconds:.1f} s (Numba's JIT, once per run)"
    compiled, loaded = (after - b for after, b in zip(jit_counts(), before, strict=True))
    if ahead is not None and ahead.children:
        return (
            f"the first batch compiled its kernels in {seconds:.1f} s (Numba's JIT, in {ahead.processes} "
            "processes at once; once: they are cached on disk, and later runs load them)"
        )
    if compiled:
        return (
            f"the first batch compiled its kernels in {seconds:.1f} s (Numba's JIT, once: they are "
            "cached on disk, and later runs load them)"
        )
    if loaded:
        return f"the first batch loaded its compiled kernels from Numba's cache in {seconds:.1f} s"
    return None


def _train_epoch(model, optimizer, loader, epoch, epochs, progress, on_batch, world, exchange, log=None):
    """One pass over ``loader``: (mean loss, accuracy, images, seconds). Stops at once, before
    the optimizer step, when the loss is not finite (TrainingDiverged; a model on "cuda"
    checks at each read of its device-side sums, every READ_EVERY batches). Under MPI (``world``
    of K ranks) each global batch is shared out (``world.shard``), this rank's gradient is
    scaled by its share, and ``exchange`` sums the gradients over the ranks, so every rank
    takes the step one process would take on the whole batch (numbacnn.distributed). Given
    ``log``, the first batch says once what it spent compiling (or loading) kernels: a cold
    start's wait is Numba's JIT, not training."""
    device = model.device
    be = kernels.get(device)
    read_every = READ_EVERY if device == "cuda" else 1
    totals = be.full((2,), 0.0, np.float64)  # this epoch's (loss sum, hits), on the model's device
    total_loss, correct, seen = 0.0, 0, 0  # as of the last read
    loss = math.nan
    bar = None
    batches = DeviceLoader(loader) if device == "cuda" else loader
    if progress:
        bar = tqdm(batches, total=len(loader), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True,
                   dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        batches = bar
    t0 = time.perf_counter()
    ahead = None
    if log is not None:
        jit_before = jit_counts()
        if bar is not None:
            bar.set_postfix_str("first batch: compiling or loading the kernels", refresh=True)
    try:
        unread = 0  # images since the last read
        for i, (xb, yb) in enumerate(batches):
            b = yb.shape[0]
            lo, hi = world.shard(b)  # this rank's images of the global batch (one rank: all)
            if (lo, hi) != (0, b):
                xb, yb = xb[lo:hi], yb[lo:hi]
            if i == 0 and log is not None and device == "cpu" and world.size == 1:
                # Numba compiles what this batch calls on every core at once (a fork traces it)
                from .kernels.cpu.precompile import compile_ahead

                ahead = compile_ahead(lambda: _one_step(model, optimizer, xb, yb))  # noqa: B023
            with nrandom.rows_from(lo):  # dropout: the global rows' masks
                logits = model(xb)
            if world.size == 1:
                F.loss_and_hits(logits, yb, totals)
                unread += b
                if (i + 1) % read_every == 0 or i == len(loader) - 1:
                    loss_sum, hits = (float(v) for v in be.to_host(totals))
                    loss = (loss_sum - total_loss) / unread  # mean over the batches since the last read
                    total_loss, correct, seen, unread = loss_sum, int(hits), seen + unread, 0
            else:  # the global batch's mean loss and hits, on every rank (all stop together)
                mine = np.zeros(2)
                if hi > lo:
                    F.loss_and_hits(logits, yb, mine)
                loss_sum, hits = world.allreduce([float(mine[0]), int(mine[1])])
                loss, total_loss = loss_sum / b, total_loss + loss_sum
                correct, seen = correct + int(hits), seen + b
            if unread == 0 and not loss <= DIVERGED * math.log(logits.shape[1]):  # NaN fails it too
                raise TrainingDiverged(epoch, i + 1, loss, optimizer.lr)
            model.zero_grad()
            dlogits = F.cross_entropy_backward(logits, yb)  # of this rank's mean loss
            if world.size > 1:
                dlogits *= dlogits.dtype.type(len(yb) / b)  # its share of the global mean
            exchange.start()
            if takes_input_grad(model):
                model.backward(dlogits, input_grad=False)  # nothing needs the images' gradient
            else:
                model.backward(dlogits)
            exchange.finish()  # the gradients summed over the ranks
            optimizer.step()
            if i == 0 and log is not None:
                note = _first_batch_note(jit_before, time.perf_counter() - t0, device, ahead)
                if note:
                    if bar is not None:
                        tqdm.write(note, file=sys.stderr)  # above the bar, which stays whole
                    else:
                        log(note)
            if bar is not None and unread == 0 and (read_every > 1 or i % 10 == 0 or i == len(loader) - 1):
                elapsed = time.perf_counter() - t0
                img_s = f"{seen / max(elapsed, 1e-9):.0f}"
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=img_s, refresh=False)
            if on_batch is not None:
                on_batch(epoch, i, loss)
    finally:
        if bar is not None:
            bar.close()
    if seen == 0:
        raise ValueError("fit: the training loader yielded no samples")
    return total_loss / seen, correct / seen, seen, time.perf_counter() - t0


def _fit(model, optimizer, train_loader, test_loader, epochs, out_dir, schedule, resume, config, progress,
         on_batch, log, on_resume, world):  # fmt: skip
    """fit's loop, with OUT locked (by rank 0)."""
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
    metrics_path = os.path.join(out_dir, METRICS_NAME)
    curves_path = os.path.join(out_dir, CURVES_NAME)
    metrics, done = [], 0
    if resume:
        if not os.path.exists(ckpt_path):
            raise ckpt.CheckpointError(
                f"cannot resume: no checkpoint at {ckpt_path} (run without --resume to start)"
            )
        meta = _restore(ckpt_path, model, optimizer, schedule)
        if on_resume is not None:
            on_resume(meta)
        done = int(meta["epoch"])
        metrics = list(meta.get("metrics", []))[:done]
        log(f"resumed from {ckpt_path} after epoch {done}")
        if done >= epochs:
            log(f"nothing to do: the checkpoint already holds {done} epoch(s) (--epochs {epochs})")
    last_complete = ckpt_path if resume else None
    saved_epoch = done
    if world.size > 1:  # the ranks must draw one global batch order and step together
        world.check_same({
            "number of epochs": (epochs, done),
            "number of training batches per epoch": len(train_loader),
            "training batch size": getattr(train_loader, "batch_size", None),
            "shuffling seed": getattr(train_loader, "seed", None),
            "training images (CRC-32)": _crc(getattr(train_loader, "x", None)),
            "training labels (CRC-32)": _crc(getattr(train_loader, "y", None)),
            "optimizer and its settings": (type(optimizer).__name__, sorted(
                (k, v) for k, v in vars(optimizer).items() if isinstance(v, (bool, int, float, str, tuple)))),
        })  # fmt: skip
    world.broadcast(model)  # 1. every rank starts from rank 0's parameters and buffers
    exchange = GradientExchange(world).attach(model)
    if world.size > 1:
        log(f"{world.size} ranks: {exchange.describe()}")

    epoch = done
    try:
        for epoch in range(done + 1, epochs + 1):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            model.train()
            lr = float(optimizer.lr)
            train_loss, train_acc, seen, seconds = _train_epoch(
                model,
                optimizer,
                train_loader,
                epoch,
                epochs,
                progress and world.is_root,
                on_batch,
                world,
                exchange,
                log if epoch == done + 1 else None,  # the run's first batch says what the JIT took
            )
            if schedule is not None:
                schedule.step()
            if not world.is_root:  # rank 0 evaluates, writes and prints; the others go on
                continue
            test_loss, test_acc = evaluate(model, test_loader)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "lr": lr,
                "seconds": seconds,
                "images_per_second": seen / seconds if seconds > 0 else float("inf"),
                "world_size": world.size,
            }
            metrics.append(row)
            meta = {
                "epoch": epoch,
                "epochs": epochs,
                "config": config,
                "random_state": nrandom.get_state(),
                "metrics": metrics,
                "numbacnn_version": _version(),
                "world_size": world.size,
            }
            ckpt.save(ckpt_path, model.state_dict(), _optim_state(optimizer, schedule), meta)
            last_complete, saved_epoch = ckpt_path, epoch
            write_metrics(metrics_path, metrics)
            plot_curves(curves_path, metrics, title=config.get("model"))
            log(
                f"epoch {epoch}/{epochs}: train loss {train_loss:.4f} "
                f"acc {100 * train_acc:.2f}% | test loss {test_loss:.4f} "
                f"acc {100 * test_acc:.2f}% | lr {lr:.4g} | {seconds:.1f} s, "
                f"{row['images_per_second']:.0f} img/s"
            )
    except TrainingDiverged as e:
        e.checkpoint = last_complete if last_complete and os.path.exists(last_complete) else None
        raise
    except BaseException as e:
        if not caused_by_ctrl_c(e):  # a Ctrl-C (or SIGTERM) may come wrapped: see caused_by_ctrl_c
            raise
        completed = saved_epoch
        if completed == epoch and last_complete is not None:  # between its checkpoint and its log line
            log(f"\ninterrupted after epoch {epoch} was saved to {last_complete} — continue with --resume")
        elif last_complete is not None and os.path.exists(last_complete):
            log(
                f"\ninterrupted during epoch {epoch}; the last complete checkpoint "
                f"(epoch {completed}) is {last_complete} — continue with --resume"
            )
        else:
            last_complete = None
            log(f"\ninterrupted during epoch {epoch}; no epoch of this run completed, so it wrote none")
        raise TrainingInterrupted(last_complete, completed) from None
    finally:
        exchange.detach()
    return world.bcast_object(metrics)  # every rank returns once rank 0 has written


def _crc(a):
    """CRC-32 of an array's bytes (None for None): a cheap fingerprint to compare ranks' data."""
    return None if a is None else zlib.crc32(np.ascontiguousarray(a).data)


def _version():
    from . import __version__

    return __version__
