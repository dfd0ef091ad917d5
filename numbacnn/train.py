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
optimizer's momentum buffers, the schedule's epoch, the ``numbacnn.random`` generator
state and the metrics so far. Shuffling and augmentation are pure functions of
(seed, epoch), so training 2 epochs and resuming to 3 gives bit-identical weights to
training 3 epochs straight.

Ctrl-C: the loop stops, the last complete checkpoint (atomically written) stays intact,
its location is printed, and ``TrainingInterrupted`` (a KeyboardInterrupt) is raised; the
CLI turns it into exit code 130.
"""

import json
import os
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import functional as F
from . import random as nrandom
from ._io import atomic_write

__all__ = [
    "fit",
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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. ``checkpoint`` is the last complete checkpoint (or None),
    ``epoch`` the number of epochs it holds."""

    def __init__(self, checkpoint, epoch):
        super().__init__(checkpoint, epoch)
        self.checkpoint = checkpoint
        self.epoch = epoch


def evaluate(model, loader):
    """Mean cross-entropy and accuracy (0-1) of ``model`` in eval mode over ``loader``.
    Restores the model's previous mode."""
    was_training = getattr(model, "training", True)
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    try:
        for xb, yb in loader:
            logits = model(xb)
            b = len(yb)
            total_loss += float(F.cross_entropy(logits, yb)) * b
            correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
            n += b
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return total_loss / n, correct / n


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
    except (KeyError, ValueError) as e:
        raise ckpt.CheckpointError(f"{path}: optimizer state does not fit: {e}") from None
    for key in ("epoch", "random_state"):
        if key not in meta:
            raise ckpt.CheckpointError(f"{path}: not a training checkpoint (meta has no {key!r})")
    nrandom.set_state(meta["random_state"])
    return meta


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
    """
    log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
    metrics_path = os.path.join(out_dir, METRICS_NAME)
    curves_path = os.path.join(out_dir, CURVES_NAME)
    config = dict(config or {})

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

    epoch = done
    try:
        for epoch in range(done + 1, epochs + 1):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            model.train()
            lr = float(optimizer.lr)
            total_loss, correct, seen = 0.0, 0, 0
            bar = None
            batches = train_loader
            if progress:
                bar = tqdm(
                    train_loader,
                    total=len(train_loader),
                    desc=f"epoch {epoch}/{epochs}",
                    unit="batch",
                    leave=True,
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
                batches = bar
            t0 = time.perf_counter()
            for i, (xb, yb) in enumerate(batches):
                logits = model(xb)
                loss = float(F.cross_entropy(logits, yb))
                model.zero_grad()
                model.backward(F.cross_entropy_backward(logits, yb))
                optimizer.step()
                b = len(yb)
                total_loss += loss * b
                correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
                seen += b
                if bar is not None and (i % 10 == 0 or i == len(train_loader) - 1):
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(
                        loss=f"{total_loss / seen:.4f}",
                        img_s=f"{seen / max(elapsed, 1e-9):.0f}",
                        refresh=False,
                    )
                if on_batch is not None:
                    on_batch(epoch, i, loss)
            seconds = time.perf_counter() - t0
            if bar is not None:
                bar.close()
            if seen == 0:
                raise ValueError("fit: the training loader yielded no samples")

            test_loss, test_acc = evaluate(model, test_loader)
            if schedule is not None:
                schedule.step()
            row = {
                "epoch": epoch,
                "train_loss": total_loss / seen,
                "train_accuracy": correct / seen,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "lr": lr,
                "seconds": seconds,
                "images_per_second": seen / seconds if seconds > 0 else float("inf"),
            }
            metrics.append(row)
            meta = {
                "epoch": epoch,
                "epochs": epochs,
                "config": config,
                "random_state": nrandom.get_state(),
                "metrics": metrics,
                "numbacnn_version": _version(),
            }
            ckpt.save(ckpt_path, model.state_dict(), _optim_state(optimizer, schedule), meta)
            last_complete, saved_epoch = ckpt_path, epoch
            write_metrics(metrics_path, metrics)
            plot_curves(curves_path, metrics, title=config.get("model"))
            log(
                f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f} "
                f"acc {100 * row['train_accuracy']:.2f}% | test loss {test_loss:.4f} "
                f"acc {100 * test_acc:.2f}% | lr {lr:.4g} | {seconds:.1f} s, "
                f"{row['images_per_second']:.0f} img/s"
            )
    except KeyboardInterrupt:
        completed = saved_epoch
        if last_complete is not None and os.path.exists(last_complete):
            log(
                f"\ninterrupted during epoch {epoch}; the last complete checkpoint "
                f"(epoch {completed}) is {last_complete} — continue with --resume"
            )
        else:
            last_complete = None
            log(f"\ninterrupted during epoch {epoch}; no epoch completed, so no checkpoint was written")
        raise TrainingInterrupted(last_complete, completed) from None
    return metrics


def _version():
    from . import __version__

    return __version__
