"""Where a training run's images come from, and how they become a model's input.

    open_source(spec, ...) -> Source      spec: "mnist", "folder:PATH" or "npz:FILE"
    source.load(size, limit_train, limit_test) -> (x_train, y_train, x_test, y_test)
    channel_stats(x) -> (mean, std);  normalize(x, pad, mean, std) -> model input

A Source knows, before any pixel is read, its class names, channels, image size (when all
images share one), and split sizes; ``load`` reads the pixels: float32 (N, C, H, W) in
[0, 1] (MNIST: uint8, as stored), int64 labels.

    mnist         the real MNIST (numbacnn.data.mnist), its own 60k/10k split
    folder:PATH   torchvision's ImageFolder layout (numbacnn.data.images): PATH/train and
                  PATH/test when present, else ``test_split`` of each class's images (at
                  least one when the class has two or more) set aside as the test split
    npz:FILE      arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,) integer labels;
                  optional ``x_test``/``y_test`` (else ``test_split`` is set aside) and
                  ``classes`` (names); uint8 pixels are scaled by 1/255, floats must be in
                  [0, 1] (the units image files are read in, so predict sees the same)

Splits never depend on the run's --seed, nor on images added later: an image is a test
image when a hash (BLAKE2b) of its key, its path inside the folder or its row in the npz, is
below ``test_split`` (a class keeps at least one training image; a small class, of about
1 / test_split images or fewer, may have no test image), so adding images never moves a
test image into training. Each split is then put in a
fixed order given by another hash, so ``limit_train`` / ``limit_test`` (the first N) see
every class.

Normalisation (torchvision's Normalize): ``(x - mean[c]) / std[c]`` per channel, with mean
and std computed on the training split (MNIST: its canonical 0.1307 / 0.3081), after zero
padding, so the border equals the normalised black background (numbacnn.data.mnist.preprocess
does the same).

Bad data raises DataError (a ValueError) naming the file: numbacnn.data.images for folders;
for npz a missing array, mismatched lengths, non-finite pixels, labels out of range.
"""

import hashlib
import os

import numpy as np

from . import mnist
from .images import DataError, image_info, is_gray, read_image, scan_folder

__all__ = ["Source", "open_source", "channel_stats", "normalize", "DataError", "KINDS"]

KINDS = ("mnist", "folder", "npz")
SPLIT_SEED = 0


def parse_spec(spec):
    """("mnist", None), ("folder", PATH) or ("npz", FILE); ValueError for anything else."""
    if spec == "mnist":
        return "mnist", None
    kind, sep, path = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or kind not in ("folder", "npz") or not path:
        raise ValueError(f"unknown dataset {spec!r} (choose from: mnist, folder:PATH, npz:FILE)")
    return kind, path


