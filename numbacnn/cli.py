"""The ``numbacnn`` command line: train | evaluate | predict | export | summary | gradcheck |
verify | graph | explain | bench.

    numbacnn train --model lenet5 --dataset mnist --epochs 3 --batch-size 64 --lr 0.05 \\
                   --momentum 0.9 --out runs/lenet5
    numbacnn train --out runs/lenet5 --epochs 5 --resume   # continue to 5 epochs, stored settings
    numbacnn evaluate --checkpoint runs/lenet5/checkpoint.npz   # + confusion.png/.json
    numbacnn predict --checkpoint runs/lenet5/checkpoint.npz digit.png
    numbacnn export --checkpoint runs/lenet5/checkpoint.npz --out lenet5.onnx   # or .safetensors
    numbacnn summary lenet5 --input-shape 1 32 32
    numbacnn gradcheck resnet_cifar              # a model's backward vs finite differences
    numbacnn verify my_conv.py:conv2d --op conv2d   # property-test your own kernel
    numbacnn graph resnet_cifar --out g.png      # the layer graph
    numbacnn explain --checkpoint runs/lenet5/checkpoint.npz --out explain.html
    numbacnn bench --quick                       # kernels and steps beside NumPy, SciPy, PyTorch

``train`` is parse -> ``numbacnn.recipe.TrainConfig`` -> ``numbacnn.recipe.run``; the
model facts (input sides) come from the registry in ``numbacnn.models``.
Every user mistake prints exactly one line, ``numbacnn: error: ...``, and no traceback: a bad
option (checked when the command line is parsed, before any work starts: types, ranges,
model names, the --out directory, the --checkpoint file) or a setting that cannot work
exits with status 2; missing data, a bad checkpoint or a diverged run with 1. Ctrl-C during
training keeps the last complete checkpoint and exits with 130.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np

from . import device, distributed
from . import random as nrandom
from ._interrupt import caused_by_ctrl_c
from ._io import DirectoryInUse
from .checkpoint import CheckpointError, load
from .config import (
    AUGMENTS,
    MAX_IMAGE_SIZE,
    OPTIMIZER_DEFAULTS,
    OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    TrainConfig,
    check_directory,
)
from .data.images import DataError
from .data.mnist import MNISTIntegrityError, MNISTNotFoundError
from .device import DeviceUnavailable
from .models import MODELS, build_model, model_info
from .recipe import input_pad, load_dataset, load_inputs, make_transform, open_dataset, resume_config, run
from .train import TrainingDiverged

_ONNX_OPSET = 21  # numbacnn.bridges.onnx.OPSET (that module needs the optional onnx package)

__all__ = ["main", "build_parser", "input_pad", "load_dataset", "make_transform", "UserError"]

# The CLI's user-mistake error under its earlier name (it is the recipe's ConfigError now).
UserError = ConfigError

# TrainConfig's fields and defaults: the train options' dests and the defaults their help shows.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


# --------------------------------------------------------------------------- helpers
def _build_model(name, num_classes=10, in_channels=1):
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} (choose from: {', '.join(sorted(MODELS))})")
    return build_model(name, num_classes=num_classes, in_channels=in_channels)


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (``numbacnn: error: ...``, exit 2 in ``main``)
    instead of a usage block and a ``numbacnn train: error:`` line."""

    def error(self, message):
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def _option_type(check):
    """An argparse ``type=`` from a check that returns the value or raises ValueError."""

    def parse(text):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = check.__name__.lstrip("_")  # argparse names the type in some messages
    return parse


def _int_between(minimum, maximum=None):
    bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"

    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer {bounds}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"expected an integer {bounds}, got {text!r}")
        return value

    return _option_type(integer)


_int_at_least = _int_between


