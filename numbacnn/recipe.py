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
own settings up to 5 epochs, and says in one line which settings changed (numbacnn.resume
explains when a resumed run is bit-identical to a straight one).

Mistakes a user can make (an unknown model, a negative lr, resuming a run that does not
exist, a model that cannot take the dataset's images) raise ``ConfigError`` (a
ValueError) with a one-line message naming the field; the CLI prints it as
``numbacnn: error: ...``. A field of the wrong type raises TypeError.
"""

import math
import os
import sys
from typing import NamedTuple

from . import config as config_module
from . import device, distributed
from . import random as nrandom
from .config import (
    AUGMENTS,
    DATASET_SHAPES,
    DATASETS,
    MAX_INPUT_PAD,
    ConfigError,
    TrainConfig,
    check_directory,
)
from .config import SCHEDULES as SCHEDULES  # re-exported (a public name of this module)
from .data import DataLoader, augment, mnist
from .data.images import DataError
from .data.sources import Source, channel_stats, normalize, open_source
from .layers import _BatchNorm
from .models import MODELS, build_model, model_info
from .optim import build_optimizer, build_schedule
from .resume import announce_and_apply, check_resumable, check_same_data, resume_config, stored_config
from .train import CHECKPOINT_NAME, fit

# TrainConfig, ConfigError and the constants live in numbacnn.config, resume_config in
# numbacnn.resume: re-exported here, the one place a training run is assembled.
__all__ = ["run", "resume_config", "input_pad", "load_dataset", "load_inputs", "open_dataset",
           "make_transform", *config_module.__all__]  # fmt: skip


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
    return _pad_to(model_name, _dataset_shape(dataset)[-1])


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
def run(config, *, resume=False, overwrite=False, progress=True, log=None, on_batch=None):
    """Train as ``config`` (a TrainConfig) says; returns ``numbacnn.train.fit``'s metrics
    list (one dict per epoch, the resumed epochs included).

    resume: continue the run in ``config.out_dir`` up to ``config.epochs`` epochs; the
    checkpoint's model and dataset must be ``config``'s, every other setting comes from
    ``config`` (``resume_config`` gives the stored ones). The checkpoint restores the
    training state (weights, the optimizer's buffers, schedule epoch, random state); the
    optimizer must be the stored one (ConfigError), and a setting of it (lr, momentum,
    weight_decay, nesterov, betas, eps) that differs from the stored config's is
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
    world = distributed.world()  # under mpiexec: this rank of the data-parallel run
    log = log or (lambda *a: print(*a, file=sys.stderr, flush=True))
    if not world.is_root:
        log = lambda *a: None  # noqa: E731  (rank 0 speaks for the run)
    out = config.out_dir
    check_directory("out", out)
    if config.cache_dir is not None:
        check_directory("cache_dir", config.cache_dir)
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)
    stored = None
    if resume:
        check_resumable(ckpt_path, config)
        stored = stored_config(ckpt_path)
    elif os.path.exists(ckpt_path) and not overwrite:
        raise ConfigError(
            f"{ckpt_path} already exists: pass --resume to continue that run, "
            "--overwrite to start over, or choose another --out"
        )

    device.require("train", config.device)  # before any work: one sentence when CUDA cannot run
    if config.device != "cpu" and world.size > 1:
        raise ConfigError(
            f"--device {config.device} trains on one process only so far, not {world.size} ranks"
        )
    nrandom.seed(config.seed)  # the model's initial weights
    plan = _plan(config, log, world)  # everything knowable before any work
    if stored is not None:
        check_same_data(ckpt_path, stored, plan.source, plan.size)
    stored_preprocess = (stored or {}).get("preprocess")
    if config.sync_bn and world.size > 1:
        distributed.convert_sync_batchnorm(plan.model, world)
    if config.sync_bn and not any(isinstance(m, _BatchNorm) for m in plan.model.modules()):
        log(f"note: --sync-bn does nothing here: {config.model} has no batch norm")
    elif config.sync_bn and world.size == 1:
        log("note: --sync-bn does nothing on one process (it is for mpiexec -n K, K > 1)")
    try:
        world.on_root(lambda: os.makedirs(out, exist_ok=True))  # a refusal is every rank's
    except OSError as e:  # a path os.access misjudged (/proc, a read-only mount)
        raise ConfigError(f"out {out!r} cannot be created: {e.strerror}") from None
    with world.lock(out):  # before the data loads: a second run on OUT refuses at once
        return _train(config, out, resume, progress, log, on_batch, plan, stored_preprocess, world)