def _unit_hash(key, salt=""):
    """A number in [0, 1) that is a fixed function of the string ``key`` (BLAKE2b)."""
    digest = hashlib.blake2b(f"{salt}{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _split(labels, keys, test_split, num_classes):
    """(train indices, test indices): an image goes to test when the hash of its key (its
    path in the folder, its row in the npz) is below ``test_split``, so adding images never
    moves a test image into training; a class keeps at least one training image (a small
    class may have no test image). Each split is in a fixed order given by another hash."""
    u = np.array([_unit_hash(k) for k in keys])
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        into_test = u[idx] < test_split
        if into_test.all():  # a class keeps one training image (the others may come back to test)
            into_test[np.argmax(u[idx])] = False
        test.extend(idx[into_test])
        train.extend(idx[~into_test])
    order = [_unit_hash(k, "order:") for k in keys]
    return (np.array(sorted(train, key=order.__getitem__), np.int64),
            np.array(sorted(test, key=order.__getitem__), np.int64))  # fmt: skip


class Source:
    """A dataset's facts (``classes``, ``channels``, ``size`` (H, W) or None when the images
    differ, ``n_train``, ``n_test``, ``kind``, ``path``) and ``load``."""

    def __init__(self, kind, path, classes, channels, size, n_train, n_test, loader):
        self.kind, self.path, self.classes, self.channels = kind, path, list(classes), channels
        self.size, self.n_train, self.n_test, self._loader = size, n_train, n_test, loader
        self.mismatch = None  # folders: why the images cannot be used at their own size

    @property
    def num_classes(self):
        return len(self.classes)

    def load(self, size=None, limit_train=None, limit_test=None):
        """(x_train, y_train, x_test, y_test), the first ``limit_*`` images of each split;
        folder images resized to ``size`` (H, W) when given (else they must share one size:
        DataError naming two files that differ)."""
        return self._loader(size, limit_train, limit_test)

    def __repr__(self):
        where = f"{self.kind}:{self.path}" if self.path else self.kind
        return (f"Source({where}, {self.num_classes} classes, {self.channels} channel(s), size {self.size}, "
                f"{self.n_train} train / {self.n_test} test)")  # fmt: skip


def _mnist_source(cache_dir, download):
    def load(size, limit_train, limit_test):
        d = mnist.load_mnist(cache_dir=cache_dir, download=download)
        xtr, ytr, xte, yte = d["x_train"][:, None], d["y_train"], d["x_test"][:, None], d["y_test"]
        return xtr[:limit_train], ytr[:limit_train], xte[:limit_test], yte[:limit_test]

    n_train, n_test = 60000, 10000
    return Source("mnist", None, [str(d) for d in range(10)], 1, (28, 28), n_train, n_test, load)


def _folder_source(path, test_split, channels=None, training=True):
    folder = scan_folder(path)
    if len(folder.classes) < 2 and training:
        only = folder.classes[0]
        hint = " (PATH/train is a split only beside PATH/test)" if only in ("train", "test") else ""
        raise DataError(
            f"{path} has one class folder, {only!r}: a classifier needs two classes or more{hint}"
        )
    files = folder.train + (folder.test or [])
    infos = [image_info(f) for f, _ in files]  # every header: an unreadable file is found now
    if channels is None:
        channels = 1 if all(is_gray(mode) for mode, _ in infos) else 3
    sizes = {s for _, s in infos}
    uniform = next(iter(sizes)) if len(sizes) == 1 else None
    if folder.test is None:
        labels = np.array([label for _, label in folder.train], np.int64)
        keys = [os.path.relpath(f, folder.root) for f, _ in folder.train]
        tr, te = _split(labels, keys, test_split, len(folder.classes))
        train, test = [folder.train[i] for i in tr], [folder.train[i] for i in te]
    else:

        def order(samples):
            return sorted(samples, key=lambda s: _unit_hash(os.path.relpath(s[0], folder.root), "order:"))

        train, test = order(folder.train), order(folder.test)
    first_file, first_size = files[0][0], infos[0][1]
    sizes_of = ((f, size) for (f, _), (_, size) in zip(files, infos, strict=True))
    odd = next(((f, size) for f, size in sizes_of if size != first_size), None)
    mismatch = None
    if odd is not None:
        (h0, w0), (h, w) = first_size, odd[1]
        mismatch = (
            f"{odd[0]} is {h}x{w} but {first_file} is {h0}x{w0}: with resizing off the images must "
            "share one size (leave --resize on to resize them to the model's side)"
        )

    def read(samples, size):
        if size is None:
            if mismatch:
                raise DataError(mismatch)
            size = uniform
        x = np.empty((len(samples), channels, *size), np.float32)
        for i, (f, _) in enumerate(samples):
            x[i] = read_image(f, channels, size)
        return x, np.array([label for _, label in samples], np.int64)

    def load(size, limit_train, limit_test):
        xtr, ytr = read(train[:limit_train], size)
        xte, yte = read(test[:limit_test], size)
        return xtr, ytr, xte, yte

    source = Source("folder", path, folder.classes, channels, uniform, len(train), len(test), load)
    source.mismatch = mismatch
    return source


def _some(values, at_most=5):
    shown = ", ".join(map(str, values[:at_most]))
    return shown + (f" and {len(values) - at_most} more" if len(values) > at_most else "")


def _npz_source(path, test_split, training=True):
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected an .npz with arrays x and y)")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception:  # not a zip archive: text, a pickle (refused), truncated
        raise DataError(f"{path}: not an .npz archive of plain arrays (np.savez writes one)") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive with arrays x and y (np.savez)")
    try:
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # an object (pickled) member, a truncated member
        raise DataError(f"{path}: not a readable .npz of plain arrays ({type(e).__name__}: {e})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: no array {key!r} (it has: {', '.join(sorted(arrays)) or 'none'})")

    def images(key):
        x = arrays[key]
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.dtype.kind not in "uif" or min(x.shape) == 0:
            raise DataError(
                f"{path}: {key!r} must be (N, C, H, W) or (N, H, W) numbers, got {x.dtype} {x.shape}"
            )
        if x.shape[1] > 4 and x.shape[3] in (1, 3):
            raise DataError(
                f"{path}: {key!r} has shape {x.shape}, which looks channels-last (N, H, W, C): numbacnn "
                f"wants (N, C, H, W) (x.transpose(0, 3, 1, 2))"
            )
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise DataError(f"{path}: {key!r} has NaN or infinite pixels")
        if x.dtype.kind == "f" and (x.min() < 0 or x.max() > 1):
            raise DataError(
                f"{path}: {key!r} has float pixels from {x.min():g} to {x.max():g}; floats must be in "
                "[0, 1], as image files are read (save uint8 pixels, or divide by 255)"
            )
        if x.dtype.kind in "ui" and x.dtype != np.uint8:
            raise DataError(f"{path}: {key!r} has {x.dtype} pixels: numbacnn reads uint8 or floats in [0, 1]")
        if x.shape[1] not in (1, 3):
            raise DataError(
                f"{path}: {key!r} has {x.shape[1]} channels: numbacnn reads gray (1) or RGB (3) images"
            )
        return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)

    def labels(key, n):
        y = arrays[key]
        if y.ndim != 1 or y.dtype.kind not in "ui" or len(y) != n:
            raise DataError(f"{path}: {key!r} must be ({n},) integer labels, got {y.dtype} {y.shape}")
        return y.astype(np.int64)

    x = images("x")
    y = labels("y", len(x))
    if "x_test" in arrays:
        xte = images("x_test")
        yte = labels("y_test", len(xte)) if "y_test" in arrays else None
        if yte is None or xte.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: 'x_test' needs 'y_test' and the per-image shape {x.shape[1:]} of 'x'")
    test_labels = yte if "x_test" in arrays else y[:0]
    present = np.unique(np.concatenate([y, test_labels]))
    if present.size and present[0] < 0:
        raise DataError(f"{path}: labels must be >= 0, got {present[0]}")
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or len(set(names.tolist())) != len(names):
            raise DataError(
                f"{path}: 'classes' must be a 1-D array of distinct names, got shape {names.shape}"
            )
        classes = [str(c) for c in names.tolist()]
        if present[-1] >= len(classes):
            raise DataError(f"{path}: label {present[-1]} but 'classes' names only {len(classes)} classes")
    else:  # labels 0..K-1, each of them used (else a 255 "ignore" label would make 256 classes)
        classes = [str(c) for c in range(int(present[-1]) + 1)]
        if len(present) != len(classes):
            missing = sorted(set(range(len(classes))) - set(present.tolist()))
            raise DataError(
                f"{path}: labels run to {present[-1]} but {_some(missing)} never occur: number the classes "
                "0..K-1, or add a 'classes' array naming all K"
            )
    unseen = sorted(set(test_labels.tolist()) - set(y.tolist()))
    if unseen and training:
        raise DataError(
            f"{path}: 'y_test' has labels {_some(unseen)} that 'y' never has: they cannot be learned"
        )
    if len(np.unique(y)) < 2 and training:
        raise DataError(f"{path}: every label in 'y' is {y[0]}: a classifier needs two classes or more")
    k = len(classes)
    if "x_test" in arrays:
        rng = np.random.default_rng(SPLIT_SEED)
        tr, te = rng.permutation(len(x)), rng.permutation(len(xte))
        xtr, ytr, xte, yte = x[tr], y[tr], xte[te], yte[te]
    else:
        tr, te = _split(y, [str(i) for i in range(len(y))], test_split, k)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]

    def load(size, limit_train, limit_test):
        return xtr[:limit_train], ytr[:limit_train], xte[:limit_test], yte[:limit_test]

    size = tuple(int(s) for s in x.shape[2:])
    return Source("npz", path, classes, x.shape[1], size, len(xtr), len(xte), load)


