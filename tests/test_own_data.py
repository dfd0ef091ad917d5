"""Your own data: image folders (torchvision's ImageFolder layout, read with Pillow) and npz
arrays, trained on from the command line; evaluate's confusion matrix; predict on PNGs.
The folders are written by the tests themselves, from real MNIST digits."""

import json
import os
import re

import numpy as np
import pytest
from conftest import needs_mnist
from PIL import Image

from numbacnn.cli import main
from numbacnn.data import mnist
from numbacnn.data.sources import normalize, open_source

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _digits():
    return mnist.load_mnist()


def _write_folder(root, x, y, names=NAMES):
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        os.makedirs(root / names[label], exist_ok=True)
        Image.fromarray(img).save(root / names[label] / f"{i:05d}.png")
    return root


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("numbacnn: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    d = _digits()
    return _write_folder(tmp_path_factory.mktemp("own") / "digits", d["x_train"][:3000], d["y_train"][:3000])


@pytest.fixture(scope="module")
def folder_run(digit_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("own_run") / "run"
    argv = [
        "train",
        "--dataset",
        f"folder:{digit_folder}",
        "--epochs",
        "3",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


@needs_mnist
def test_train_on_an_image_folder(folder_run, digit_folder, capsys):
    """3000 MNIST digits written as PNGs in ten class folders: LeNet-5 trains on them from
    the command line (10% of each class set aside) and reaches at least 85% test accuracy
    in 3 epochs; the checkpoint records the class names and how images were prepared."""
    from numbacnn import checkpoint

    meta = checkpoint.load(folder_run / "checkpoint.npz").meta
    assert meta["metrics"][-1]["test_accuracy"] >= 0.85, meta["metrics"]
    config = meta["config"]
    assert config["classes"] == sorted(NAMES)
    pre = config["preprocess"]
    assert (pre["channels"], pre["size"], pre["pad"]) == (1, [32, 32], 0)  # resized to lenet5's 32
    assert 0.1 < pre["mean"][0] < 0.2 and 0.25 < pre["std"][0] < 0.4  # MNIST-like, from the train split
    n_test = open_source(f"folder:{digit_folder}").n_test
    assert 0.08 * 3000 < n_test < 0.12 * 3000
    assert json.loads((folder_run / "metrics.json").read_text())[-1]["epoch"] == 3
    assert main(["evaluate", "--checkpoint", str(folder_run / "checkpoint.npz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_images"] == n_test
    assert result["test_accuracy"] == pytest.approx(meta["metrics"][-1]["test_accuracy"], abs=1e-12)


@needs_mnist
def test_evaluate_writes_the_confusion_matrix(folder_run, tmp_path, capsys):
    ck = folder_run / "checkpoint.npz"
    assert main(["evaluate", "--checkpoint", str(ck), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "per-class accuracy (images):" in out and "  seven " in out
    doc = json.loads((tmp_path / "confusion.json").read_text())
    m = np.array(doc["matrix"])
    assert doc["classes"] == sorted(NAMES) and m.shape == (10, 10)
    assert m.sum() == doc["test_images"] and np.trace(m) / m.sum() == pytest.approx(doc["test_accuracy"])
    for i, c in enumerate(doc["classes"]):
        assert doc["per_class_accuracy"][c] == pytest.approx(m[i, i] / m[i].sum())
    with Image.open(tmp_path / "confusion.png") as im:
        assert im.size[0] > 300 and im.size[1] > 300


@needs_mnist
def test_predict_prints_the_right_class_first(folder_run, tmp_path, capsys):
    """Test digits (never trained on) saved as PNG: predict names their class first."""
    d = _digits()
    files = []
    for i in range(3):  # a 7, a 2 and a 1
        files.append(str(tmp_path / f"test{i}.png"))
        Image.fromarray(d["x_test"][i]).save(files[-1])
    assert main(["predict", "--checkpoint", str(folder_run / "checkpoint.npz"), *files, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == [NAMES[d["y_test"][i]] for i in range(3)]
    assert all(line.count("%") == 2 for line in lines)


@needs_mnist
def test_predict_on_an_mnist_checkpoint(mnist_run, tmp_path, capsys):
    """A PNG of a test digit, read as a user's file, is classified by an MNIST checkpoint as
    its label (the digit is converted, padded and normalised as MNIST was); --json too."""
    d = _digits()
    files = []
    for i in range(5):
        files.append(str(tmp_path / f"digit{i}.png"))
        Image.fromarray(d["x_test"][i]).save(files[-1])
    ck = str(mnist_run / "checkpoint.npz")
    assert main(["predict", "--checkpoint", ck, *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["top"][0]["class"] for r in rows] == [str(d["y_test"][i]) for i in range(5)]
    assert all(len(r["top"]) == 3 and r["top"][0]["probability"] > 0.5 for r in rows)
    # the same pixels through predict's path and through training's are the same input
    from numbacnn.bridges.weights import read_metadata
    from numbacnn.data.images import read_image

    pre = read_metadata(ck)["preprocess"]
    via_file = normalize(read_image(files[0], 1, pre["size"])[None], pre["pad"], pre["mean"], pre["std"])
    np.testing.assert_array_equal(via_file, mnist.preprocess(d["x_test"][:1], pad=2))


def test_normalize_is_mnist_preprocess_bit_for_bit():
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(normalize(x, 2, [mnist.MEAN], [mnist.STD]), mnist.preprocess(x, pad=2))


@needs_mnist
def test_train_and_test_subfolders_and_no_resize(tmp_path, capsys):
    """PATH/train and PATH/test are used as the split; --no-resize keeps 28 x 28 and pads by
    2 like MNIST; a test class the training split lacks is an error naming the folder."""
    d = _digits()
    root = tmp_path / "split"
    _write_folder(root / "train", d["x_train"][:200], d["y_train"][:200])
    _write_folder(root / "test", d["x_test"][:50], d["y_test"][:50])
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{root}", "--epochs", "1", "--no-resize", "--no-progress", "--out"]
    assert main([*argv, str(out)]) == 0
    from numbacnn import checkpoint

    config = checkpoint.load(out / "checkpoint.npz").meta["config"]
    assert config["input_shape"] == [1, 32, 32] and config["preprocess"]["pad"] == 2
    assert config["preprocess"]["size"] == [28, 28]
    assert "200 train / 50 test images" in capsys.readouterr().err
    source = open_source(f"folder:{root}")
    assert (source.n_train, source.n_test) == (200, 50)

    os.makedirs(root / "test" / "eleven")
    Image.fromarray(d["x_test"][0]).save(root / "test" / "eleven" / "a.png")
    assert main([*argv, str(tmp_path / "run2")]) == 1
    _one_line_error(capsys, f"{root / 'test' / 'eleven'}: class 'eleven' is not one of the training classes")


def _tiny_folder(root, n=6, size=(12, 12)):
    """Two classes of tiny gray images."""
    for c, value in (("dark", 40), ("light", 200)):
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full(size, value + i, np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "damage, code, needles",
    [
        ("garbage", 1, ["light/3.png: not a readable image"]),
        ("empty_class", 1, ["empty: class folder with no images"]),
        ("no_classes", 1, ["has no class folders", "ImageFolder layout"]),
        ("sizes", 1, ["is 9x12 but", "with resizing off the images must share one size"]),
        ("missing", 2, ["is not a folder"]),
        ("truncated", 1, ["dark/2.png: not a readable image"]),
    ],
)
def test_bad_folders_are_one_line_naming_the_file(damage, code, needles, tmp_path, capsys):
    root = _tiny_folder(tmp_path / "data")
    extra = []
    if damage == "garbage":
        (root / "light" / "3.png").write_bytes(b"this is not a png")
    elif damage == "empty_class":
        os.makedirs(root / "empty")
        (root / "empty" / "notes.txt").write_text("no images here")
    elif damage == "no_classes":
        root = tmp_path / "flat"
        os.makedirs(root)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a.png")
    elif damage == "sizes":
        Image.fromarray(np.zeros((9, 12), np.uint8)).save(root / "light" / "odd.png")
        extra = ["--no-resize", "--model", "resnet_cifar"]
    elif damage == "missing":
        root = tmp_path / "nowhere"
    elif damage == "truncated":
        data = (root / "dark" / "2.png").read_bytes()
        (root / "dark" / "2.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert main(["train", "--dataset", f"folder:{root}", "--out", str(out), "--no-progress", *extra]) == code
    _one_line_error(capsys, *needles)
    assert not (out / "checkpoint.npz").exists()


def test_colour_images_train_with_three_channels(tmp_path, capsys):
    """RGB images make a 3-channel model; normalisation is per channel. Red and blue
    squares of varying shade are told apart after two epochs."""
    rng = np.random.default_rng(0)
    for c, channel in (("red", 0), ("blue", 2)):
        os.makedirs(tmp_path / "colours" / c)
        for i in range(40):
            img = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
            img[..., channel] = rng.integers(150, 256)
            Image.fromarray(img).save(tmp_path / "colours" / c / f"{i}.jpg")
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{tmp_path / 'colours'}", "--epochs", "2", "--batch-size", "8",
            "--test-split", "0.25", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    from numbacnn import checkpoint

    meta = checkpoint.load(out / "checkpoint.npz").meta
    pre = meta["config"]["preprocess"]
    assert pre["channels"] == 3 and len(pre["mean"]) == 3 and meta["config"]["input_shape"] == [3, 32, 32]
    assert pre["mean"][0] > pre["mean"][1] < pre["mean"][2]
    assert meta["metrics"][-1]["test_accuracy"] == 1.0
    train, test = map(int, re.search(r"(\d+) train / (\d+) test", capsys.readouterr().err).groups())
    assert train + test == 80 and 10 <= test <= 30  # about 25%: each image by the hash of its path


def test_npz_dataset(tmp_path, capsys):
    """npz:FILE with x (N, H, W) uint8 and y: trains; its mistakes name the file."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    x = np.where(y[:, None, None] == 0, 30, 220).astype(np.uint8) + rng.integers(
        0, 20, (60, 28, 28), dtype=np.uint8
    )
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y, classes=np.array(["dark", "light"]))
    out = tmp_path / "run"
    assert (
        main(["train", "--dataset", f"npz:{path}", "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    )
    from numbacnn import checkpoint

    config = checkpoint.load(out / "checkpoint.npz").meta["config"]
    assert config["classes"] == ["dark", "light"] and config["input_shape"] == [1, 32, 32]
    capsys.readouterr()

    np.savez(tmp_path / "no_y.npz", x=x)
    assert main(["train", "--dataset", f"npz:{tmp_path / 'no_y.npz'}", "--out", str(tmp_path / "o")]) == 1
    _one_line_error(capsys, "no_y.npz: no array 'y' (it has: x)")
    np.savez(tmp_path / "labels.npz", x=x, y=y + 5, classes=np.array(["dark", "light"]))
    assert main(["train", "--dataset", f"npz:{tmp_path / 'labels.npz'}", "--out", str(tmp_path / "o")]) == 1
    _one_line_error(capsys, "labels.npz: label 6 but 'classes' names only 2 classes")
    assert main(["train", "--dataset", "npz:", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "unknown dataset 'npz:'")
    assert main(["train", "--dataset", "mnist", "--image-size", "40", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "image_size resizes the images of a folder: dataset")


# ------------------------------------------------------------------ what a demanding user tries
def _argv(root, out, *extra):
    return [
        "train",
        "--dataset",
        f"folder:{root}",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def test_resume_and_evaluate_from_another_directory(tmp_path, monkeypatch, capsys):
    """A relative folder: path is stored absolute, so the run resumes and evaluates from any
    directory; its typed optimizer settings resume against the stored optimizer; a changed
    split or preprocessing is refused (the checkpoint's test images would leak)."""
    _tiny_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "folder:data", "--optimizer", "adam", "--epochs", "1", "--batch-size", "4",
            "--no-progress", "--out", "run"]  # fmt: skip
    assert main(argv) == 0
    monkeypatch.chdir("/")
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, "--resume", "--epochs", "2", "--eps", "1e-6", "--no-progress"]) == 0
    assert "eps 1e-08 -> 1e-06" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", f"{run}/checkpoint.npz", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == f"folder:{tmp_path / 'data'}"
    for extra, needle in [
        (
            ["--test-split", "0.5"],
            "was trained with test_split 0.1, not 0.5 (its test split and preprocessing",
        ),
        (["--optimizer", "sgd"], "was trained with optimizer 'adam', not 'sgd'"),
        (["--dataset", "npz:elsewhere.npz"], "was trained with dataset 'folder', not 'npz'"),
    ]:
        assert main(["train", "--out", run, "--resume", "--epochs", "3", *extra]) == 2
        _one_line_error(capsys, needle)


def test_adding_images_never_moves_a_test_image_into_training(tmp_path):
    root = _tiny_folder(tmp_path / "grow", n=30)
    before = open_source(f"folder:{root}")
    test_before = {f for f, _ in _samples(before, "test")}
    for i in range(30, 60):
        Image.fromarray(np.full((12, 12), 60, np.uint8)).save(root / "dark" / f"{i}.png")
    after = open_source(f"folder:{root}")
    assert test_before <= {f for f, _ in _samples(after, "test")}
    assert after.n_train + after.n_test == 90


def _samples(source, split):
    """(file, label) of a folder Source's split, read back through load (no pixels needed)."""
    xtr, ytr, xte, yte = source.load(None)
    return [
        (float(x.mean()), int(y))
        for x, y in zip(*((xte, yte) if split == "test" else (xtr, ytr)), strict=True)
    ]


def test_train_and_val_layout_and_symlink_loops(tmp_path):
    """PATH/train beside PATH/val is a split (torchvision's usual names); a link back up the
    tree is followed once; one file in two classes is an error naming both."""
    root = tmp_path / "tv"
    _tiny_folder(root / "train")
    _tiny_folder(root / "val", n=2)
    source = open_source(f"folder:{root}")
    assert source.classes == ["dark", "light"] and (source.n_train, source.n_test) == (12, 4)
    loop = _tiny_folder(tmp_path / "loop")
    os.symlink("..", loop / "dark" / "up")
    with pytest.raises(ValueError, match=r"is the same file as .*: an image can be in one class only"):
        open_source(f"folder:{loop}")
    os.remove(loop / "dark" / "up")
    os.symlink(".", loop / "dark" / "here")
    assert open_source(f"folder:{loop}").n_train + open_source(f"folder:{loop}").n_test == 12


def test_image_depths(tmp_path):
    """16-bit gray PNGs are scaled by 1/65535, not clipped to 8 bits; 32-bit float images are
    refused, naming the file; a decompression bomb is one line, not a traceback."""
    from numbacnn.data.images import DataError, read_image

    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "half.png")
    np.testing.assert_allclose(read_image(tmp_path / "half.png", 1), 32768 / 65535)
    assert read_image(tmp_path / "half.png", 3, (2, 2)).shape == (3, 2, 2)
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "half.tif")
    with pytest.raises(DataError, match=r"half\.tif: a 32-bit float image has no fixed range"):
        read_image(tmp_path / "half.tif", 1)
    from PIL import Image as PILImage

    limit = PILImage.MAX_IMAGE_PIXELS
    try:
        PILImage.MAX_IMAGE_PIXELS = 4  # a 4 x 4 image is then a "bomb": over twice the limit
        with pytest.raises(DataError, match=r"half\.png: not a readable image \(DecompressionBombError"):
            read_image(tmp_path / "half.png", 1)
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit


@pytest.mark.parametrize(
    "arrays, needle",
    [
        (
            lambda x, y: dict(x=x.astype(np.float32), y=y),
            "float pixels from 0 to 255; floats must be in [0, 1]",
        ),
        (lambda x, y: dict(x=x[..., None].repeat(3, -1), y=y), "looks channels-last (N, H, W, C)"),
        (lambda x, y: dict(x=x[:, None].repeat(2, 1), y=y), "has 2 channels"),
        (lambda x, y: dict(x=x, y=np.zeros_like(y)), "every label in 'y' is 0: a classifier needs two"),
        (lambda x, y: dict(x=x.astype(np.int64), y=y), "has int64 pixels"),
    ],
)
def test_npz_mistakes_name_the_file(arrays, needle, tmp_path, capsys):
    x = np.zeros((20, 8, 8), np.uint8)
    x[:, 0, 0] = 255
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", **arrays(x, y))
    assert main(["train", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "o")]) == 1
    _one_line_error(capsys, "d.npz: ", needle)


def test_one_class_folders_are_refused(tmp_path, capsys):
    only = tmp_path / "only"
    _tiny_folder(only / "train")
    assert main(_argv(only, tmp_path / "o")) == 1
    _one_line_error(capsys, "has one class folder, 'train'", "PATH/train is a split only beside PATH/test")


@needs_mnist
def test_evaluate_on_another_dataset_scores_all_of_it(mnist_run, tmp_path, capsys):
    """--dataset OTHER (same classes) scores every image of OTHER; an npz of another size or
    one with no test images is one line."""
    d = _digits()
    other = _write_folder(
        tmp_path / "other", d["x_test"][:60], d["y_test"][:60], names=[str(k) for k in range(10)]
    )
    ck = str(mnist_run / "checkpoint.npz")
    assert (
        main(
            ["evaluate", "--checkpoint", ck, "--dataset", f"folder:{other}", "--json", "--out", str(tmp_path)]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["test_images"] == 60 and result["split"] == "all images" and result["test_accuracy"] > 0.8
    assert (
        "8" not in {p.name for p in other.iterdir()}
        and json.loads((tmp_path / "confusion.json").read_text())["per_class_accuracy"]["8"] is None
    )  # a class of the model the dataset lacks
    np.savez(tmp_path / "big.npz", x=np.zeros((4, 1, 32, 32), np.uint8), y=np.arange(4) % 2)
    assert main(["evaluate", "--checkpoint", ck, "--dataset", f"npz:{tmp_path / 'big.npz'}"]) == 2
    _one_line_error(capsys, "has 32x32 images", "takes 28x28 (only folder: images are resized)")
    one = _tiny_folder(tmp_path / "ones", n=1)
    for c in ("dark", "light"):
        os.rename(one / c, one / {"dark": "0", "light": "1"}[c])
    assert main(["evaluate", "--checkpoint", ck, "--dataset", f"folder:{one}", "--limit-test", "1"]) == 0
    capsys.readouterr()


def test_resume_checks_the_data_still_fits(tmp_path, capsys):
    """Moved data resumes (the new path is said); a renamed class folder (other labels) or a
    colour image among gray ones (other channels) is refused in one line."""
    import shutil

    data = _tiny_folder(tmp_path / "a", n=10)
    run = str(tmp_path / "run")
    argv = ["train", "--dataset", f"folder:{data}", "--epochs", "1", "--batch-size", "4",
            "--test-split", "0.3", "--no-progress", "--out", run]  # fmt: skip
    assert main(argv) == 0
    shutil.move(data, tmp_path / "b")
    capsys.readouterr()
    assert (
        main(["train", "--out", run, "--resume", "--epochs", "2", "--dataset", f"folder:{tmp_path / 'b'}"])
        == 0
    )
    assert f"dataset 'folder:{data}' -> 'folder:{tmp_path / 'b'}'" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", f"{run}/checkpoint.npz", "--dataset", f"folder:{tmp_path / 'b'}",
                 "--split", "test", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["split"] == "test"
    os.rename(tmp_path / "b" / "dark", tmp_path / "b" / "zdark")
    assert main(["train", "--out", run, "--resume", "--epochs", "3"]) == 2
    _one_line_error(capsys, "now has classes ['light', 'zdark'], but", "was trained with ['dark', 'light']")
    os.rename(tmp_path / "b" / "zdark", tmp_path / "b" / "dark")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "b" / "dark" / "rgb.png")
    assert main(["train", "--out", run, "--resume", "--epochs", "3"]) == 2
    _one_line_error(capsys, "now has channels 3, but", "was trained with 1")


def test_odd_files_and_labels(tmp_path, capsys):
    """A 16-bit PGM (Pillow's mode "I") is read as 16-bit; a FIFO named like an image is
    skipped, not waited on; an npz "ignore" label (255) is refused, not made 256 classes."""
    from numbacnn.data.images import read_image

    Image.fromarray(np.full((4, 4), 30000, np.uint16)).save(tmp_path / "p.pgm")
    np.testing.assert_allclose(read_image(tmp_path / "p.pgm", 1), 30000 / 65535)
    root = _tiny_folder(tmp_path / "f")
    os.mkfifo(root / "dark" / "pipe.png")
    assert open_source(f"folder:{root}").n_train + open_source(f"folder:{root}").n_test == 12
    y = np.arange(40) % 2
    y[0] = 255
    np.savez(tmp_path / "ignore.npz", x=np.zeros((40, 8, 8), np.uint8), y=y)
    assert main(["train", "--dataset", f"npz:{tmp_path / 'ignore.npz'}", "--out", str(tmp_path / "o")]) == 1
    _one_line_error(capsys, "labels run to 255 but 2, 3, 4, 5, 6 and 248 more never occur")


@needs_mnist
def test_metadata_written_by_anyone_is_checked(mnist_run, tmp_path, capsys):
    from safetensors.numpy import save_file

    from numbacnn.bridges.weights import read_state_dict

    state = read_state_dict(mnist_run / "checkpoint.npz")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    for meta, needle in [
        ({"numbacnn.preprocess": "{}"}, "its preprocess ({channels: 1 or 3"),
        ({"numbacnn.preprocess": "{not json"}, "its metadata numbacnn.preprocess is not JSON"),
        ({"numbacnn.classes": '["a", "b"]'}, "it names 2 classes but the model has 10 outputs"),
    ]:
        path = tmp_path / "w.safetensors"
        save_file(state, path, {"numbacnn.model": "lenet5", **meta})
        assert main(["predict", "--checkpoint", str(path), str(tmp_path / "x.png")]) == 1
        _one_line_error(capsys, "w.safetensors: ", needle)
