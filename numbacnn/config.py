"""The settings of a training run: ``TrainConfig``, one frozen dataclass with the CLI's
defaults, every field checked when it is built (ConfigError, a ValueError, for a bad value;
TypeError for a bad type; both naming the field). ``numbacnn.recipe.run`` trains from it;
``numbacnn.resume`` reads a stored one back.
"""

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping

from ._checks import is_int
from .models import MODELS

__all__ = [
    "TrainConfig",
    "ConfigError",
    "check_directory",
    "AUGMENTS",
    "DATASETS",
    "DATASET_FORMS",
    "MAX_IMAGE_SIZE",
    "DATASET_SHAPES",
    "DATASET_SIZES",
    "SCHEDULES",
    "OPTIMIZERS",
    "OPTIMIZER_DEFAULTS",
    "MAX_INPUT_PAD",
]

AUGMENTS = ("none", "crop", "flip", "translate")
SCHEDULES = ("none", "step", "cosine")
# The settings each optimizer takes (numbacnn.optim's keyword arguments), with the value a
# setting left at None gets: SGD's are the lecture's recipe, the adaptive ones' PyTorch's
# defaults (lr 1e-3 for all three: torch's RMSprop default of 1e-2 is too high for CNNs).
OPTIMIZER_DEFAULTS = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    "rmsprop": {"lr": 1e-3, "momentum": 0.0, "eps": 1e-8, "weight_decay": 0.0},
}
OPTIMIZERS = tuple(OPTIMIZER_DEFAULTS)
# Per-image shape (C, H, W) of each dataset as it is stored (before padding).
DATASET_SHAPES = {"mnist": (1, 28, 28)}
# (training images, test images) of each dataset.
DATASET_SIZES = {"mnist": (60000, 10000)}
DATASETS = tuple(DATASET_SHAPES)
# Your own data: "folder:PATH" (torchvision's ImageFolder layout) or "npz:FILE" (arrays x, y);
# numbacnn.data.sources reads them.
DATASET_FORMS = ("folder:PATH", "npz:FILE")
MAX_IMAGE_SIZE = 4096
# Images smaller than a model's min_side are zero-padded by at most this many pixels per
# border (MNIST 28 -> 32, LeNet-5's input); a model that needs more cannot take them.
MAX_INPUT_PAD = 2


class ConfigError(ValueError):
    """A mistake in a training run's settings or actions: one line, no traceback needed."""


# --------------------------------------------------------------------------- field checks
# Counts are stored as int64 in checkpoints; a run of more epochs than this is a typo.
MAX_COUNT = 10**6