def open_source(spec, test_split=0.1, cache_dir=None, download=False, channels=None, training=True):
    """The Source ``spec`` names ("mnist", "folder:PATH", "npz:FILE"); folders are scanned
    (every image's header read) and npz files loaded now. channels: read folder images
    with this many channels (1 or 3; default: 1 when all are gray, else 3). training=False
    (evaluation) accepts data of a single class. Raises ValueError for an unknown spec,
    DataError naming the file or folder for bad data."""
    kind, path = parse_spec(spec)
    if kind == "mnist":
        return _mnist_source(cache_dir, download)
    if kind == "folder":
        return _folder_source(path, test_split, channels, training)
    return _npz_source(path, test_split, training)


def channel_stats(x):
    """Per-channel (mean, std) lists of images x (N, C, H, W) (uint8 scaled by 1/255), in
    float64; a constant channel's std is 1 (nothing to scale)."""
    x = np.asarray(x)
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    mean = [float(x[:, c].mean(dtype=np.float64) * scale) for c in range(x.shape[1])]
    std = [float(x[:, c].std(dtype=np.float64) * scale) for c in range(x.shape[1])]
    return mean, [s if s > 0 else 1.0 for s in std]


def normalize(x, pad, mean, std):
    """Images x (N, C, H, W), uint8 or float32 in [0, 1] -> float32 (N, C, H+2*pad,
    W+2*pad): zero-padded by ``pad`` pixels (before normalising: the border is normalised
    black), then ``(x - mean[c]) / std[c]`` per channel in float32 (for MNIST this is
    numbacnn.data.mnist.preprocess, bit for bit)."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    m = np.asarray(mean, np.float32).reshape(1, c, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, c, 1, 1)
    out = np.empty((n, c, h + 2 * pad, w + 2 * pad), np.float32)
    out[...] = (np.float32(0.0) - m) / s
    inner = out[:, :, pad : pad + h, pad : pad + w]
    if x.dtype == np.uint8:
        np.divide(x, np.float32(255.0), out=inner, dtype=np.float32)
    else:
        inner[...] = x
    inner -= m
    inner /= s
    return out
