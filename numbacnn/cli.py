"""The ``numbacnn`` command line: train | evaluate | summary.

    numbacnn train --model lenet5 --dataset mnist --epochs 3 --batch-size 64 --lr 0.05 \\
                   --momentum 0.9 --out runs/lenet5
    numbacnn train ... --out runs/lenet5 --epochs 5 --resume     # continue to 5 epochs
    numbacnn evaluate --checkpoint runs/lenet5/checkpoint.npz
    numbacnn summary lenet5 --input-shape 1 32 32

User mistakes (unknown model, missing data, a bad checkpoint) print one ``numbacnn: error:``
message and exit with status 2 (usage) or 1 (everything else); Ctrl-C during training
keeps the last complete checkpoint and exits with 130.
"""
import argparse
import json
import os
import sys

__all__ = ["main", "build_parser", "input_pad", "load_dataset", "make_transform"]

AUGMENTS = ("none", "crop", "flip", "translate")
DATASETS = ("mnist",)
# Models whose architecture expects 32x32 inputs: MNIST's 28x28 is zero-padded by 2.
_PAD2_MODELS = {"lenet5", "resnet_cifar", "vgg_small", "resnet18", "resnet34", "resnet50"}
# Per-image input side used by `numbacnn summary` when --input-shape is not given.
_SUMMARY_SIDE = {"alexnet": 224, "vgg11": 224, "vgg13": 224, "vgg16": 224, "vgg19": 224,
                 "resnet18": 224, "resnet34": 224, "resnet50": 224}


class UserError(Exception):
    """A mistake on the command line: printed as one line, no traceback."""


# --------------------------------------------------------------------------- helpers
def input_pad(model_name, dataset="mnist"):
    """Padding of MNIST's 28x28 images for ``model_name``: 2 (-> 32x32) for the models built
    for 32x32 input, else 0. A model module may declare ``INPUT_SIZE``/``input_size``."""
    try:
        from . import models
        size = getattr(models, "INPUT_SIZES", {}).get(model_name)
    except ImportError:
        size = None
    if size is not None:
        size = size[-1] if isinstance(size, (tuple, list)) else size
        return max(0, (int(size) - 28) // 2)
    return 2 if model_name in _PAD2_MODELS else 0


def load_dataset(dataset="mnist", pad=2, cache_dir=None, download=False, limit_train=None,
                 limit_test=None):
    """(x_train, y_train, x_test, y_test): float32 NCHW normalised images, int64 labels;
    the first ``limit_train`` / ``limit_test`` samples when given."""
    if dataset != "mnist":
        raise UserError(f"unknown dataset {dataset!r} (choose from: {', '.join(DATASETS)})")
    from .data import mnist
    d = mnist.load_mnist(cache_dir=cache_dir, download=download)
    xtr, ytr, xte, yte = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    if limit_train:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    if limit_test:
        xte, yte = xte[:limit_test], yte[:limit_test]
    return mnist.preprocess(xtr, pad=pad), ytr, mnist.preprocess(xte, pad=pad), yte


def make_transform(names, fill=None):
    """The batch transform for ``--augment`` names (None for no augmentation):
    crop = random crop with 2 px zero(background) padding, translate = random shift of up
    to 2 px, flip = random horizontal flip."""
    from .data import augment
    if fill is None:
        from .data.mnist import BACKGROUND as fill
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
            raise UserError(f"unknown augmentation {name!r} (choose from: {', '.join(AUGMENTS)})")
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else augment.Compose(steps)


def _build_model(name, num_classes=10, in_channels=1):
    from . import models
    if name not in models.MODELS:
        raise UserError(f"unknown model {name!r} (choose from: {', '.join(sorted(models.MODELS))})")
    return models.build_model(name, num_classes=num_classes, in_channels=in_channels)


def _split_augment(values):
    names = []
    for v in values or ["none"]:
        names.extend(n.strip() for n in v.split(",") if n.strip())
    for n in names:
        if n not in AUGMENTS:
            raise UserError(f"unknown augmentation {n!r} (choose from: {', '.join(AUGMENTS)})")
    return [n for n in names if n != "none"] or ["none"]


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}")
    return v


