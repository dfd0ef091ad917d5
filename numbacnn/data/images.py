"""Your own images: torchvision's ImageFolder layout, read with Pillow.

    PATH/<class name>/<image>.png          one subfolder per class (sorted names -> labels 0..K-1)
    PATH/train/<class>/...  PATH/test/<class>/...   optional: a split of your own (the test
                                                    folder may be named val, valid, validation)

``scan_folder(path)`` lists the images (no pixels read), ``read_image(file, channels,
size)`` reads one as float32 (C, H, W) in [0, 1], converted to ``channels`` (1: Pillow's
"L", ITU-R 601 luma; 3: "RGB", alpha dropped) and resized to ``size`` (H, W) with Pillow's
bilinear filter when its size differs. Image files are those with a suffix in
IMAGE_SUFFIXES (case-insensitive), found recursively in each class folder as torchvision
does; other files (notes, .DS_Store) are skipped, as are hidden folders.

Every problem is a DataError (a ValueError) naming the file or folder: an unreadable or
truncated image, a class folder with no images, a PATH with no class folders, a test
class the training split does not have.
"""

import os
import warnings
from typing import NamedTuple

import numpy as np

__all__ = ["DataError", "ImageFolder", "scan_folder", "read_image", "image_info", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
TEST_FOLDERS = ("test", "val", "valid", "validation")  # PATH/train beside one of these: a split
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L")


class DataError(ValueError):
    """A dataset that cannot be used as it is: the message names the file or folder."""


class ImageFolder(NamedTuple):
    """What ``scan_folder`` found: the class names (label = index) and (file, label) lists;
    ``test`` is None when PATH has no train/test split of its own."""

    root: str
    classes: list
    train: list
    test: list | None


def _is_image(name):
    return name.lower().endswith(IMAGE_SUFFIXES)


def _class_images(folder):
    """Sorted image files under ``folder`` (recursively, hidden folders skipped; a linked
    folder is followed once, so a link back up the tree cannot loop)."""
    files, seen = [], {os.path.realpath(folder)}
    for here, dirs, names in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(here, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        files.extend(
            os.path.join(here, n)
            for n in sorted(names)
            if _is_image(n) and not n.startswith(".") and os.path.isfile(os.path.join(here, n))  # no FIFOs
        )
    return files


def _class_folders(root):
    try:
        entries = sorted(os.listdir(root))
    except OSError as e:
        raise DataError(f"cannot read the image folder {root}: {e.strerror}") from None
    return [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]


def _scan_split(root, classes=None):
    """[(file, label)] of one split; ``classes`` fixes the labels (a test split)."""
    found = _class_folders(root)
    if not found:
        raise DataError(
            f"{root} has no class folders: expected {os.path.join(root, '<class>', '<image>.png')} "
            "(torchvision's ImageFolder layout: one subfolder of images per class)"
        )
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DataError(
                f"{os.path.join(root, unknown[0])}: class {unknown[0]!r} is not one of the training classes "
                f"{classes}"
            )
    samples, owner = [], {}
    for c in found:
        files = _class_images(os.path.join(root, c))
        if not files:
            raise DataError(
                f"{os.path.join(root, c)}: class folder with no images "
                f"(looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        for f in files:
            real = os.path.realpath(f)
            if real in owner:
                raise DataError(f"{f} is the same file as {owner[real]}: an image can be in one class only")
            owner[real] = f
            samples.append((f, classes.index(c)))
    return classes, samples


def scan_folder(path):
    """The ImageFolder at ``path``: PATH/train and PATH/test (or val, valid, validation)
    when both are folders (the test split's classes must be training classes), else PATH's
    class folders (split later). Raises DataError naming what is wrong (see the module
    docstring)."""
    root = os.fspath(path)
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a folder of images (expected PATH/<class>/<image>.png)")
    train_dir = os.path.join(root, "train")
    tests = [os.path.join(root, t) for t in TEST_FOLDERS if os.path.isdir(os.path.join(root, t))]
    if os.path.isdir(train_dir) and tests:
        if len(tests) > 1:
            raise DataError(f"{root} has {len(tests)} test splits ({', '.join(tests)}): keep one")
        classes, train = _scan_split(train_dir)
        _, test = _scan_split(tests[0], classes)
        return ImageFolder(root, classes, train, test)
    classes, train = _scan_split(root)
    return ImageFolder(root, classes, train, None)


def _open_errors():
    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
            ValueError, SyntaxError)  # fmt: skip


class _Strict:
    """Pillow's DecompressionBombWarning (an image over its pixel limit, under twice it) as
    an error, like the DecompressionBombError above twice the limit."""

    def __enter__(self):
        from PIL import Image

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def image_info(file):
    """(mode, (H, W)) of an image file from its header (no pixels decoded). DataError names
    a file Pillow cannot identify (or one so large Pillow refuses it as a decompression
    bomb)."""
    from PIL import Image

    try:
        with open(file, "rb") as fh, _Strict(), Image.open(fh) as im:
            return im.mode, (im.height, im.width)
    except DataError:
        raise
    except _open_errors() as e:
        raise DataError(f"{file}: not a readable image ({type(e).__name__}: {e})") from None


def is_gray(mode):
    """Whether Pillow's image ``mode`` has one channel of gray (palette images are colour)."""
    return mode in _GRAY_MODES


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def read_image(file, channels, size=None):
    """Image ``file`` as float32 (channels, H, W) in [0, 1]: converted to 1 or 3 channels,
    resized to ``size`` = (H, W) (bilinear) when given and different. 8-bit images are
    scaled by 1/255, 16-bit gray images (PNG, TIFF, PGM) by 1/65535 (not clipped to 8
    bits); 32-bit float images and integer ones beyond 16 bits have no fixed range and are
    refused. DataError names a file that cannot be
    decoded (unreadable, truncated, a decompression bomb) or used."""
    from PIL import Image

    try:
        with open(file, "rb") as fh, _Strict(), Image.open(fh) as im:
            if im.mode == "F" or (im.mode == "I" and not 0 <= int(np.min(im)) <= int(np.max(im)) <= 65535):
                raise DataError(
                    f"{file}: a 32-bit {'integer' if im.mode == 'I' else 'float'} image has no fixed "
                    "range; save it with 8 or 16 bits per channel"
                )
            if im.mode in _SIXTEEN_BIT or im.mode == "I":  # 16 bits (a 16-bit PGM opens as "I")
                gray = np.asarray(im, dtype=np.float32) / np.float32(65535.0)
                im = Image.fromarray(gray, mode="F")
                if size is not None and (im.height, im.width) != tuple(size):
                    im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                x = np.asarray(im, dtype=np.float32)[None]  # (1, H, W)
                return np.repeat(x, channels, axis=0) if channels == 3 else x
            im = im.convert("L" if channels == 1 else "RGB")  # decodes every pixel
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except _open_errors() as e:
        raise DataError(f"{file}: not a readable image ({type(e).__name__}: {e})") from None
    x = pixels.reshape(pixels.shape[0], pixels.shape[1], channels).transpose(2, 0, 1)  # (C, H, W)
    return x.astype(np.float32) / np.float32(255.0)