def _integer(name, value, minimum, optional=False, maximum=None):
    if value is None and optional:
        return None
    if not is_int(value):
        kind = "an integer or None" if optional else "an integer"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    return int(value)


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _optional_number(name, value, above=False):
    """None, or a finite number >= 0 (> 0 with ``above``)."""
    if value is None:
        return None
    value = _number(name, value)
    if above and value == 0.0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def _betas(value):
    """None, or a pair (beta1, beta2) of numbers in [0, 1) (a list is accepted)."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"betas must be a pair of numbers or None, got {value!r}")
    pair = tuple(_number("betas", b) for b in value)
    if not all(b < 1.0 for b in pair):
        raise ConfigError(f"betas must be numbers in [0, 1), got {value!r}")
    return pair


def _dataset(value):
    """ "mnist", or "folder:PATH" / "npz:FILE" with a non-empty path, made absolute (so a
    stored config names the same data from any directory; the path is checked to exist when
    a run starts, numbacnn.recipe)."""
    if not isinstance(value, str):
        raise TypeError(f"dataset must be a string, got {value!r}")
    kind, sep, path = value.partition(":")
    if value in DATASETS:
        return value
    if sep and kind in ("folder", "npz") and path:
        return f"{kind}:{os.path.abspath(os.path.expanduser(path))}"
    raise ConfigError(
        f"dataset: unknown dataset {value!r} (choose from: {', '.join(DATASETS + DATASET_FORMS)})"
    )


def _fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be between 0 and 1 (exclusive), got {value}")
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

    model: a name in ``numbacnn.models.MODELS``. dataset: "mnist", "folder:PATH" (one
    subfolder of images per class, torchvision's ImageFolder layout) or "npz:FILE" (arrays
    x and y), read by ``numbacnn.data.sources``; for the latter two, test_split is the
    fraction of each class set aside for testing when the data has no test split of its
    own, and folder images are converted to the model's channels and resized (resize,
    bilinear) to image_size x image_size (None: the model's min_side); with resize off
    they must share one size and are zero-padded like MNIST.
    epochs: total epochs (a resumed run continues up to it). batch_size, eval_batch_size:
    images per training / evaluation batch. optimizer: one of OPTIMIZERS, the classes of
    ``numbacnn.optim`` (PyTorch's semantics). lr (initial learning rate), momentum (SGD's
    and RMSprop's), weight_decay (L2; AdamW's is decoupled), nesterov (SGD's), betas and
    eps (the adaptive optimizers'): None takes the optimizer's default from
    OPTIMIZER_DEFAULTS (SGD: lr 0.05, momentum 0.9; Adam, AdamW, RMSprop: lr 1e-3, AdamW
    weight_decay 0.01); ``optimizer_settings`` is the resolved set. A setting the optimizer
    does not take is a ConfigError (``momentum`` for Adam). schedule: "cosine" (lr -> 0 over
    ``epochs``), "step" (times ``gamma`` every ``step_size`` epochs, default epochs // 3)
    or "none" (``numbacnn.optim.build_schedule``). augment: names from AUGMENTS, stored
    as a tuple (a list or a comma-separated string is accepted). seed: weight init,
    shuffling and augmentation. out: output directory (None: runs/MODEL, see
    ``out_dir``). limit_train, limit_test: use only the first N images (None: all).
    cache_dir, download: where MNIST is cached, and whether to download it if missing.
    drop_last: leave out the last, partial training batch of every epoch. Without it, a last
    batch of ONE image is still left out when the model has batch norm (which cannot
    normalise a single value per channel in training mode), with a notice at the start.
    sync_bn: under mpiexec, batch norm uses the statistics of the whole global batch
    (numbacnn.distributed.SyncBatchNorm) instead of each rank's share. device: "cpu" or
    "cuda" (the model, its optimizer and each batch on the GPU; numbacnn.device says what is
    missing when CUDA cannot run).

    Frozen: change a field with ``dataclasses.replace`` (which checks again). Raises
    ConfigError (a ValueError) for a bad value, TypeError for a bad type; both name the
    field.
    """

    model: str = "lenet5"
    dataset: str = "mnist"
    test_split: float = 0.1
    image_size: int | None = None
    resize: bool = True
    epochs: int = 3
    batch_size: int = 64
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    nesterov: bool = False
    betas: tuple | None = None
    eps: float | None = None
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
    sync_bn: bool = False
    device: str = "cpu"

    def __post_init__(self):
        checked = {
            "model": _choice("model", self.model, sorted(MODELS), "model"),
            "dataset": _dataset(self.dataset),
            "test_split": _fraction("test_split", self.test_split),
            "image_size": _integer("image_size", self.image_size, 1, optional=True, maximum=MAX_IMAGE_SIZE),
            "resize": _flag("resize", self.resize),
            "epochs": _integer("epochs", self.epochs, 1, maximum=MAX_COUNT),
            "batch_size": _integer("batch_size", self.batch_size, 1),
            "eval_batch_size": _integer("eval_batch_size", self.eval_batch_size, 1),
            "optimizer": _choice("optimizer", self.optimizer, OPTIMIZERS, "optimizer"),
            "lr": _optional_number("lr", self.lr),
            "momentum": _optional_number("momentum", self.momentum),
            "weight_decay": _optional_number("weight_decay", self.weight_decay),
            "nesterov": _flag("nesterov", self.nesterov),
            "betas": _betas(self.betas),
            "eps": _optional_number("eps", self.eps, above=True),
            "schedule": _choice("schedule", self.schedule, SCHEDULES, "schedule"),
            "step_size": _integer("step_size", self.step_size, 1, optional=True, maximum=MAX_COUNT),
            "gamma": _number("gamma", self.gamma),
            "augment": _augment_names(self.augment),
            "seed": _integer("seed", self.seed, 0),
            "out": _path("out", self.out),
            "limit_train": _integer("limit_train", self.limit_train, 1, optional=True),
            "limit_test": _integer("limit_test", self.limit_test, 1, optional=True),
            "cache_dir": _path("cache_dir", self.cache_dir),
            "download": _flag("download", self.download),
            "drop_last": _flag("drop_last", self.drop_last),
            "sync_bn": _flag("sync_bn", self.sync_bn),
            "device": _choice("device", self.device, ("cpu", "cuda"), "device"),
        }
        if checked["image_size"] is not None and not (
            checked["dataset"].startswith("folder:") and checked["resize"]
        ):
            raise ConfigError(
                "image_size resizes the images of a folder: dataset (with resize on), "
                f"not {checked['dataset']!r}{'' if checked['resize'] else ' with resize off'}"
            )
        takes = OPTIMIZER_DEFAULTS[checked["optimizer"]]
        for name in ("momentum", "betas", "eps"):
            if checked[name] is not None and name not in takes:
                raise ConfigError(
                    f"{name} is not a setting of the {checked['optimizer']} optimizer "
                    f"(it takes: {', '.join(takes)})"
                )
        if checked["nesterov"] and checked["optimizer"] != "sgd":
            raise ConfigError(f"nesterov is SGD's setting, not the {checked['optimizer']} optimizer's")
        if checked["nesterov"] and checked["momentum"] == 0.0:
            raise ConfigError(
                "nesterov=True needs momentum > 0, got momentum=0.0 (--no-nesterov turns it off)"
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # normalised (int, float, tuple, str)

    @property
    def optimizer_settings(self):
        """The keyword arguments of ``numbacnn.optim.OPTIMIZERS[optimizer]``: the fields it
        takes, None replaced by its default (OPTIMIZER_DEFAULTS)."""
        defaults = OPTIMIZER_DEFAULTS[self.optimizer]
        return {k: v if getattr(self, k) is None else getattr(self, k) for k, v in defaults.items()}

    @property
    def out_dir(self):
        """``out``, or runs/MODEL when ``out`` is None."""
        return self.out if self.out is not None else os.path.join("runs", self.model)

    def to_dict(self):
        """The fields as a JSON-able dict (``augment`` as a list)."""
        d = dataclasses.asdict(self)
        d["augment"] = list(self.augment)
        if self.betas is not None:
            d["betas"] = list(self.betas)
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