class Plan(NamedTuple):
    """What ``_plan`` settled before any pixel is read: the model, the data source, the
    size images are resized to (None: their own), the zero padding, and drop_last."""

    model: object
    source: Source
    size: tuple | None
    pad: int
    drop_last: bool


def _pad_to(model_name, side):
    """input_pad for images of ``side`` pixels (see ``input_pad``)."""
    pad = (model_info(model_name).min_side - side + 1) // 2
    return pad if 0 < pad <= MAX_INPUT_PAD else 0


def open_dataset(spec, test_split=0.1, cache_dir=None, download=False, **kwargs):
    """The ``numbacnn.data.sources.Source`` of dataset ``spec`` ("mnist", "folder:PATH",
    "npz:FILE"; ``kwargs``: open_source's channels and training): ConfigError when its
    folder or file does not exist, DataError naming the file for bad data."""
    kind, _, path = spec.partition(":")
    if kind == "folder" and not os.path.isdir(path):
        raise ConfigError(f"dataset: {path!r} is not a folder (folder:PATH wants PATH/<class>/<image>.png)")
    if kind == "npz" and not os.path.isfile(path):
        raise ConfigError(f"dataset: {path!r} is not a file (npz:FILE wants an .npz with arrays x and y)")
    return open_source(spec, test_split, cache_dir, download, **kwargs)


