"""Batch-wise data augmentation on (N, C, H, W) arrays, vectorised NumPy.

These are data preparation, not kernels: each function draws one random parameter per
sample from the `rng` it is given (a ``numpy.random.Generator``) and applies all of them
with one fancy-indexing gather, never a Python loop over samples. Outputs are new
arrays with the input's shape and dtype; inputs are never modified.

``fill`` is the value that enters from outside the image (a number, or one per channel).
It defaults to 0, the
background of raw [0, 1] images. For MNIST that was already normalised by
`numbacnn.data.mnist.preprocess`, the background is ``(0 - 0.1307) / 0.3081 = -0.4242``;
pass ``fill=numbacnn.data.mnist.BACKGROUND`` to keep borders consistent.

Transforms compose as callables ``t(x, rng=rng)``; `Compose` chains them, and
`numbacnn.data.loader.DataLoader` calls its ``transform`` the same way.
"""

import numpy as np

from .._checks import check_int, check_number

__all__ = [
    "shift",
    "random_crop",
    "random_hflip",
    "random_translate",
    "Compose",
    "RandomCrop",
    "RandomHFlip",
    "RandomTranslate",
]


def _check_batch(x, name):
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name}: x must be (N, C, H, W), got shape {x.shape}")
    return x


def _check_fill(name, fill):
    """The border value: a finite real number, or a tuple of them, one per channel (as
    torchvision's fill); None or a string would fill NaN or fail late."""
    if isinstance(fill, (tuple, list)):
        if not fill:
            raise ValueError(f"{name}: fill must be a number or one number per channel, got {fill!r}")
        return tuple(check_number(name, "fill", f, finite=True) for f in fill)
    return check_number(name, "fill", fill, finite=True)