def _number(text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a finite number >= 0, got {text!r}")
    return value


def _bounded(name, test, expected):
    """A check of a finite number >= 0 (``_number``) that also passes ``test``."""

    def check(text):
        try:
            value = _number(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise ValueError(f"expected {expected}, got {text!r}")
        return value

    check.__name__ = name
    return check


_positive = _bounded("positive", lambda v: v > 0, "a finite number > 0")
_open_fraction = _bounded("fraction", lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
_fraction = _bounded("fraction", lambda v: v < 1, "a number in [0, 1)")


def _dataset_spec(text):
    try:
        return TrainConfig(dataset=text).dataset
    except ConfigError as e:
        raise ValueError(str(e).removeprefix("dataset: ")) from None


def _per_optimizer(name):
    """ "0.05 for sgd, 0.001 for adam, ...": a setting's default for each optimizer taking it."""

    def show(value):
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    pairs = [(opt, show(d[name])) for opt, d in OPTIMIZER_DEFAULTS.items() if name in d]
    return ", ".join(f"{v} for {opt}" for opt, v in pairs)


def _model_name(text):
    if text not in MODELS:
        raise ValueError(f"unknown model {text!r} (choose from: {', '.join(sorted(MODELS))})")
    return text


def _directory(text):
    if not text:
        raise ValueError("expected a directory, got an empty path")
    try:
        check_directory("the directory", text)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return text


def _nonempty(text):
    if not text:
        raise ValueError("expected a path, got an empty one")
    return text


def _existing_file(text):
    if not os.path.isfile(text):
        what = "a directory" if os.path.isdir(text) else "not found"
        raise ValueError(f"{text!r}: {what}, expected a checkpoint file")
    return text


def _count_or(none_value, word):
    """An integer >= 1, or `word` (e.g. "all") meaning `none_value`: lets --resume undo a
    stored limit."""
    count = _int_at_least(1)

    def parse(text):
        return none_value if text == word else count(text)

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)
_nonneg_float = _option_type(_number)
_model = _option_type(_model_name)
_dir = _option_type(_directory)
_file = _option_type(_existing_file)


# --------------------------------------------------------------------------- commands
def cmd_train(args):
    """parse -> TrainConfig -> recipe.run. ``args`` holds only the options typed on the
    command line (the train parser's defaults are suppressed): they are laid over
    TrainConfig's defaults, or with --resume over the config stored in the checkpoint."""
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite starts it over: choose one")
    from .kernels.cpu.precompile import default_workers

    try:
        default_workers()  # NUMBACNN_JIT_WORKERS, read at the first batch: checked before anything
    except ValueError as e:
        raise ConfigError(str(e)) from None
    typed = {name: getattr(args, name) for name in _DEFAULTS if hasattr(args, name)}
    if args.resume:  # the typed options go over the stored ones: checked together there
        typed.setdefault("device", "cpu")  # where a run trains is this machine's, not the checkpoint's
        out = typed.get("out") or os.path.join("runs", typed.get("model", _DEFAULTS["model"]))
        config = resume_config(out, **typed)
    else:
        config = TrainConfig(**typed)
    metrics = run(config, resume=args.resume, overwrite=args.overwrite, progress=args.progress)
    if metrics and distributed.world().is_root:  # under MPI the other ranks hold no test results
        last = metrics[-1]
        print(
            f"final test accuracy {100 * last['test_accuracy']:.2f}% "
            f"(loss {last['test_loss']:.4f}) after {last['epoch']} epochs; "
            f"outputs in {config.out_dir}"
        )
    return 0


def _fitting_dataset(checkpoint, info, stored, spec, cache_dir, download):
    """The dataset `spec` opened for a checkpoint's model (its test split as in training),
    checked to fit it: (source, the model's classes, its preprocess record). ConfigError
    names what does not fit (classes, channels, image size)."""
    preprocess = info["preprocess"]
    if preprocess is None:
        raise ConfigError(f"{checkpoint} does not record how its images were prepared (numbacnn.preprocess)")
    channels = preprocess["channels"] if spec.startswith("folder:") else None  # folders: read as trained
    source = open_dataset(spec, stored.get("test_split", 0.1), cache_dir, download, training=False,
                          channels=channels)  # fmt: skip
    classes = info["classes"] or source.classes
    unknown = [c for c in source.classes if c not in classes]
    if unknown or source.channels != preprocess["channels"]:
        raise ConfigError(
            f"{spec} has classes {source.classes} and {_plural(source.channels, 'channel')}; "
            f"{checkpoint} knows {classes} with {_plural(preprocess['channels'], 'channel')}"
        )
    if source.kind != "folder" and list(source.size) != list(preprocess["size"]):
        h, w = preprocess["size"]
        raise ConfigError(
            f"{spec} has {source.size[0]}x{source.size[1]} images; {checkpoint} takes {h}x{w} "
            "(only folder: images are resized)"
        )
    return source, classes, preprocess


def _model_labels(source, classes, labels):
    """A dataset's labels (indices into source.classes) as the model's (indices into classes)."""
    return np.array([classes.index(c) for c in source.classes], np.int64)[labels]


def cmd_evaluate(args):
    """A model's test loss, accuracy, per-class accuracy and confusion matrix
    (numbacnn.report): a training checkpoint on its own dataset's test split, or any
    weights file numbacnn wrote on every image of --dataset."""
    from .report import evaluate_predictions, per_class_dict, write_confusion

    out_dir = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    check_directory("--out", out_dir)
    device.require("evaluate", args.device)
    model, info = _load_checkpoint_model(args.checkpoint, args.model)
    model.to(args.device)
    is_checkpoint = args.checkpoint.lower().endswith(".npz")
    meta = load(args.checkpoint).meta if is_checkpoint else {}
    stored = meta.get("config") or {}
    if not is_checkpoint and args.dataset is None:
        raise ConfigError(f"{args.checkpoint} is a weights file without a dataset: pass --dataset")
    spec = args.dataset or stored.get("dataset", "mnist")
    whole = args.split == "all" or (args.split is None and args.dataset not in (None, stored.get("dataset")))
    source, classes, preprocess = _fitting_dataset(args.checkpoint, info, stored, spec, args.cache_dir,
                                                   args.download)  # fmt: skip
    xtr, ytr, xte, yte = load_inputs(source, preprocess, limit_train=None if whole else 0)
    if whole:
        xte, yte = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    yte = _model_labels(source, classes, yte)
    xte, yte = xte[: args.limit_test], yte[: args.limit_test]
    if len(yte) == 0:
        raise ConfigError(f"{spec} has no test images (a class needs 2 or more images to give one)")
    result = evaluate_predictions(model, xte, yte, len(classes), args.batch_size)
    report = {
        "model": info["model"],
        "checkpoint": args.checkpoint,
        "dataset": spec,
        "split": "all images" if whole else "test",
        "epoch": meta.get("epoch"),
        "test_images": int(len(yte)),
        "test_loss": result.loss,
        "test_accuracy": result.accuracy,
    }
    png, js = write_confusion(out_dir, result, classes, extra=report)
    per_class = per_class_dict(classes, result.per_class)
    epoch = "" if meta.get("epoch") is None else f", epoch {meta['epoch']}"
    if args.json:
        print(json.dumps(dict(report, per_class_accuracy=per_class, confusion_png=png, confusion_json=js)))
        return 0
    print(
        f"{info['model']} ({args.checkpoint}{epoch}): test accuracy "
        f"{100 * result.accuracy:.2f}% ({int(np.trace(result.matrix))}/{len(yte)}), "
        f"test loss {result.loss:.4f}" + (f" on all {len(yte)} images of {spec}" if whole else "")
    )
    width = max(len(str(c)) for c in classes)
    print("per-class accuracy (images):")
    for c, row in zip(classes, result.matrix, strict=True):
        acc = per_class[c]
        shown = "   -   " if acc is None else f"{100 * acc:6.2f}%"
        print(f"  {str(c):>{width}}  {shown}  ({int(row.sum())})")
    print(f"confusion matrix: {png}, {js}")
    return 0


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cmd_predict(args):
    """The top-k classes of each image, with probabilities (numbacnn.report.predict_files),
    from a checkpoint or a weights file numbacnn exported (they record the preprocessing)."""
    from .report import predict_files

    for f in args.images:
        if not os.path.isfile(f):
            what = "a directory" if os.path.isdir(f) else "not found"
            raise ConfigError(f"{f!r}: {what}, expected an image file")
    model, info = _load_checkpoint_model(args.checkpoint)
    if info["preprocess"] is None:
        raise ConfigError(
            f"{args.checkpoint} does not record how images become its input (numbacnn.preprocess): "
            "predict needs a numbacnn checkpoint or a file numbacnn exported"
        )
    classes = info["classes"] or [str(k) for k in range(model.state_dict()[_last_weight(model)].shape[0])]
    results = predict_files(model, args.images, info["preprocess"], top_k=min(args.top_k, len(classes)))
    if args.json:
        rows = [{"image": f, "top": [{"class": classes[k], "index": k, "probability": p} for k, p in top]}
                for f, top in results]  # fmt: skip
        print(json.dumps(rows))
        return 0
    for f, top in results:
        print(f"{f}: " + ", ".join(f"{classes[k]} ({100 * p:.1f}%)" for k, p in top))
    return 0


def _last_weight(model):
    """The state_dict key of the model's last 2-D weight (its classifier)."""
    return [k for k, v in model.state_dict().items() if v.ndim == 2][-1]


def _load_checkpoint_model(path, model_name=None):
    """(model, info) of a checkpoint, built as its config says or as ``model_name``
    (numbacnn.load); a file that is not a training checkpoint, or weights that do not fit,
    are CheckpointErrors."""
    from .bridges.weights import load as load_weights
    from .bridges.weights import read_metadata

    try:
        info = read_metadata(path)
        info["model"] = model_name or info["model"]
        if info["model"] is None:
            raise ConfigError(f"{path} does not say which model it holds; pass --model")
        if not isinstance(info["model"], str) or info["model"] not in MODELS:
            raise CheckpointError(f"{path} names an unknown model {info['model']!r}; pass --model")
        return load_weights(path, info["model"]), info
    except (CheckpointError, ConfigError):
        raise
    except ValueError as e:
        raise CheckpointError(str(e)) from None


EXPORT_FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors"}


def cmd_export(args):
    """checkpoint -> ONNX (numbacnn.bridges.onnx) or safetensors (numbacnn.bridges.weights),
    both carrying the model name, class names and preprocessing as ``numbacnn.*`` metadata."""
    from .bridges.weights import metadata_strings, save_safetensors

    suffix = os.path.splitext(args.out)[1].lower()
    fmt = args.format or {v: k for k, v in EXPORT_FORMATS.items()}.get(suffix)
    if fmt is None:
        raise ConfigError(
            f"--out {args.out!r}: pass --format onnx or safetensors, or end the name in .onnx or .safetensors"
        )
    if suffix != EXPORT_FORMATS[fmt]:
        raise ConfigError(f"--out {args.out!r}: a {fmt} file's name ends in {EXPORT_FORMATS[fmt]}")
    if os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out!r} is a directory")
    if os.path.exists(args.out) and not args.overwrite:
        raise ConfigError(f"--out {args.out!r} already exists: pass --overwrite to replace it")
    if args.opset is not None and fmt != "onnx":
        raise ConfigError("--opset is for --format onnx")
    check_directory("--out's folder", os.path.dirname(os.path.abspath(args.out)))
    model, info = _load_checkpoint_model(args.checkpoint)
    name, meta = info["model"], metadata_strings(info)
    if fmt == "safetensors":
        save_safetensors(model.state_dict(), args.out, meta)
        what = f"{len(model.state_dict())} tensors under PyTorch's state_dict names"
    else:
        try:
            from .bridges.onnx import OPSET, export_onnx
        except ImportError as e:
            raise ConfigError(str(e)) from None
        opset = args.opset or OPSET
        shape = info["input_shape"]
        if shape is None:  # an older checkpoint: the side the model is built for
            first = next(iter(model.state_dict().values()))  # the first conv's weight (C_out, C_in, ...)
            shape = [first.shape[1], model_info(name).side, model_info(name).side]
        try:
            export_onnx(
                model, args.out, shape, opset=opset, model_name=name, classes=info["classes"], metadata=meta
            )
        except ValueError as e:  # an opset this onnx does not know
            raise ConfigError(str(e)) from None
        what = f"ONNX opset {opset}, input (N, {', '.join(map(str, shape))})"
    size = os.path.getsize(args.out) / 1e6
    print(f"wrote {args.out} ({name} from {args.checkpoint}: {what}; {size:.1f} MB)")
    return 0


def cmd_summary(args):
    model = _build_model(
        args.model, num_classes=args.num_classes, in_channels=args.input_shape[0] if args.input_shape else 1
    )
    if args.input_shape:
        shape = tuple(args.input_shape)
    else:
        side = model_info(args.model).side
        shape = (1, side, side)
    try:
        model.summary(shape)
    except ValueError as e:
        raise ConfigError(f"{args.model} does not accept input shape {shape}: {e}") from None
    return 0


def cmd_gradcheck(args):
    """numbacnn.gradcheck on a zoo model: the table, exit 1 when a tensor fails."""
    from .gradient_check import gradcheck

    channels, side = (args.input_shape[0], args.input_shape[1:]) if args.input_shape else (1, None)
    nrandom.seed(args.seed)  # the model's initial weights too
    model = _build_model(args.model, num_classes=args.num_classes, in_channels=channels)
    if side is None:
        side = [model_info(args.model).min_side] * 2  # the smallest it takes: the fastest check
    shape = (args.batch_size or 2, channels, *side)
    try:
        model.output_shape(shape)
    except ValueError as e:
        raise ConfigError(f"{args.model} does not accept input shape {shape[1:]}: {e}") from None
    while True:
        try:
            report = gradcheck(model, shape, samples=args.samples, training=not args.eval, seed=args.seed,
                               tolerance=args.tolerance)  # fmt: skip
            break
        except ValueError as e:  # a batch norm with too few values: a larger default batch, or the fix
            if args.batch_size is None and shape[0] < 4:
                shape = (4, *shape[1:])  # resnet18 at 32 x 32: 1 x 1 maps at layer4
                continue
            fix = "--batch-size 4 or more, a larger --input-shape, or --eval"
            raise ConfigError(str(e).replace("a larger batch (or image), or training=False", fix)) from None
    mode = "eval" if args.eval else "training"
    print(f"gradient check of {args.model} ({mode} mode), input {shape}, float64:\n{report}")
    return 0 if report.passed else 1


def _load_candidate(spec):
    """FILE.py:FUNCTION or MODULE:FUNCTION -> the function. A file is imported
    with its own folder on sys.path (so its imports of its neighbours work), a module with the
    working directory on it."""
    import importlib
    import importlib.util

    where, sep, func = spec.rpartition(":")
    if not sep or not where or not func or ":" in where:
        raise ConfigError(f"{spec!r}: name the function as FILE.py:FUNCTION or MODULE:FUNCTION")
    if os.path.isdir(where):
        raise ConfigError(f"{where!r} is a directory: name a .py file (FILE.py:FUNCTION) or a module")
    if where.endswith(".py"):
        if not os.path.isfile(where):  # (a directory was refused above)
            raise ConfigError(f"{where!r}: not found, expected a .py file")
        folder = os.path.dirname(os.path.abspath(where))
        name = os.path.splitext(os.path.basename(where))[0]
        load = importlib.util.spec_from_file_location(name, where)
        module = importlib.util.module_from_spec(load)
        run = lambda: load.loader.exec_module(module)  # noqa: E731
    else:
        folder, module = os.getcwd(), None
        run = lambda: importlib.import_module(where)  # noqa: E731
    sys.path.insert(0, folder)
    try:
        module = run() or module
    except ModuleNotFoundError as e:
        if e.name == where.split(".")[0]:
            raise ConfigError(f"no module named {where!r} (a file is named FILE.py:FUNCTION)") from None
        raise DataError(f"importing {where} raised ModuleNotFoundError: {e}") from None
    except SystemExit as e:  # exit() at the top of the user's file
        raise DataError(f"importing {where} called sys.exit({e.code!r})") from None
    except Exception as e:  # the user's code failed at import: its own error, in one line
        raise DataError(f"importing {where} raised {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(folder)
    candidate = getattr(module, func, None)
    if not callable(candidate):
        defined = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not isinstance(v, type) and not n.startswith("_")
        )
        listed = ", ".join(defined[:20]) + (f" and {len(defined) - 20} more" if len(defined) > 20 else "")
        what = "is not a function" if hasattr(module, func) else "is not defined"
        raise ConfigError(f"{func!r} {what} in {where} (its functions: {listed or 'none'})")
    return candidate


def cmd_verify(args):
    """numbacnn.testing.check_op on a user's function: one line when it passes, exit 0; the
    smallest failing case, exit 1."""
    # Hypothesis keeps a cache; in ~/.cache/numbacnn, not in a .hypothesis folder where you stand
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.expanduser("~/.cache/numbacnn/hypothesis"))
    from .testing import DEFAULTS_ONLY_OPS, OPS, check_op

    if args.op.removesuffix("_backward") not in OPS:
        known = ", ".join(n for op in OPS for n in (op, op + "_backward"))
        raise ConfigError(f"--op {args.op!r}: no checks for it (choose from: {known})")
    if args.defaults_only and args.op.removesuffix("_backward") not in DEFAULTS_ONLY_OPS:
        raise ConfigError(f"--defaults-only is for conv2d and the pooling ops, not {args.op}")
    candidate = _load_candidate(args.function)
    examples = _plural(args.examples, "example")
    print(f"checking {args.function} as numbacnn.functional.{args.op} on {examples} ...", flush=True)
    try:
        report = check_op(args.op, candidate, examples=args.examples, seed=args.seed,
                          defaults_only=args.defaults_only)  # fmt: skip
    except AssertionError as e:
        print(f"FAILED {e}")
        return 1
    print(report)
    return 0


