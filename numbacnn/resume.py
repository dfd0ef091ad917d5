"""Resuming a training run honestly: read its settings back, and say what changes.

``resume_config(out, **overrides)`` is the TrainConfig stored in OUT/checkpoint.npz with the
overrides (the options typed on the command line) on top. When the run resumes,
``announce_and_apply(meta, config, optimizer, schedule, log)`` compares the new config with
the stored one and, in one line, names every setting that differs: the new value is used
(the optimizer's lr, momentum, weight_decay, nesterov, betas and eps are set again after
the checkpoint restored the old ones; the loaders, the augmentation and the schedule are
built from the new config). A different model, dataset or optimizer is refused
(``check_resumable``): the checkpoint's weights and optimizer state belong to them.

When is a resumed run the same, bit for bit, as one trained straight? When no setting
changed, ``--epochs`` included: the checkpoint holds the weights, the momentum buffers, the
schedule's epoch and the random state, and shuffling and augmentation are pure functions of
(seed, epoch). ``--epochs`` is also the length of the cosine schedule (and of the step
schedule without ``--step-size``): resuming a 2-epoch cosine run to 3 epochs follows a new
3-epoch curve from epoch 3 on, which is not the learning rate a straight 3-epoch run used,
and the announcement says so. With ``--schedule none``, or ``step`` with an explicit
``--step-size``, resuming to more epochs is bit-identical to the straight run.
"""

import dataclasses
import os
from collections.abc import Mapping

from .checkpoint import CheckpointError
from .checkpoint import load as load_checkpoint
from .config import ConfigError, TrainConfig
from .train import CHECKPOINT_NAME, check_training_meta

__all__ = ["resume_config", "check_resumable", "check_same_data", "announce_and_apply", "OPTIMIZER_SETTINGS"]

# Settings the checkpoint's optimizer state also holds: on resume, the config's values win.
OPTIMIZER_SETTINGS = ("lr", "momentum", "weight_decay", "nesterov", "betas", "eps")
# Where the data is, not what the run computes: not worth a line when they change.
_LOCATION = ("out", "cache_dir", "download")


def stored_config(ckpt_path):
    """``meta["config"]`` of the checkpoint at ``ckpt_path`` (a dict, maybe empty).
    ConfigError if there is no checkpoint; CheckpointError if it cannot be read."""
    if not os.path.exists(ckpt_path):
        raise ConfigError(f"cannot resume: no checkpoint at {ckpt_path} (run without --resume to start)")
    meta = load_checkpoint(ckpt_path).meta
    stored = meta.get("config") if isinstance(meta, Mapping) else None
    if not isinstance(stored or {}, Mapping):
        raise CheckpointError(f"{ckpt_path}: meta['config'] is not a dict")
    return stored or {}


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
    stored = stored_config(ckpt_path)
    _check_same_run(ckpt_path, {"optimizer": "sgd", **stored}, overrides)
    try:
        stored = TrainConfig.from_dict({**stored, "out": out})
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{ckpt_path}: the stored config is not valid: {e}") from None
    return dataclasses.replace(stored, **{**overrides, "out": out})


def check_resumable(ckpt_path, config):
    """Before any work: ConfigError unless the checkpoint was trained with config's model,
    dataset and optimizer (a checkpoint from before the optimizer was a setting is SGD's);
    CheckpointError unless it is a readable training checkpoint."""
    stored = {"optimizer": "sgd", **stored_config(ckpt_path)}
    check_training_meta(ckpt_path, load_checkpoint(ckpt_path).meta)
    _check_same_run(ckpt_path, stored, {key: getattr(config, key) for key in _SAME_RUN + _SAME_DATA})


# What a checkpoint's weights and optimizer state belong to: a resumed run keeps them. For
# folder and npz data, also what decides its split and preprocessing (MNIST's are fixed).
_SAME_RUN = ("model", "dataset", "optimizer")
_SAME_DATA = ("test_split", "resize", "image_size")


