"""One recipe for a training run: ``TrainConfig`` holds every setting, ``run`` wires them.

    from numbacnn.recipe import TrainConfig, run
    metrics = run(TrainConfig(model="lenet5", epochs=3, lr=0.05, out="runs/lenet5"))

does what ``numbacnn train --model lenet5 --epochs 3 --lr 0.05 --out runs/lenet5`` does:
seed ``numbacnn.random``, build the model, zero-pad the dataset's images up to the side
the model takes (the registry in ``numbacnn.models``), load the data, build the
augmentation, the loaders, SGD and the learning-rate schedule, and call
``numbacnn.train.fit``, which writes OUT/checkpoint.npz, OUT/metrics.json and
OUT/curves.png after every epoch.

Every checkpoint stores ``config.to_dict()`` in ``meta["config"]`` (plus the derived
``pad`` and ``input_shape``); ``resume_config(out, **overrides)`` reads it back, so
``run(resume_config("runs/lenet5", epochs=5), resume=True)`` continues that run with its
own settings up to 5 epochs.

Mistakes a user can make (an unknown model, a negative lr, resuming a run that does not
exist, a model that cannot take the dataset's images) raise ``ConfigError`` (a
ValueError) with a one-line message naming the field; the CLI prints it as
``numbacnn: error: ...``. A field of the wrong type raises TypeError.
"""

import dataclasses
import math
import numbers
import os
import sys
from collections.abc import Mapping

from . import random as nrandom
from ._checks import is_int
from ._io import directory_lock
from .checkpoint import CheckpointError
from .checkpoint import load as load_checkpoint
from .data import DataLoader, augment, mnist
from .models import MODELS, build_model, model_info
from .optim import SGD, build_schedule
from .train import CHECKPOINT_NAME, fit

__all__ = [
    "TrainConfig",
    "ConfigError",
    "run",
    "resume_config",
    "input_pad",
    "load_dataset",
    "make_transform",
    "check_directory",
    "AUGMENTS",
    "DATASETS",
    "DATASET_SHAPES",
    "SCHEDULES",
    "MAX_INPUT_PAD",
]

AUGMENTS = ("none", "crop", "flip", "translate")
SCHEDULES = ("none", "step", "cosine")
# Per-image shape (C, H, W) of each dataset as it is stored (before padding).
DATASET_SHAPES = {"mnist": (1, 28, 28)}
DATASETS = tuple(DATASET_SHAPES)
# Images smaller than a model's min_side are zero-padded by at most this many pixels per
# border (MNIST 28 -> 32, LeNet-5's input); a model that needs more cannot take them.
MAX_INPUT_PAD = 2


# Settings the checkpoint's optimizer state also holds: on resume, the config's win.
_OPTIMIZER_SETTINGS = ("lr", "momentum", "weight_decay", "nesterov")


class ConfigError(ValueError):
    """A mistake in a training run's settings or actions: one line, no traceback needed."""


# --------------------------------------------------------------------------- field checks
def _integer(name, value, minimum, optional=False):
    if value is None and optional:
        return None
    if not is_int(value):
        kind = "an integer or None" if optional else "an integer"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _choice(name, value, choices, what):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")
    if value not in choices:
        raise ConfigError(f"{name}: unknown {what} {value!r} (choose from: {', '.join(choices)})")
    return value


def _path(name, value):
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path or None, got {value!r}")
    value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty str path or None, got {value!r}")
    return value


def check_directory(name, path):
    """ConfigError unless ``path`` is a directory or one that can be created: not an
    existing file, and its nearest existing ancestor a writable directory. Checked before
    any work starts, so a bad --out never fails after the data has loaded."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{name} {path!r} is an existing file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{name} {path!r} is not a writable directory")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{name} {path!r} cannot be created: {parent!r} is not a writable directory")


def _augment_names(value):
    """("crop", "flip") from "crop,flip", ["crop", "flip"], ["none", "crop"], ...;
    ("none",) when nothing is left."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"augment must be a string or a list of strings, got {value!r}")
    names = [n.strip() for v in value for n in v.split(",") if n.strip()]
    for n in names:
        _choice("augment", n, AUGMENTS, "augmentation")
    return tuple(n for n in names if n != "none") or ("none",)