def _output_file(out, what, kinds, suffixes, example):
    """--out checked to name a file (not a directory) ending in one of `suffixes`, in a folder
    that can be written or created: ConfigError naming the mistake."""
    if os.path.isdir(out):
        raise ConfigError(
            f"--out {out!r} is a directory: name the {what}'s file, e.g. {os.path.join(out, example)}"
        )
    if os.path.splitext(out)[1].lower() not in suffixes:
        raise ConfigError(f"--out {out!r}: the {what} is written as {kinds}")
    _replaceable(out)
    check_directory("--out's folder", os.path.dirname(os.path.abspath(out)))


def _replaceable(path):
    """ConfigError when an output `path` exists and is neither a file nor a link (a FIFO, a
    device): the atomic write (_io) would replace it. A link is replaced; the file it names is
    kept."""
    if os.path.lexists(path) and not (os.path.isfile(path) or os.path.islink(path)):
        raise ConfigError(f"--out: {path!r} exists and is not a file (numbacnn writes only files)")


def cmd_graph(args):
    """Graph.draw of a zoo model into --out."""
    channels = args.input_shape[0] if args.input_shape else 1
    model = _build_model(args.model, num_classes=args.num_classes, in_channels=channels)
    side = model_info(args.model).side
    shape = tuple(args.input_shape) if args.input_shape else (1, side, side)
    out = f"{args.model}.png" if args.out is None else args.out
    _output_file(out, "picture", ".png, .svg or .pdf", (".png", ".svg", ".pdf"), f"{args.model}.png")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out!r}: its directory cannot be created: {e.strerror}") from None
    try:
        model.output_shape((1, *shape))
    except ValueError as e:
        raise ConfigError(f"{args.model} does not accept input shape {shape}: {e}") from None
    try:
        model.draw(shape, out, depth=args.depth)
    except OSError as e:
        raise ConfigError(f"--out {out!r} cannot be written: {e.strerror or e}") from None
    print(f"wrote {out} ({args.model}, input {'x'.join(map(str, shape))})")
    return 0