def _check_same_run(ckpt_path, stored, settings):
    """ConfigError if ``settings`` give a model or optimizer other than ``stored``'s, another
    kind of dataset (the same data at a new path is allowed: its classes, channels and image
    size are checked when it is opened, ``check_same_data``), or, for folder and npz data,
    another test_split, resize or image_size."""
    own_data = stored.get("dataset", "mnist") != "mnist"
    for key in _SAME_RUN + (_SAME_DATA if own_data else ()):
        if key not in stored or key not in settings:
            continue
        old, new = stored[key], settings[key]
        if key == "dataset" and isinstance(new, str) and isinstance(old, str):
            old, new = old.partition(":")[0], new.partition(":")[0]  # mnist, folder, npz
        if old != new:
            why = " (its test split and preprocessing belong to the checkpoint)" if key in _SAME_DATA else ""
            raise ConfigError(f"cannot resume: {ckpt_path} was trained with {key} {old!r}, not {new!r}{why}")


def check_same_data(ckpt_path, stored, source, size):
    """ConfigError unless the dataset a run resumes on still has the checkpoint's classes
    (names and order: the labels), channels and image size (``size``: what the images are
    resized to, None for their own): renamed, added or recoloured data would train the
    checkpoint's weights on other labels or shapes."""
    pre = stored.get("preprocess") or {}
    facts = [("classes", stored.get("classes"), source.classes),
             ("channels", pre.get("channels"), source.channels),
             ("image size", pre.get("size"), list(size or source.size or []))]  # fmt: skip
    for what, old, new in facts:
        if old is not None and old != new:
            raise ConfigError(
                f"cannot resume: {stored.get('dataset')} now has {what} {new}, but {ckpt_path} was trained "
                f"with {old}"
            )


def _changes(stored, config):
    """[(field, old, new)] of the fields the stored config has and config changes; the
    optimizer's settings compared as resolved (an unset lr is the optimizer's default)."""
    try:
        old = TrainConfig.from_dict({**stored, "out": config.out})
    except (TypeError, ValueError):
        return []  # an unreadable stored config: nothing to compare with (fit restores state)

    def value(c, name):
        return c.optimizer_settings.get(name) if name in OPTIMIZER_SETTINGS else getattr(c, name)

    return [
        (f.name, value(old, f.name), value(config, f.name))
        for f in dataclasses.fields(TrainConfig)
        if f.name in stored and f.name not in _LOCATION and value(old, f.name) != value(config, f.name)
    ]


def announce_and_apply(meta, config, optimizer, schedule, log, world_size=1, batch_norm=False):
    """After fit restored the checkpoint (``meta`` its meta): set the optimizer settings
    config changes, and log one line naming every changed setting (and one for a schedule
    whose kind or length differs from the checkpoint's, and one for another number of MPI
    ranks, ``world_size``, which changes what each batch norm of a model with ``batch_norm``
    sees unless --sync-bn). Nothing is logged when nothing changed: then the run continues
    exactly as it would have."""
    before = meta.get("world_size", 1)
    if before != world_size:
        stored_sync = bool((meta.get("config") or {}).get("sync_bn", False))

        def seen(ranks, sync):  # the part of a global batch each batch norm normalises
            return "all" if ranks == 1 or sync else f"1/{ranks}"

        then, now = seen(before, stored_sync), seen(world_size, config.sync_bn)
        log(
            f"resuming on {world_size} rank{'s' if world_size > 1 else ''} a run written by {before}: the "
            "global batches are the same"
            + (
                f", but each batch norm now normalises {now} of a batch, not {then}"
                if batch_norm and now != then
                else ""
            )
        )
    stored = meta.get("config") or {}
    changes = _changes(stored, config) if isinstance(stored, Mapping) else []
    for name, _, new in changes:
        if name == "lr":  # the schedule's base rate; the current rate follows from it
            schedule.base_lr = new
            optimizer.lr = schedule.lr
        elif name in OPTIMIZER_SETTINGS:
            setattr(optimizer, name, new)
    if changes:
        log("resuming with changed settings: " + ", ".join(f"{n} {o!r} -> {v!r}" for n, o, v in changes))
    name, length = schedule.restored or (None, None)
    if name is not None and (name, length) != (schedule.name, schedule.length):
        log(
            f"the learning-rate schedule changes from {name} ({length} epochs per cycle) to "
            f"{schedule.name} ({schedule.length}): from epoch {schedule.epoch + 1} on the rates "
            "differ from those of a run trained straight with either setting"
        )