# --------------------------------------------------------------------------- the config
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Field names are the ``numbacnn train`` options
    (``--batch-size`` -> ``batch_size``) and the defaults are the CLI's defaults: the CLI
    takes them from here.

    model: a name in ``numbacnn.models.MODELS``; dataset: one of DATASETS ("mnist").
    epochs: total epochs (a resumed run continues up to it). batch_size, eval_batch_size:
    images per training / evaluation batch. lr: initial learning rate; momentum,
    weight_decay (L2), nesterov: ``numbacnn.optim.SGD``. schedule: "cosine" (lr -> 0 over
    ``epochs``), "step" (times ``gamma`` every ``step_size`` epochs, default epochs // 3)
    or "none" (``numbacnn.optim.build_schedule``). augment: names from AUGMENTS, stored
    as a tuple (a list or a comma-separated string is accepted). seed: weight init,
    shuffling and augmentation. out: output directory (None: runs/MODEL, see
    ``out_dir``). limit_train, limit_test: use only the first N images (None: all).
    cache_dir, download: where MNIST is cached, and whether to download it if missing.
    drop_last: leave out the last, partial training batch of every epoch. Without it, a last
    batch of ONE image is still left out when the model has batch norm (which cannot
    normalise a single value per channel in training mode), with a notice at the start.

    Frozen: change a field with ``dataclasses.replace`` (which checks again). Raises
    ConfigError (a ValueError) for a bad value, TypeError for a bad type; both name the
    field.
    """

    model: str = "lenet5"
    dataset: str = "mnist"
    epochs: int = 3
    batch_size: int = 64
    eval_batch_size: int = 1000
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "cosine"
    step_size: int | None = None
    gamma: float = 0.1
    augment: tuple = ("none",)
    seed: int = 0
    out: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    cache_dir: str | None = None
    download: bool = False
    drop_last: bool = False

    def __post_init__(self):
        checked = {
            "model": _choice("model", self.model, sorted(MODELS), "model"),
            "dataset": _choice("dataset", self.dataset, DATASETS, "dataset"),
            "epochs": _integer("epochs", self.epochs, 1),
            "batch_size": _integer("batch_size", self.batch_size, 1),
            "eval_batch_size": _integer("eval_batch_size", self.eval_batch_size, 1),
            "lr": _number("lr", self.lr),
            "momentum": _number("momentum", self.momentum),
            "weight_decay": _number("weight_decay", self.weight_decay),
            "nesterov": _flag("nesterov", self.nesterov),
            "schedule": _choice("schedule", self.schedule, SCHEDULES, "schedule"),
            "step_size": _integer("step_size", self.step_size, 1, optional=True),
            "gamma": _number("gamma", self.gamma),
            "augment": _augment_names(self.augment),
            "seed": _integer("seed", self.seed, 0),
            "out": _path("out", self.out),
            "limit_train": _integer("limit_train", self.limit_train, 1, optional=True),
            "limit_test": _integer("limit_test", self.limit_test, 1, optional=True),
            "cache_dir": _path("cache_dir", self.cache_dir),
            "download": _flag("download", self.download),
            "drop_last": _flag("drop_last", self.drop_last),
        }
        if checked["nesterov"] and checked["momentum"] == 0.0:
            raise ConfigError("nesterov=True needs momentum > 0, got momentum=0.0")
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # normalised (int, float, tuple, str)

    @property
    def out_dir(self):
        """``out``, or runs/MODEL when ``out`` is None."""
        return self.out if self.out is not None else os.path.join("runs", self.model)

    def to_dict(self):
        """The fields as a JSON-able dict (``augment`` as a list)."""
        d = dataclasses.asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, d):
        """A TrainConfig from a dict such as ``to_dict()`` or an older checkpoint's
        ``meta["config"]``: keys that are not fields (``pad``, ``input_shape``, ``resume``,
        ``progress``, ...) are ignored, missing fields take the defaults."""
        if not isinstance(d, Mapping):
            raise TypeError(f"TrainConfig.from_dict: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- data
def _dataset_shape(dataset):
    if dataset not in DATASET_SHAPES:
        raise ConfigError(f"unknown dataset {dataset!r} (choose from: {', '.join(DATASETS)})")
    return DATASET_SHAPES[dataset]


def input_pad(model_name, dataset="mnist"):
    """Zero padding (pixels per border) of ``dataset``'s images for ``model_name``: enough
    to reach the model's ``min_side`` (``numbacnn.models.model_info``) when that takes at
    most MAX_INPUT_PAD pixels, else 0. MNIST: 2 (28 -> 32) for lenet5, vgg_small,
    resnet_cifar and resnet18/34/50; 0 for alexnet and vgg11..19, which are built for
    224 x 224 and cannot take MNIST. Raises ValueError for an unknown model or dataset."""
    side = _dataset_shape(dataset)[-1]
    pad = (model_info(model_name).min_side - side + 1) // 2
    return pad if 0 < pad <= MAX_INPUT_PAD else 0


def load_dataset(dataset="mnist", pad=2, cache_dir=None, download=False, limit_train=None, limit_test=None):
    """(x_train, y_train, x_test, y_test): float32 NCHW normalised images zero-padded by
    ``pad`` pixels per border (``numbacnn.data.mnist.preprocess``), int64 labels; the
    first ``limit_train`` / ``limit_test`` samples when given. Raises ConfigError for an
    unknown dataset, MNISTNotFoundError / MNISTIntegrityError (``numbacnn.data.mnist``)
    when the data cannot be found or verified."""
    _dataset_shape(dataset)
    d = mnist.load_mnist(cache_dir=cache_dir, download=download)
    xtr, ytr, xte, yte = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    if limit_train:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    if limit_test:
        xte, yte = xte[:limit_test], yte[:limit_test]
    return mnist.preprocess(xtr, pad=pad), ytr, mnist.preprocess(xte, pad=pad), yte


def make_transform(names, fill=None):
    """The batch transform for augmentation ``names`` (None for no augmentation):
    crop = random crop with 2 px padding, translate = random shift of up to 2 px (both
    filled with ``fill``, default MNIST's normalised background), flip = random horizontal
    flip. Raises ConfigError for an unknown name."""
    if fill is None:
        fill = mnist.BACKGROUND
    steps = []
    for name in names or ():
        if name == "none":
            continue
        if name == "crop":
            steps.append(augment.RandomCrop(2, fill=fill))
        elif name == "flip":
            steps.append(augment.RandomHFlip())
        elif name == "translate":
            steps.append(augment.RandomTranslate(2, fill=fill))
        else:
            raise ConfigError(f"unknown augmentation {name!r} (choose from: {', '.join(AUGMENTS)})")
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else augment.Compose(steps)


# --------------------------------------------------------------------------- resume
def _has_batch_norm(model):
    """Whether any layer of ``model`` is a BatchNorm1d/2d."""
    from .layers import BatchNorm1d, BatchNorm2d

    return any(isinstance(m, (BatchNorm1d, BatchNorm2d)) for _, m in model.named_modules())


def _stored_config(ckpt_path):
    """``meta["config"]`` of the checkpoint at ``ckpt_path`` (a dict, maybe empty)."""
    if not os.path.exists(ckpt_path):
        raise ConfigError(f"cannot resume: no checkpoint at {ckpt_path} (run without --resume to start)")
    stored = load_checkpoint(ckpt_path).meta.get("config") or {}
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"{ckpt_path}: meta['config'] is not a dict")
    return stored


def resume_config(out, /, **overrides):
    """The TrainConfig stored in OUT/checkpoint.npz with ``overrides`` (field=value) on
    top and ``out=OUT`` (the run lives where its checkpoint is now, whatever ``out`` it
    was started with): the settings ``numbacnn train --out OUT --resume`` continues with.
    Fields an older checkpoint lacks take the defaults; stored keys that are not fields
    are ignored.

    Raises ConfigError (no checkpoint in OUT, a bad override), CheckpointError (the
    checkpoint or its stored config cannot be read), TypeError (an override of the wrong
    type or an unknown field).
    """
    out = os.fspath(out)
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)
    stored = _stored_config(ckpt_path)
    try:
        stored = TrainConfig.from_dict({**stored, "out": out})
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{ckpt_path}: the stored config is not valid: {e}") from None
    return dataclasses.replace(stored, **{**overrides, "out": out})


# --------------------------------------------------------------------------- the run
def _check_resumable(ckpt_path, config):
    stored = _stored_config(ckpt_path)
    for key in ("model", "dataset"):
        if key in stored and stored[key] != getattr(config, key):
            raise ConfigError(
                f"cannot resume: {ckpt_path} was trained with {key} "
                f"{stored[key]!r}, not {getattr(config, key)!r}"
            )


def run(config, *, resume=False, overwrite=False, progress=True, log=None, on_batch=None):
    """Train as ``config`` (a TrainConfig) says; returns ``numbacnn.train.fit``'s metrics
    list (one dict per epoch, the resumed epochs included).

    resume: continue the run in ``config.out_dir`` up to ``config.epochs`` epochs; the
    checkpoint's model and dataset must be ``config``'s, every other setting comes from
    ``config`` (``resume_config`` gives the stored ones). The checkpoint restores the
    training state (weights, momentum buffers, schedule epoch, random state); an optimizer
    setting (lr, momentum, weight_decay, nesterov) that differs from the stored config's is
    then applied and logged, so the stored config always says what the run used. overwrite: start over even if
    OUT/checkpoint.npz exists (without resume or overwrite that is an error).
    progress: a progress bar per epoch. log: a print-like function for the status lines
    (default: print to stderr). on_batch(epoch, batch_index, loss): called after every
    optimizer step (``fit``).

    Raises ConfigError (a run action or a model/dataset pairing that cannot work),
    CheckpointError (a checkpoint that cannot be read or resumed), MNISTNotFoundError /
    MNISTIntegrityError (no verified data), ``numbacnn.train.TrainingInterrupted`` on
    Ctrl-C (the last complete checkpoint stays).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run: config must be a TrainConfig, got {type(config).__name__}")
    log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
    out = config.out_dir
    check_directory("out", out)
    if config.cache_dir is not None:
        check_directory("cache_dir", config.cache_dir)
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)
    if resume:
        _check_resumable(ckpt_path, config)
    elif os.path.exists(ckpt_path) and not overwrite:
        raise ConfigError(
            f"{ckpt_path} already exists: pass --resume to continue that run, "
            "--overwrite to start over, or choose another --out"
        )

    os.makedirs(out, exist_ok=True)
    with directory_lock(out):  # before the data loads: a second run on OUT refuses at once
        return _train(config, out, resume, progress, log, on_batch)


def _train(config, out, resume, progress, log, on_batch):
    """run's work, with OUT locked: model, data, optimizer, schedule, then fit."""
    nrandom.seed(config.seed)
    channels, height, _ = _dataset_shape(config.dataset)
    model = build_model(config.model, num_classes=10, in_channels=channels)  # MNIST: 10 digits
    pad = input_pad(config.model, config.dataset)
    side = height + 2 * pad
    try:
        model.output_shape((1, channels, side, side))
    except ValueError as e:
        fitting = [m for m in sorted(MODELS) if model_info(m).min_side <= height + 2 * MAX_INPUT_PAD]
        raise ConfigError(
            f"{config.model} cannot take {config.dataset}'s {side}x{side} images "
            f"({e}); use a model for small images: {', '.join(fitting)}"
        ) from None

    xtr, ytr, xte, yte = load_dataset(
        config.dataset, pad, config.cache_dir, config.download, config.limit_train, config.limit_test
    )
    drop_last = config.drop_last
    if not drop_last and len(xtr) % config.batch_size == 1 and _has_batch_norm(model):
        drop_last = True
        log(
            f"note: the last batch of each epoch would hold 1 image ({len(xtr)} = "
            f"{len(xtr) // config.batch_size} x {config.batch_size} + 1), which batch norm cannot "
            "normalise in training mode: it is left out (--drop-last leaves out any partial batch)"
        )
    train_loader = DataLoader(xtr, ytr, config.batch_size, shuffle=True, seed=config.seed,
                              transform=make_transform(config.augment), drop_last=drop_last)  # fmt: skip
    test_loader = DataLoader(xte, yte, config.eval_batch_size)
    optimizer = SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    schedule = build_schedule(
        config.schedule, optimizer, config.epochs, step_size=config.step_size, gamma=config.gamma
    )

    def apply_changed_settings(meta):
        """After the restore: the optimizer settings config changes against the stored run."""
        stored_config = meta.get("config") or {}
        changed = []
        for name in _OPTIMIZER_SETTINGS:
            old, new = stored_config.get(name), getattr(config, name)
            if name not in stored_config or old == new:
                continue  # unchanged (or unknown to an old checkpoint: keep its state)
            changed.append(f"{name} {old!r} -> {new!r}")
            if name == "lr":  # the schedule's base rate; the current rate follows from it
                schedule.base_lr = new
                optimizer.lr = schedule.lr
            else:
                setattr(optimizer, name, new)
        if changed:
            log("resuming with changed settings: " + ", ".join(changed))

    # pad and input_shape are derived, stored for `numbacnn evaluate`; from_dict ignores them
    stored = dict(config.to_dict(), pad=pad, input_shape=list(xtr.shape[1:]))
    log(
        f"training {config.model} on {config.dataset}: {len(xtr)} train / {len(xte)} test "
        f"images of shape {tuple(xtr.shape[1:])}, {config.epochs} epochs, batch "
        f"{config.batch_size}, out {out}"
    )
    return fit(
        model,
        optimizer,
        train_loader,
        test_loader,
        config.epochs,
        out,
        schedule=schedule,
        resume=resume,
        config=stored,
        progress=progress,
        on_batch=on_batch,
        log=log,
        on_resume=apply_changed_settings,
    )