def cmd_explain(args):
    """numbacnn.explain's page of a training checkpoint: its network, the filters of its
    first conv layers, and the feature maps and class probabilities of --images test
    images of its dataset (the test split as in training, prepared as the checkpoint
    records), written to --out as one self-contained HTML file."""
    from .explain import write_explain_page

    out = args.out
    _output_file(out, "page", ".html (nothing else is overwritten)", (".html", ".htm"), "explain.html")
    if not args.checkpoint.lower().endswith(".npz"):
        raise ConfigError(
            f"{args.checkpoint} is not a checkpoint.npz: explain shows the test images of the dataset "
            "a training checkpoint records"
        )
    model, info = _load_checkpoint_model(args.checkpoint)
    meta = load(args.checkpoint).meta
    stored = meta.get("config") or {}
    spec = args.dataset or stored.get("dataset", "mnist")
    source, classes, preprocess = _fitting_dataset(args.checkpoint, info, stored, spec, args.cache_dir, False)
    if args.index >= source.n_test:
        last = f" (0..{source.n_test - 1})" if source.n_test else ""
        raise ConfigError(
            f"--index {args.index} is past the end: {spec}'s test split has "
            f"{_plural(source.n_test, 'image')}{last}"
        )
    _, _, images, labels = load_inputs(source, preprocess, limit_train=0, limit_test=args.index + args.images)
    images, labels = images[args.index :], _model_labels(source, classes, labels[args.index :])
    name, epoch = info["model"], meta.get("epoch")
    about = [("model", name), ("checkpoint", args.checkpoint), ("dataset", f"{spec}, test split")]
    if epoch is not None:
        about.append(("epoch", epoch))
    metrics = meta.get("metrics") or []
    if metrics and metrics[-1].get("test_accuracy") is not None:
        limit = stored.get("limit_test")
        on = f" (on its first {limit} test images, in training)" if limit else " (in training)"
        about.append(("test accuracy", f"{100 * metrics[-1]['test_accuracy']:.2f}%{on}"))
    try:
        shown = write_explain_page(
            model, images, labels, out, class_names=classes, mean=preprocess["mean"], std=preprocess["std"],
            depth=args.depth, title=f"numbacnn explain: {name}", about=about,
            indices=range(args.index, args.index + len(labels)),
        )  # fmt: skip
    except OSError as e:
        raise ConfigError(f"--out {out!r} cannot be written: {e.strerror or e}") from None
    right = int(np.sum(shown.predictions == labels))
    print(
        f"wrote {out} ({name}: test images {args.index}..{args.index + len(labels) - 1} of {spec}, "
        f"{right}/{len(labels)} predicted right; {shown.size / 1e6:.1f} MB)"
    )
    return 0