def _plan(config, log, world=None):
    """Open the dataset, build the model for its classes and channels, and check, before any
    pixel is loaded or file written, that the run can work: the model takes the images
    (resized or zero-padded); a batch norm that sees one value per channel for a single
    image cannot train on batches of one (ConfigError for --batch-size 1; a last batch of
    one is left out, with a notice); an epoch has at least one batch; there are test
    images. Returns a Plan."""
    source = open_dataset(config.dataset, config.test_split, config.cache_dir, config.download)
    if source.kind == "folder" and config.resize:
        side = config.image_size or model_info(config.model).min_side
        size, pad = (side, side), 0
    else:
        if source.mismatch:
            raise DataError(source.mismatch)
        size, pad = None, _pad_to(config.model, min(source.size))
    height, width = size or source.size
    model = build_model(config.model, num_classes=source.num_classes, in_channels=source.channels)
    shape = (source.channels, height + 2 * pad, width + 2 * pad)
    try:
        rows = model.summary(shape, print_table=False).rows  # per layer, N = 1
    except ValueError as e:
        need = model_info(config.model).min_side
        if size is not None:  # resized folder images: a bigger size is the fix
            hint = f"{config.model} is meant for {need}x{need} and up: pass --image-size {need} or more"
        else:
            reach = min(height, width) + 2 * MAX_INPUT_PAD
            fitting = [m for m in sorted(MODELS) if model_info(m).min_side <= reach]
            hint = f"models meant for images this small: {', '.join(fitting)}" if fitting else (
                f"{config.model} is meant for {need}x{need} and up"
                + (" (leave --resize on to resize folder images)" if source.kind == "folder" else "")
            )  # fmt: skip
        raise ConfigError(
            f"{config.model} cannot take {config.dataset}'s {shape[1]}x{shape[2]} images ({e}); {hint}"
        ) from None
    if source.n_test == 0:
        raise ConfigError(f"{config.dataset} has no test images: a class needs 2 or more images to give one")
    single = [r for r in rows if r["layer"].startswith("BatchNorm") and math.prod(r["output_shape"][2:]) == 1]
    ranks = 1 if world is None or config.sync_bn else world.size  # images a batch norm sees: a share
    if single and 1 in distributed.shard_sizes(config.batch_size, ranks):
        raise ConfigError(
            f"batch_size {config.batch_size} cannot train {config.model}"
            + (f" on {ranks} ranks" if ranks > 1 else "")
            + f": its batch norm {single[0]['name']!r} sees one value per channel for one image; use a "
            f"batch size of {2 * ranks} or more" + (" (or --sync-bn)" if ranks > 1 else "")
        )
    n_train = min(config.limit_train or source.n_train, source.n_train)
    drop_last = config.drop_last
    if not drop_last and single and 1 in distributed.shard_sizes(n_train % config.batch_size, ranks):
        drop_last = True
        rest = n_train % config.batch_size
        log(
            f"note: the last batch of each epoch would {'give a rank' if ranks > 1 else 'hold'} 1 image "
            f"({n_train} = {n_train // config.batch_size} x {config.batch_size} + {rest}"
            f"{f', shared by {ranks} ranks' if ranks > 1 else ''}), which {config.model}'s batch "
            f"norm {single[0]['name']!r} cannot normalise in training mode: it is left out "
            "(--drop-last leaves out any partial batch)"
        )
    if (n_train // config.batch_size if drop_last else n_train) == 0:
        raise ConfigError(
            f"an epoch would have no training batch: {n_train} training image(s), batch_size "
            f"{config.batch_size}{' and the last partial batch left out' if drop_last else ''}"
        )
    return Plan(model, source, size, pad, drop_last)


def load_inputs(source, preprocess, limit_train=None, limit_test=None):
    """A source's splits as model inputs, prepared as a checkpoint's ``preprocess`` says
    (``{"size": [H, W], "pad", "mean", "std"}``, stored by ``run``): (x_train, y_train,
    x_test, y_test), float32 normalised images and int64 labels."""
    xtr, ytr, xte, yte = source.load(tuple(preprocess["size"]), limit_train, limit_test)
    pad, mean, std = preprocess["pad"], preprocess["mean"], preprocess["std"]
    return normalize(xtr, pad, mean, std), ytr, normalize(xte, pad, mean, std), yte


def _train(config, out, resume, progress, log, on_batch, plan, stored_preprocess=None, world=None):
    """run's work, with OUT locked: data, loaders, optimizer, schedule, then fit. A resumed
    run normalises with the statistics it was trained with (``stored_preprocess``), even
    when --limit-train now gives it other images."""
    model, source, pad = plan.model, plan.source, plan.pad
    xtr, ytr, xte, yte = source.load(plan.size, config.limit_train, config.limit_test)
    if isinstance(stored_preprocess, dict) and {"mean", "std"} <= set(stored_preprocess):
        mean, std = stored_preprocess["mean"], stored_preprocess["std"]
    elif source.kind == "mnist":
        mean, std = [mnist.MEAN], [mnist.STD]  # MNIST's canonical statistics
    else:
        mean, std = channel_stats(xtr)  # the training split's, as torchvision recipes do
    xtr, xte = normalize(xtr, pad, mean, std), normalize(xte, pad, mean, std)
    fill = tuple(
        float((0.0 - m) / s) for m, s in zip(mean, std, strict=True)
    )  # normalised black, per channel
    fill = fill[0] if len(fill) == 1 else fill
    transform = make_transform(config.augment, fill)
    train_loader = DataLoader(xtr, ytr, config.batch_size, shuffle=True, seed=config.seed,
                              transform=transform, drop_last=plan.drop_last)  # fmt: skip
    test_loader = DataLoader(xte, yte, config.eval_batch_size)
    model.to(config.device)  # before the optimizer, which keeps the (moved) parameters
    optimizer = build_optimizer(config.optimizer, model.parameters(), **config.optimizer_settings)
    schedule = build_schedule(
        config.schedule, optimizer, config.epochs, step_size=config.step_size, gamma=config.gamma
    )

    # derived facts, stored for `numbacnn evaluate`, `export` and `predict` (numbacnn.load):
    # from_dict ignores them. preprocess is how an image becomes this model's input.
    height, width = plan.size or source.size
    preprocess = dict(channels=source.channels, size=[height, width], pad=pad, mean=mean, std=std)
    stored = dict(config.to_dict(), pad=pad, input_shape=list(xtr.shape[1:]), classes=source.classes,
                  preprocess=preprocess)  # fmt: skip
    log(
        f"training {config.model} on {config.dataset}: {len(xtr)} train / {len(xte)} test "
        f"images of shape {tuple(xtr.shape[1:])}, {source.num_classes} classes, {config.epochs} epoch(s), "
        f"batch {config.batch_size}, {config.optimizer} "
        + ", ".join(f"{k} {v}" for k, v in config.optimizer_settings.items())
        + (
            f", {world.size} ranks" + (" with sync-bn" if config.sync_bn else "")
            if world and world.size > 1
            else ""
        )
        + (f", on {config.device}" if config.device != "cpu" else "")
        + f", out {out}"
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
        on_resume=lambda meta: announce_and_apply(
            meta,
            config,
            optimizer,
            schedule,
            log,
            world.size,
            any(isinstance(m, _BatchNorm) for m in model.modules()),
        ),
        world=world,
    )