def _check_rng(name, rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_offsets(name, which, value, n):
    """An int or an int array of shape (N,): the per-sample offsets of `shift`."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu" or a.shape not in ((), (n,)):
        raise TypeError(f"{name}: {which} must be an int or an int array of shape ({n},), got {value!r}")
    return np.broadcast_to(a.astype(np.int64), (n,))


def _crop_from_padded(x, pad, oy, ox, fill):
    """out[n, c, i, j] = xp[n, c, oy[n] + i, ox[n] + j], xp = x padded by `pad` with `fill`.

    x (N, C, H, W); oy, ox int arrays (N,) with 0 <= o <= 2*pad -> out (N, C, H, W).
    """
    n, c, h, w = x.shape
    if isinstance(fill, tuple) and len(fill) != c:
        raise ValueError(
            f"fill has {len(fill)} values (one per channel) but x.shape={x.shape} has {c} channels"
        )
    if pad == 0:
        return x.copy()
    xp = np.empty((n, c, h + 2 * pad, w + 2 * pad), x.dtype)  # (N, C, H + 2 pad, W + 2 pad)
    xp[...] = np.asarray(fill, x.dtype).reshape(1, -1, 1, 1)  # per channel, or one value
    xp[:, :, pad : pad + h, pad : pad + w] = x
    rows = oy[:, None] + np.arange(h)  # (N, H)
    cols = ox[:, None] + np.arange(w)  # (N, W)
    return xp[
        np.arange(n)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (N, C, H, W)


def shift(x, dy, dx, fill=0.0):
    """Deterministic integer translation: content moves down by `dy` and right by `dx`.

    x (N, C, H, W); dy, dx ints or int arrays (N,) (negative = up / left) -> (N, C, H, W)
    with ``out[n, c, i, j] = x[n, c, i - dy[n], j - dx[n]]`` where that index is inside
    the image, else `fill`.
    """
    x = _check_batch(x, "shift")
    n = x.shape[0]
    dy, dx = _check_offsets("shift", "dy", dy, n), _check_offsets("shift", "dx", dx, n)
    fill = _check_fill("shift", fill)
    m = int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))
    # padded index of x[i - dy] is (i - dy) + m, so the crop offset is m - dy
    return _crop_from_padded(x, m, m - dy, m - dx, fill)


def random_crop(x, padding, rng, fill=0.0):
    """Pad each image by `padding` on every side with `fill`, then crop a random HxW window.

    x (N, C, H, W) -> (N, C, H, W); offsets (oy, ox) are drawn per sample, uniformly in
    [0, 2*padding]. ``padding=0`` is the identity (a copy). This is the classic
    "RandomCrop(size, padding)" and is distributed like ``random_translate(x, padding)``.
    """
    x = _check_batch(x, "random_crop")
    padding = check_int("random_crop", "padding", padding, minimum=0)
    rng, fill = _check_rng("random_crop", rng), _check_fill("random_crop", fill)
    n = x.shape[0]
    o = rng.integers(0, 2 * padding + 1, size=(2, n))  # (2, N)
    return _crop_from_padded(x, padding, o[0], o[1], fill)


def random_hflip(x, rng, p=0.5):
    """Mirror each image left-right with probability `p` (drawn per sample).

    x (N, C, H, W) -> (N, C, H, W).
    """
    x = _check_batch(x, "random_hflip")
    p = check_number("random_hflip", "p", p, minimum=0.0, maximum=1.0)
    rng = _check_rng("random_hflip", rng)
    flip = rng.random(x.shape[0]) < p  # (N,) bool
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]
    return out


def random_translate(x, max_shift, rng, fill=0.0):
    """Shift each image by integers (dy, dx), each uniform in [-max_shift, max_shift],
    filling the uncovered border with `fill`.

    x (N, C, H, W) -> (N, C, H, W); see `shift` for the exact semantics.
    Draws ``rng.integers(-max_shift, max_shift + 1, size=(2, N))`` -> rows (dy, dx).
    """
    x = _check_batch(x, "random_translate")
    max_shift = check_int("random_translate", "max_shift", max_shift, minimum=0)
    rng = _check_rng("random_translate", rng)
    d = rng.integers(-max_shift, max_shift + 1, size=(2, x.shape[0]))  # (2, N)
    return shift(x, d[0], d[1], fill=fill)


class Compose:
    """Chain transforms: ``Compose([t1, t2])(x, rng=rng) == t2(t1(x, rng=rng), rng=rng)``.

    Each transform is a callable ``t(x, rng=rng)`` -- e.g. `RandomCrop(2)`, or
    ``functools.partial(random_crop, padding=2)``.
    """

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")

    def __call__(self, x, rng):
        for t in self.transforms:
            x = t(x, rng=rng)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class RandomCrop:
    """Callable form of `random_crop` for `Compose` / `DataLoader(transform=...)`."""

    def __init__(self, padding, fill=0.0):
        self.padding = check_int("RandomCrop", "padding", padding, minimum=0)
        self.fill = _check_fill("RandomCrop", fill)

    def __call__(self, x, rng):
        return random_crop(x, self.padding, rng, fill=self.fill)

    def __repr__(self):
        return f"RandomCrop(padding={self.padding}, fill={self.fill})"


class RandomHFlip:
    """Callable form of `random_hflip`. (Not for digits: a mirrored 2 is not a 2.)"""

    def __init__(self, p=0.5):
        self.p = check_number("RandomHFlip", "p", p, minimum=0.0, maximum=1.0)

    def __call__(self, x, rng):
        return random_hflip(x, rng, p=self.p)

    def __repr__(self):
        return f"RandomHFlip(p={self.p})"


class RandomTranslate:
    """Callable form of `random_translate`."""

    def __init__(self, max_shift, fill=0.0):
        self.max_shift = check_int("RandomTranslate", "max_shift", max_shift, minimum=0)
        self.fill = _check_fill("RandomTranslate", fill)

    def __call__(self, x, rng):
        return random_translate(x, self.max_shift, rng, fill=self.fill)

    def __repr__(self):
        return f"RandomTranslate(max_shift={self.max_shift}, fill={self.fill})"