def cmd_bench(args):
    """numbacnn.bench.run: the table, OUT/bench.json and OUT/bench.png."""
    from .bench import RESERVED
    from .bench import run as bench_run

    specs = list(dict.fromkeys(args.kernel or ()))  # a spec given twice is one column
    labels = _kernel_labels(specs, RESERVED)
    kernels = [(label, _load_candidate(spec)) for label, spec in zip(labels, specs, strict=True)]
    for name in ("bench.json", "bench.png"):
        _replaceable(os.path.join(args.out, name))
    made = []  # the folders this run creates, deepest first
    folder = os.path.abspath(args.out)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    try:  # --out was checked when parsed (_dir); made now, not after the run
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {args.out!r} cannot be created: {e.strerror}") from None
    try:
        bench_run(
            quick=args.quick, out=args.out, dtype=np.dtype(args.dtype), kernels=kernels, rounds=args.rounds
        )
    except BaseException:
        for folder in made:  # a run that wrote nothing leaves none of the folders it made
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise
    return 0


def _kernel_labels(specs, reserved):
    """A column label per --kernel spec: the function's name; FILE:FUNCTION (the file's own
    name) when two specs share a function name or the name is a built-in column or row key;
    the whole spec when even that repeats."""
    names = [spec.rpartition(":")[2] for spec in specs]
    short = [f"{os.path.basename(spec.rpartition(':')[0])}:{n}" for spec, n in zip(specs, names, strict=True)]
    labels = [s if names.count(n) > 1 or n in reserved else n for s, n in zip(short, names, strict=True)]
    return [spec if labels.count(label) > 1 else label for spec, label in zip(specs, labels, strict=True)]


# --------------------------------------------------------------------------- parser
def _add_checkpoint(parser):
    parser.add_argument("--checkpoint", type=_file, required=True, help="path to a checkpoint.npz")