# --------------------------------------------------------------------------- commands
def cmd_train(args):
    from . import random as nrandom
    from .checkpoint import load as load_checkpoint
    from .data import DataLoader
    from .optim import SGD, build_schedule
    from .train import CHECKPOINT_NAME, fit

    augment = _split_augment(args.augment)
    ckpt_path = os.path.join(args.out, CHECKPOINT_NAME)
    if args.resume:
        if not os.path.exists(ckpt_path):
            raise UserError(f"cannot resume: no checkpoint at {ckpt_path} "
                            "(run without --resume to start)")
        old = load_checkpoint(ckpt_path).meta.get("config", {})
        for key in ("model", "dataset"):
            if key in old and old[key] != getattr(args, key):
                raise UserError(f"cannot resume: {ckpt_path} was trained with --{key} {old[key]}, "
                                f"not --{key} {getattr(args, key)}")
    elif os.path.exists(ckpt_path) and not args.overwrite:
        raise UserError(f"{ckpt_path} already exists: pass --resume to continue that run, "
                        "--overwrite to start over, or choose another --out")

    nrandom.seed(args.seed)
    model = _build_model(args.model)
    pad = input_pad(args.model, args.dataset)
    side = 28 + 2 * pad
    try:
        model.output_shape((1, 1, side, side))
    except ValueError as e:
        raise UserError(f"{args.model} cannot take {args.dataset}'s {side}x{side} images "
                        f"({e}); use a 32x32 model such as lenet5, vgg_small or resnet_cifar") from None
    xtr, ytr, xte, yte = load_dataset(args.dataset, pad, args.cache_dir, args.download,
                                      args.limit_train, args.limit_test)
    train_loader = DataLoader(xtr, ytr, args.batch_size, shuffle=True, seed=args.seed,
                              transform=make_transform(augment))
    test_loader = DataLoader(xte, yte, args.eval_batch_size)
    try:
        optimizer = SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay, nesterov=args.nesterov)
        schedule = build_schedule(args.schedule, optimizer, args.epochs,
                                  step_size=args.step_size, gamma=args.gamma)
    except ValueError as e:
        raise UserError(str(e)) from None

    config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    config.update(augment=augment, pad=pad, input_shape=list(xtr.shape[1:]))
    print(f"training {args.model} on {args.dataset}: {len(xtr)} train / {len(xte)} test images "
          f"of shape {tuple(xtr.shape[1:])}, {args.epochs} epochs, batch {args.batch_size}, "
          f"out {args.out}", file=sys.stderr, flush=True)
    metrics = fit(model, optimizer, train_loader, test_loader, args.epochs, args.out,
                  schedule=schedule, resume=args.resume, config=config,
                  progress=args.progress)
    if metrics:
        last = metrics[-1]
        print(f"final test accuracy {100 * last['test_accuracy']:.2f}% "
              f"(loss {last['test_loss']:.4f}) after {last['epoch']} epochs; "
              f"outputs in {args.out}")
    return 0


def cmd_evaluate(args):
    from .checkpoint import CheckpointError, load, load_model_state
    from .data import DataLoader
    from .train import evaluate

    ck = load(args.checkpoint)
    config = ck.meta.get("config", {})
    model_name = args.model or config.get("model")
    if not model_name:
        raise UserError(f"{args.checkpoint} does not say which model it holds; pass --model")
    dataset = config.get("dataset", "mnist")
    model = _build_model(model_name)
    try:
        load_model_state(model, ck.model_state)
    except CheckpointError as e:
        raise CheckpointError(f"{args.checkpoint} ({model_name}): {e}") from None
    pad = config.get("pad", input_pad(model_name, dataset))
    _, _, xte, yte = load_dataset(dataset, pad, args.cache_dir, args.download,
                                  limit_train=1, limit_test=args.limit_test)
    loss, acc = evaluate(model, DataLoader(xte, yte, args.batch_size))
    result = {"model": model_name, "checkpoint": args.checkpoint, "epoch": ck.meta.get("epoch"),
              "test_images": int(len(yte)), "test_loss": loss, "test_accuracy": acc}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{model_name} ({args.checkpoint}, epoch {result['epoch']}): "
              f"test accuracy {100 * acc:.2f}% ({int(round(acc * len(yte)))}/{len(yte)}), "
              f"test loss {loss:.4f}")
    return 0


