"""Data: real MNIST (package CSV, verified download, atomic cache), a seeded DataLoader,
and vectorised batch augmentations.

    from numbacnn.data import load_mnist, preprocess, DataLoader
    d = load_mnist()                                  # uint8 images, int64 labels
    x = preprocess(d["x_train"], pad=2)               # float32 (60000, 1, 32, 32)
    loader = DataLoader(x, d["y_train"], 64, shuffle=True, seed=0)
"""

from .augment import (
    Compose,
    RandomCrop,
    RandomHFlip,
    RandomTranslate,
    random_crop,
    random_hflip,
    random_translate,
    shift,
)
from .loader import DataLoader, DeviceLoader
from .mnist import MNISTIntegrityError, MNISTNotFoundError, load_mnist, preprocess

__all__ = [
    "load_mnist",
    "preprocess",
    "MNISTNotFoundError",
    "MNISTIntegrityError",
    "DataLoader",
    "DeviceLoader",
    "Compose",
    "RandomCrop",
    "RandomHFlip",
    "RandomTranslate",
    "random_crop",
    "random_hflip",
    "random_translate",
    "shift",
]