def build_parser():
    p = _Parser(
        prog="numbacnn",
        description="numbacnn: train, evaluate and inspect CNNs whose kernels are explicit Numba loop nests.",
    )
    sub = p.add_subparsers(
        dest="command", metavar="{train,evaluate,predict,export,summary,gradcheck,verify,graph,explain,bench}"
    )
    sub.required = True

    # Train options default to SUPPRESS: args holds only what was typed (so --resume can
    # tell it from the stored config); the defaults are TrainConfig's, shown in the help.
    d = _DEFAULTS
    t = sub.add_parser(
        "train",
        help="train a model; writes checkpoint, metrics and curves",
        argument_default=argparse.SUPPRESS,
        description="Train a model with SGD, Adam, AdamW or RMSprop; writes OUT/checkpoint.npz, "
        "OUT/metrics.json and OUT/curves.png after every epoch. "
        "With --resume, options not typed come from the checkpoint.",
    )
    t.add_argument(
        "--model", type=_model, help=f"model name, one of {', '.join(sorted(MODELS))} (default: {d['model']})"
    )
    t.add_argument(
        "--dataset",
        type=_option_type(_dataset_spec),
        help="mnist, folder:PATH (PATH/<class>/<image>.png, torchvision's ImageFolder layout; "
        f"PATH/train and PATH/test if present) or npz:FILE (arrays x, y) (default: {d['dataset']})",
    )
    t.add_argument(
        "--test-split",
        type=_option_type(_open_fraction),
        help="fraction of each class set aside for testing when folder:/npz: data has no test "
        f"split (default: {d['test_split']})",
    )
    t.add_argument(
        "--image-size",
        type=_int_between(1, MAX_IMAGE_SIZE),
        metavar="SIDE",
        help="resize folder: images to SIDE x SIDE (default: the model's smallest side, 32 for lenet5)",
    )
    t.add_argument(
        "--resize",
        action=argparse.BooleanOptionalAction,
        help="resize folder: images (bilinear); --no-resize needs one size and zero-pads like MNIST "
        "(default: on)",
    )
    t.add_argument(
        "--epochs", type=_positive_int, help=f"total epochs, resumed ones included (default: {d['epochs']})"
    )
    t.add_argument("--batch-size", type=_positive_int, help=f"(default: {d['batch_size']})")
    t.add_argument("--eval-batch-size", type=_positive_int, help=f"(default: {d['eval_batch_size']})")
    t.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help=f"PyTorch's SGD, Adam, AdamW or RMSprop (default: {d['optimizer']}); "
        "a setting below left out takes this optimizer's default",
    )
    t.add_argument("--lr", type=_nonneg_float, help=f"initial rate (default: {_per_optimizer('lr')})")
    t.add_argument(
        "--momentum", type=_nonneg_float, help=f"sgd's and rmsprop's (default: {_per_optimizer('momentum')})"
    )
    t.add_argument(
        "--weight-decay",
        type=_nonneg_float,
        help=f"L2 penalty, decoupled for adamw (default: {_per_optimizer('weight_decay')})",
    )
    t.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, help="sgd's Nesterov momentum (default: off)"
    )
    t.add_argument(
        "--betas",
        type=_option_type(_fraction),
        nargs=2,
        metavar=("BETA1", "BETA2"),
        help=f"adam's and adamw's moment decay rates (default: {_per_optimizer('betas')})",
    )
    t.add_argument(
        "--eps", type=_option_type(_positive), help=f"denominator term (default: {_per_optimizer('eps')})"
    )
    t.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help=f"learning-rate schedule per epoch (default: {d['schedule']}: from --lr "
        "at epoch 1 towards 0 at the end of --epochs; none keeps --lr constant)",
    )
    t.add_argument(
        "--step-size",
        type=_count_or(None, "auto"),
        help="epochs per decay for --schedule step, or auto (default: auto = max(1, epochs // 3))",
    )
    t.add_argument(
        "--gamma", type=_nonneg_float, help=f"decay factor for --schedule step (default: {d['gamma']})"
    )
    t.add_argument(
        "--augment",
        nargs="+",
        action="extend",
        metavar="AUG",
        help=f"augmentations, any of {', '.join(AUGMENTS)} (space or comma separated, or repeated; "
        f"default: {' '.join(d['augment'])})",
    )
    t.add_argument("--seed", type=_nonneg_int, help=f"(default: {d['seed']})")
    t.add_argument("--out", type=_dir, help="output directory (default: runs/MODEL)")
    t.add_argument(
        "--resume",
        action="store_true",
        default=False,
        help="continue from OUT/checkpoint.npz up to --epochs epochs in total, with "
        "its stored settings except the options typed here",
    )
    t.add_argument(
        "--overwrite", action="store_true", default=False, help="start over even if OUT/checkpoint.npz exists"
    )
    t.add_argument(
        "--limit-train",
        type=_count_or(None, "all"),
        metavar="N",
        help="use only the first N training images (quick runs), or all (default: all)",
    )
    t.add_argument(
        "--limit-test",
        type=_count_or(None, "all"),
        metavar="N",
        help="use only the first N test images, or all (default: all)",
    )
    t.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="where the model, the optimizer and each batch live: cuda trains on the GPU "
        "(numbacnn[cuda]); not taken from the checkpoint on --resume (default: cpu)",
    )
    t.add_argument("--cache-dir", type=_dir, help="MNIST cache directory (default: ~/.cache/numbacnn)")
    t.add_argument(
        "--download", action=argparse.BooleanOptionalAction, help="download MNIST if not found (default: off)"
    )
    t.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        help="leave out the last, partial training batch of each epoch (without it, a last "
        "batch of one image is left out when the model's batch norm cannot take it; default: off)",
    )
    t.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        help="under mpiexec -n K: batch norm with the whole global batch's statistics, not each "
        "rank's share (default: off)",
    )
    t.add_argument(
        "--no-progress", dest="progress", action="store_false", default=True, help="no progress bar"
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="test accuracy, per-class accuracy and confusion matrix of a checkpoint",
        description="Evaluate a checkpoint on its dataset's test split (or --dataset's): prints the "
        "accuracy, loss and per-class accuracy; writes OUT/confusion.png and OUT/confusion.json.",
    )
    e.add_argument(
        "--checkpoint",
        type=_file,
        required=True,
        help="a checkpoint.npz (or a .safetensors numbacnn exported, with --dataset)",
    )
    e.add_argument(
        "--model",
        type=_model,
        default=None,
        help=f"model name, one of {', '.join(sorted(MODELS))} (default: from the checkpoint)",
    )
    e.add_argument(
        "--dataset",
        type=_option_type(_dataset_spec),
        default=None,
        help="mnist, folder:PATH or npz:FILE with the checkpoint's classes, all of whose images are "
        "scored (default: the checkpoint's dataset, its test split)",
    )
    e.add_argument(
        "--split",
        choices=("test", "all"),
        default=None,
        help="score the test split (split as in training) or all images (default: test for the "
        "checkpoint's dataset, all for another)",
    )
    e.add_argument("--batch-size", type=_positive_int, default=1000, help="(default: 1000)")
    e.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="run the model on (default: cpu)")
    e.add_argument("--limit-test", type=_positive_int, default=None, metavar="N", help="(default: all)")
    e.add_argument(
        "--out",
        type=_dir,
        default=None,
        help="where the confusion matrix goes (default: the checkpoint's folder)",
    )
    e.add_argument(
        "--cache-dir", type=_dir, default=None, help="MNIST cache directory (default: ~/.cache/numbacnn)"
    )
    e.add_argument("--download", action="store_true", help="download MNIST if not found (default: off)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="the most probable classes of image files",
        description="Classify image files (PNG, JPEG, ...) with a checkpoint: each image is converted, "
        "resized and normalised as its training images were; prints the top-k classes with "
        "their probabilities.",
    )
    pr.add_argument(
        "--checkpoint", type=_file, required=True, help="a checkpoint.npz or a .safetensors numbacnn exported"
    )
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    pr.add_argument(
        "--top-k", type=_positive_int, default=3, metavar="K", help="classes shown per image (default: 3)"
    )
    pr.add_argument("--json", action="store_true", help="print the result as JSON")
    pr.set_defaults(func=cmd_predict)

    x = sub.add_parser(
        "export",
        help="write a checkpoint's model as ONNX or safetensors",
        description="Write a checkpoint's model as an ONNX graph (eval mode; onnxruntime runs it; "
        "needs pip install 'numbacnn[onnx]') or as safetensors under PyTorch's state_dict names.",
    )
    _add_checkpoint(x)
    x.add_argument(
        "--format", choices=sorted(EXPORT_FORMATS), default=None, help="(default: from --out's suffix)"
    )
    x.add_argument("--out", required=True, help="the file to write (.onnx or .safetensors)")
    x.add_argument(
        "--opset",
        type=_int_between(13, 99),
        default=None,
        help=f"ONNX opset, 13 to the installed onnx's newest (default: {_ONNX_OPSET})",
    )
    x.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    x.set_defaults(func=cmd_export)

    s = sub.add_parser("summary", help="print a model's layer table")
    s.add_argument("model", type=_model, help=f"model name, one of {', '.join(sorted(MODELS))}")
    s.add_argument(
        "--input-shape",
        type=_int_between(1, 4096),
        nargs=3,
        metavar=("C", "H", "W"),
        default=None,
        help="per-image input shape (default: 1 SIDE SIDE, SIDE the "
        "side the model is built for: 32 for lenet5, 224 for alexnet)",
    )
    s.add_argument("--num-classes", type=_int_between(1, 10**5), default=10, help="(default: 10)")
    s.set_defaults(func=cmd_summary)

    g = sub.add_parser(
        "gradcheck",
        help="check a model's backward pass against finite differences",
        description="Check a zoo model's backward pass (every parameter and the input) against "
        "float64 central finite differences of its forward pass, and print one row per tensor "
        "(numbacnn.gradcheck). Exit status 1 when a tensor fails.",
    )
    g.add_argument("model", type=_model, help=f"one of {', '.join(sorted(MODELS))}")
    g.add_argument("--input-shape", type=_int_between(1, 4096), nargs=3, metavar=("C", "H", "W"),
                   help="per-image input shape (default: 1 SIDE SIDE, its smallest)")  # fmt: skip
    g.add_argument("--batch-size", type=_int_between(1, 64), default=None,
                   help="images per batch (default: 2; 4 where a batch norm would see 2 values)")  # fmt: skip
    g.add_argument("--samples", type=_int_between(1, 10**6), default=8,
                   help="elements per tensor, in different rows (default: 8)")  # fmt: skip
    g.add_argument("--eval", action="store_true", help="check the eval-mode pass (default: training mode)")
    g.add_argument("--tolerance", type=_option_type(_positive), default=1e-6,
                   help="largest relative error that passes (default: 1e-6)")  # fmt: skip
    g.add_argument(
        "--seed", type=_nonneg_int, default=0, help="for the input, the elements and dropout (default: 0)"
    )
    g.add_argument("--num-classes", type=_int_between(1, 10**5), default=10, help="(default: 10)")
    g.set_defaults(func=cmd_gradcheck)

    v = sub.add_parser(
        "verify",
        help="property-test your own kernel against numbacnn.reference",
        description="Property-test FUNCTION, your implementation of numbacnn.functional.OP (same "
        "signature), with Hypothesis (numbacnn.testing.check_op): against numbacnn.reference, SciPy for "
        "conv2d, float64 finite differences for a *_backward. On a failure it prints the smallest "
        "failing case, the first wrong index and both values, and exits with status 1.",
    )
    v.add_argument("function", metavar="FILE.py:FUNCTION", help="your function (or MODULE:FUNCTION)")
    v.add_argument("--op", required=True, metavar="OP",
                   help="conv2d, max_pool2d, avg_pool2d, batch_norm, linear, relu, tanh, sigmoid, add, "
                   "dropout, cross_entropy, or one of them + _backward")  # fmt: skip
    v.add_argument(
        "--examples", type=_int_between(1, 10**6), default=200, help="cases to draw (default: 200)"
    )
    v.add_argument("--seed", type=_nonneg_int, default=None,
                   help="another reproducible set of cases (default: the same cases every run)")  # fmt: skip
    v.add_argument("--defaults-only", action="store_true",
                   help="conv2d, pooling: stride, padding, dilation, groups at their defaults")  # fmt: skip
    v.set_defaults(func=cmd_verify)

    d = sub.add_parser("graph", help="draw a model's layer graph (matplotlib)")
    d.add_argument("model", type=_model, help=f"one of {', '.join(sorted(MODELS))}")
    d.add_argument("--out", help="the picture: .png, .svg or .pdf (default: MODEL.png)")
    d.add_argument("--depth", type=_int_between(1, 100), default=None,
                   help="levels of nesting drawn: 1 = the top level only (default: all)")  # fmt: skip
    d.add_argument("--input-shape", type=_int_between(1, 4096), nargs=3, metavar=("C", "H", "W"),
                   help="per-image input shape (default: 1 SIDE SIDE, the model's side)")  # fmt: skip
    d.add_argument("--num-classes", type=_int_between(1, 10**5), default=10, help="(default: 10)")
    d.set_defaults(func=cmd_graph)

    ex = sub.add_parser(
        "explain",
        help="one HTML page of a checkpoint's network, filters, feature maps and predictions",
        description="Write one self-contained HTML page (no server, no network): the checkpoint's "
        "network, the filters of its first conv layers, and for --images test images of its dataset "
        "(chosen in the page) every layer's feature maps and the class probabilities.",
    )
    _add_checkpoint(ex)
    ex.add_argument("--out", type=_option_type(_nonempty), default="explain.html",
                    help="the page to write, .html (default: explain.html)")  # fmt: skip
    ex.add_argument("--images", type=_int_between(1, 100), default=10, metavar="N",
                    help="test images in the page, 1 to 100 (default: 10)")  # fmt: skip
    ex.add_argument("--index", type=_nonneg_int, default=0, help="the first test image's number (default: 0)")
    ex.add_argument("--dataset", type=_option_type(_dataset_spec), default=None,
                    help="mnist, folder:PATH or npz:FILE with the checkpoint's classes, its test split as in "
                    "training (default: the checkpoint's dataset; name it when that has moved)")  # fmt: skip
    ex.add_argument("--depth", type=_int_between(1, 100), default=None,
                    help="levels of nesting shown: 1 = the top level only (default: all)")  # fmt: skip
    ex.add_argument(
        "--cache-dir", type=_dir, default=None, help="MNIST cache directory (default: ~/.cache/numbacnn)"
    )
    ex.set_defaults(func=cmd_explain)

    bn = sub.add_parser(
        "bench",
        help="time the kernels and training steps beside NumPy, SciPy and PyTorch",
        description="Time conv2d (forward, dx, dw), pooling, batch norm, training steps (LeNet-5, "
        "ResNet-20, a VGG block), ResNet-20 inference and a LeNet-5 MNIST epoch with numbacnn (all "
        "threads and one), NumPy im2col, SciPy and PyTorch "
        "CPU, each baseline in its own process; print the table (median ms, GFLOP/s, the ratio to "
        "PyTorch, the share of this machine's peak) and write OUT/bench.json and OUT/bench.png.",
    )
    bn.add_argument("--quick", action="store_true",
                    help="a smoke run (small batches): about 6 s with a warm JIT cache")  # fmt: skip
    bn.add_argument(
        "--out", type=_dir, default="bench", help="folder for bench.json and bench.png (default: bench)"
    )
    bn.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(default: float32)")
    bn.add_argument(
        "--rounds",
        type=_int_between(1, 100),
        default=None,
        help="rounds of numbacnn and PyTorch timed in turn, case by case; each figure is the median over "
        "the rounds and 'range' their lowest and highest ratio (default: 3, with --quick 1)",
    )
    bn.add_argument(
        "--kernel",
        action="append",
        metavar="FILE.py:FUNCTION",
        help="your conv2d (the signature of numbacnn.functional.conv2d: x, weight, bias, stride, padding, "
        "...) as a column on the conv2d forward rows; each row checks its output against a float64 "
        "im2col oracle before timing it (repeatable; MODULE:FUNCTION works too)",
    )
    bn.set_defaults(func=cmd_bench)
    return p