def cmd_summary(args):
    model = _build_model(args.model, num_classes=args.num_classes,
                         in_channels=args.input_shape[0] if args.input_shape else 1)
    if args.input_shape:
        shape = tuple(args.input_shape)
    else:
        side = _SUMMARY_SIDE.get(args.model, 28 + 2 * input_pad(args.model))
        shape = (1, side, side)
    try:
        model.summary(shape)
    except ValueError as e:
        raise UserError(f"{args.model} does not accept input shape {shape}: {e}") from None
    return 0


# --------------------------------------------------------------------------- parser
def build_parser():
    p = argparse.ArgumentParser(prog="numbacnn", description="numbacnn: train, evaluate and inspect CNNs whose kernels are explicit Numba loop nests.")
    sub = p.add_subparsers(dest="command", metavar="{train,evaluate,summary}")
    sub.required = True

    t = sub.add_parser("train", help="train a model; writes checkpoint, metrics and curves",
                       description="Train a model with SGD; writes OUT/checkpoint.npz, "
                                   "OUT/metrics.json and OUT/curves.png after every epoch.")
    t.add_argument("--model", default="lenet5", help="model name (default: lenet5)")
    t.add_argument("--dataset", default="mnist", choices=DATASETS)
    t.add_argument("--epochs", type=_positive_int, default=3)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--eval-batch-size", type=_positive_int, default=1000)
    t.add_argument("--lr", type=_nonneg_float, default=0.05)
    t.add_argument("--momentum", type=_nonneg_float, default=0.9)
    t.add_argument("--weight-decay", type=_nonneg_float, default=0.0)
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    t.add_argument("--schedule", choices=("none", "step", "cosine"), default="cosine",
                   help="learning-rate schedule per epoch (default: cosine, from --lr at "
                        "epoch 1 towards 0 at the end of --epochs; none keeps --lr constant)")
    t.add_argument("--step-size", type=_positive_int, default=None,
                   help="epochs per decay for --schedule step (default: epochs // 3)")
    t.add_argument("--gamma", type=_nonneg_float, default=0.1,
                   help="decay factor for --schedule step (default: 0.1)")
    t.add_argument("--augment", nargs="+", default=["none"], metavar="AUG",
                   help=f"augmentations, any of {', '.join(AUGMENTS)} (space or comma separated)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="output directory (default: runs/MODEL)")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.npz up to --epochs epochs in total")
    t.add_argument("--overwrite", action="store_true",
                   help="start over even if OUT/checkpoint.npz exists")
    t.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick runs)")
    t.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="use only the first N test images")
    t.add_argument("--cache-dir", default=None, help="MNIST cache directory")
    t.add_argument("--download", action="store_true", help="download MNIST if not found")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="test accuracy/loss of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="path to a checkpoint.npz")
    e.add_argument("--model", default=None, help="model name (default: from the checkpoint)")
    e.add_argument("--batch-size", type=_positive_int, default=1000)
    e.add_argument("--limit-test", type=_positive_int, default=None, metavar="N")
    e.add_argument("--cache-dir", default=None)
    e.add_argument("--download", action="store_true")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("summary", help="print a model's layer table")
    s.add_argument("model", help="model name")
    s.add_argument("--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"),
                   default=None, help="per-image input shape (default: 1 32 32 or 1 28 28)")
    s.add_argument("--num-classes", type=_positive_int, default=10)
    s.set_defaults(func=cmd_summary)
    return p


def main(argv=None):
    """Entry point of the ``numbacnn`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "train" and args.out is None:
        args.out = os.path.join("runs", args.model)

    from .checkpoint import CheckpointError
    try:
        from .data.mnist import MNISTIntegrityError, MNISTNotFoundError
        data_errors = (MNISTNotFoundError, MNISTIntegrityError)
    except ImportError:  # pragma: no cover - data package missing
        data_errors = ()
    try:
        return args.func(args)
    except UserError as e:
        print(f"numbacnn: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"numbacnn: error: bad checkpoint: {e}", file=sys.stderr)
        return 1
    except data_errors as e:
        print(f"numbacnn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # fit() already said where the last complete checkpoint is
        print("numbacnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