def _terminated(signum, frame):
    """SIGTERM (kill, a batch system's time limit) stops a run as Ctrl-C does: the last
    complete checkpoint stays, the lock goes, and the run says where to --resume from."""
    raise KeyboardInterrupt


def main(argv=None):
    """Entry point of the ``numbacnn`` console script; returns the exit status. SIGTERM is
    handled as Ctrl-C (exit 130).

    Under ``mpiexec -n K`` (K > 1) every rank runs it, and rank 0 alone prints. ``train``
    runs on every rank (data-parallel); the other commands run on rank 0 only. A mistake on
    the command line is every rank's: rank 0 prints its one line and every rank exits with
    it. A rank that fails later prints its one line, prefixed ``[rank r of K]``, and ends
    every rank (MPI_Abort) instead of leaving them waiting in a collective call: mpiexec then
    exits non-zero within seconds."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    if distributed.launched_ranks() <= 1:
        return _main(argv)
    try:
        world = distributed.world()
    except RuntimeError as e:  # mpiexec without mpi4py, or another MPI's mpiexec: no world to abort
        if distributed.launched_rank() == 0:
            print(f"numbacnn: error: {e}", file=sys.stderr)
        return 2
    if world.size == 1:
        return _main(argv)
    lines, state, who = [], {}, f"[rank {world.rank} of {world.size}] "
    quiet = contextlib.nullcontext() if world.is_root else contextlib.redirect_stdout(io.StringIO())
    with quiet:  # rank 0 alone prints (--help, results)
        try:
            code = _main(argv, who, lines.append, state, world)
        except SystemExit as e:  # --help
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # a bug: its traceback, then every rank ends
            lines.append(traceback.format_exc().rstrip())
            code = 1
    if code and (not state.get("parsed") or world.all_failed()):  # every rank met it: a mistake
        if world.is_root:  # in the command line or the files it names; rank 0's line, no abort
            print(*(line.replace(who, "", 1) for line in lines), sep="\n", file=sys.stderr, flush=True)
        return code
    if code:
        if not world.is_root:
            time.sleep(0.5)  # ranks that fail apart, later than all_failed waits: rank 0's line first
        print(*lines, sep="\n", file=sys.stderr, flush=True)
        world.abort(code)
    return code


def _main(argv=None, who="", say=None, state=None, world=None):
    """main's work; ``who`` prefixes an error line met after the command line was parsed (a
    rank under MPI), ``say`` prints it (default: to stderr); ``state["parsed"]`` is set once
    the command line is; under a ``world`` of several ranks the commands other than train run
    on rank 0 only."""
    say = say or (lambda line: print(line, file=sys.stderr))
    state = {} if state is None else state

    def error(message, code):
        say(f"numbacnn: error: {who if state.get('parsed') else ''}{message}")
        return code

    try:
        args = build_parser().parse_args(argv)
        state["parsed"] = True
        if world is not None and not world.is_root and args.func is not cmd_train:
            return 0  # evaluate, predict, export, summary: rank 0's work
        return args.func(args)
    except ConfigError as e:
        return error(e, 2)
    except CheckpointError as e:
        return error(f"bad checkpoint: {e}", 1)
    except DirectoryInUse as e:
        return error(e, 2)
    except DeviceUnavailable as e:
        return error(e, 2)
    except (MNISTNotFoundError, MNISTIntegrityError, TrainingDiverged, DataError) as e:
        return error(e, 1)
    except OSError as e:  # the machine's, not the user's: a full disk, a lost mount (files stay whole)
        where = f": {e.filename}" if e.filename else ""
        return error(f"{e.strerror or e}{where}", 1)
    except BaseException as e:
        if not caused_by_ctrl_c(e):  # a Ctrl-C (or SIGTERM) may come wrapped by the code it hit
            raise
        # fit() already said where the last complete checkpoint is
        say("numbacnn: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
