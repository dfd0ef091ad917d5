"""The ecosystem bridges: ONNX export run by onnxruntime, safetensors through PyTorch and
back, PyTorch state_dicts imported without unpickling anything but weights."""

import collections
import json
import os
import pickle

import numpy as np
import pytest
from conftest import needs_mnist

import numbacnn
import numbacnn.random as nrandom
from numbacnn.bridges.weights import read_metadata, read_state_dict, save_safetensors
from numbacnn.cli import main
from numbacnn.layers import BatchNorm2d
from numbacnn.models import build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
nn = torch.nn

from numbacnn.bridges.onnx import OPSET, to_onnx  # noqa: E402


def _trained_looking(model, seed=0):
    """Batch norm statistics and scales away from their initial 0/1, as after training."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            m.running_mean[...] = rng.normal(0, 0.3, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.3, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.data.shape)
            m.bias.data[...] = rng.normal(0, 0.2, m.bias.data.shape)
    return model.eval()


def _ort_logits(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


@pytest.mark.parametrize("name", ["lenet5", "vgg_small", "resnet_cifar", "resnet18"])
def test_onnxruntime_runs_the_export_to_our_eval_logits(name):
    """onnxruntime's logits equal numbacnn's eval-mode logits within 1e-5 (float32; relative to
    the logits' scale when it exceeds 1: float32 itself resolves 4e-6 at 40)."""
    nrandom.seed(0)  # the same weights whichever tests ran before
    model = _trained_looking(build_model(name, num_classes=10, in_channels=3))
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    proto = to_onnx(model, (3, 32, 32), model_name=name, classes="abcdefghij")
    assert proto.opset_import[0].version == OPSET
    ops = {n.op_type for n in proto.graph.node}
    assert ("BatchNormalization" in ops) == (name != "lenet5")
    ours, theirs = model(x), _ort_logits(proto, x)
    assert theirs.shape == ours.shape == (5, 10)
    scale = max(1.0, float(np.abs(ours).max()))
    assert np.abs(theirs - ours).max() <= 1e-5 * scale, (np.abs(theirs - ours).max(), scale)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["numbacnn.model"] == name and props["numbacnn.input_shape"] == "[3, 32, 32]"
    # the batch dimension is symbolic: any batch runs
    assert np.abs(_ort_logits(proto, x[:1]) - ours[:1]).max() <= 1e-5 * scale


def test_onnx_export_covers_padding_strides_dilation_groups_and_pools():
    """Every attribute the exporter writes, against onnxruntime: "same" padding with an even
    kernel (the odd pixel on top/left), stride, dilation, groups, padded max and average
    pooling (count_include_pad), bias-free convs, Dropout (identity in eval mode)."""
    from numbacnn.graph import Sequential
    from numbacnn.layers import (
        AvgPool2d,
        Conv2d,
        Dropout,
        Flatten,
        GlobalAvgPool2d,
        Linear,
        MaxPool2d,
        ReLU,  # fmt: skip
        Sigmoid,
    )

    model = Sequential(
        ("c1", Conv2d(2, 4, 4, padding="same")),
        ("c2", Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)),
        ("p1", MaxPool2d(3, stride=2, padding=1)),
        ("s", Sigmoid()),
        ("p2", AvgPool2d(2, stride=1, padding=1)),
        ("d", Dropout(0.5)),
        ("c3", Conv2d(8, 6, (1, 3), padding=(0, 1))),
        ("r", ReLU()),
        ("g", GlobalAvgPool2d()),
        ("f", Flatten()),
        ("fc", Linear(6, 3, bias=False)),
    ).eval()
    x = np.random.default_rng(2).standard_normal((3, 2, 15, 12)).astype(np.float32)
    np.testing.assert_allclose(_ort_logits(to_onnx(model, (2, 15, 12)), x), model(x), rtol=0, atol=1e-5)


def test_onnx_export_errors_name_the_problem():
    from numbacnn.graph import Sequential
    from numbacnn.module import Module

    class Mystery(Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"layer 'odd' \(Mystery\) has no ONNX mapping"):
        to_onnx(Sequential(("odd", Mystery())), (1, 4, 4))
    with pytest.raises(ValueError, match="input_shape must be"):
        to_onnx(build_model("lenet5"), (32, 32))
    with pytest.raises(
        ValueError, match="lenet5|conv|Linear|120"
    ):  # 28 x 28 does not fit LeNet-5's dense stack
        to_onnx(build_model("lenet5"), (1, 28, 28))
    with pytest.raises(ValueError, match="opset"):
        to_onnx(build_model("lenet5"), (1, 32, 32), opset=7)


# --------------------------------------------------------------------------------------
# safetensors and PyTorch weights
# --------------------------------------------------------------------------------------
def torch_lenet5(num_classes=10):
    """The lecture's LeNet-5 with numbacnn's (torch-style) child names."""
    layers = [("conv1", nn.Conv2d(1, 6, 5)), ("tanh1", nn.Tanh()), ("pool1", nn.AvgPool2d(2, 2)),
              ("conv2", nn.Conv2d(6, 16, 5)), ("tanh2", nn.Tanh()), ("pool2", nn.AvgPool2d(2, 2)),
              ("conv3", nn.Conv2d(16, 120, 5)), ("tanh3", nn.Tanh()), ("flatten", nn.Flatten()),
              ("fc1", nn.Linear(120, 84)), ("tanh4", nn.Tanh()),
              ("fc2", nn.Linear(84, num_classes))]  # fmt: skip
    return nn.Sequential(collections.OrderedDict(layers))


def torch_resnet18(num_classes, in_channels):
    from test_parity_torch import TorchBasicBlock, TorchResNet

    return TorchResNet(TorchBasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels)


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_safetensors_round_trip_through_torch(name, tmp_path):
    """numbacnn -> safetensors -> torch.nn.Module.load_state_dict (strict) gives the same eval
    logits; torch -> safetensors -> numbacnn.load gives back the same arrays."""
    from safetensors.torch import load_file, save_file

    model = _trained_looking(build_model(name, num_classes=7, in_channels=1))
    path = tmp_path / f"{name}.safetensors"
    save_safetensors(model, path, {"numbacnn.model": name})
    tmodel = torch_lenet5(7) if name == "lenet5" else torch_resnet18(7, 1)
    tmodel.load_state_dict(load_file(path), strict=True)
    tmodel.eval()
    x = np.random.default_rng(3).standard_normal((2, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        theirs = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, model(x), rtol=1e-4, atol=1e-5)

    with torch.no_grad():  # change torch's weights, save them with torch's own safetensors
        for p in tmodel.parameters():
            p.mul_(1.5)
    back_path = tmp_path / "from_torch.safetensors"
    save_file(tmodel.state_dict(), back_path)
    back = numbacnn.load(back_path, model=name)  # the name: torch's file does not record one
    assert back.training is False
    for k, v in tmodel.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v.numpy(), err_msg=k)
    assert numbacnn.load(path).state_dict().keys() == model.state_dict().keys()  # recorded name


def test_load_state_dict_reads_pt_and_safetensors_files(tmp_path):
    tmodel = torch_lenet5(10)
    pt, pth, st = tmp_path / "w.pt", tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save(tmodel.state_dict(), pt)
    torch.save({"state_dict": {f"module.{k}": v for k, v in tmodel.state_dict().items()}, "epoch": 3}, pth)
    from safetensors.torch import save_file

    save_file(tmodel.state_dict(), st)
    for path in (pt, pth, st):
        model = build_model("lenet5")
        model.load_state_dict(str(path))
        for k, v in tmodel.state_dict().items():
            np.testing.assert_array_equal(model.state_dict()[k], v.numpy(), err_msg=f"{path.name} {k}")


class Payload:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_nothing_but_weights_is_ever_unpickled(tmp_path, monkeypatch):
    """A .pt holding a pickle that would run code is refused by torch.load(weights_only=True)
    and the code never runs; without torch, a .pt file is refused outright."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"conv1.weight": Payload(str(marker))}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pt: torch.load\(weights_only=True\) refused"):
        build_model("lenet5").load_state_dict(str(evil))
    assert not marker.exists()
    torch.save({"w": torch.zeros(2), "step": 3}, tmp_path / "odd.pt")  # loads, but is no state_dict
    with pytest.raises(ValueError, match=r"odd\.pt: not a PyTorch state_dict"):
        read_state_dict(tmp_path / "odd.pt")

    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ValueError, match="needs torch .* never unpickles"):
        read_state_dict(evil)
    assert not marker.exists()


def test_weights_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "w.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match=r"w\.bin: unknown weights format '\.bin'"):
        read_state_dict(tmp_path / "w.bin")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="bad.safetensors is not a readable safetensors file"):
        read_state_dict(bad)
    wrong = tmp_path / "vgg.safetensors"
    save_safetensors(build_model("vgg_small"), wrong, {"numbacnn.model": "vgg_small"})
    with pytest.raises(ValueError, match="vgg.safetensors.*missing keys"):
        numbacnn.load(wrong, model=build_model("lenet5"))
    with pytest.raises(ValueError, match="does not record which model"):
        save_safetensors({"a": np.zeros(2)}, tmp_path / "plain.safetensors")
        numbacnn.load(tmp_path / "plain.safetensors")
    assert read_metadata(wrong)["model"] == "vgg_small"


# --------------------------------------------------------------------------------------
# numbacnn export
# --------------------------------------------------------------------------------------
@needs_mnist
def test_export_cli_writes_onnx_and_safetensors(mnist_run, tmp_path, capsys):
    from numbacnn.recipe import load_dataset

    ck = mnist_run / "checkpoint.npz"
    onnx_path, st_path = tmp_path / "lenet5.onnx", tmp_path / "lenet5.safetensors"
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert main(["export", "--checkpoint", str(ck), "--out", str(st_path)]) == 0  # format from the suffix
    out = capsys.readouterr().out
    assert f"wrote {onnx_path} (lenet5 from {ck}: ONNX opset {OPSET}, input (N, 1, 32, 32)" in out
    assert f"wrote {st_path} (lenet5 from {ck}: 10 tensors under PyTorch's state_dict names" in out

    model = numbacnn.load(ck)
    assert model.classes == [str(d) for d in range(10)]
    _, _, x, _ = load_dataset("mnist", 2, None, False, limit_train=1, limit_test=64)  # as evaluate
    proto = onnx.load(str(onnx_path))
    np.testing.assert_allclose(_ort_logits(proto, x), model(x), rtol=0, atol=1e-5)
    assert {p.key: p.value for p in proto.metadata_props}["numbacnn.classes"].startswith('["0", "1"')

    again = numbacnn.load(st_path)
    assert again.classes == model.classes and read_metadata(st_path)["input_shape"] == [1, 32, 32]
    np.testing.assert_array_equal(again(x), model(x))


@needs_mnist
@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--out", "m.txt"], "pass --format onnx or safetensors"),
        (["--format", "onnx", "--out", "m.safetensors"], "a onnx file's name ends in .onnx"),
        (["--out", "m.onnx", "--opset", "9"], "argument --opset: expected an integer between 13 and 99"),
        (["--out", "m.onnx", "--opset", "90"], "to_onnx: opset must be an int from 13 to"),
        (["--out", "m.safetensors", "--opset", "17"], "--opset is for --format onnx"),
    ],
)
def test_export_mistakes_are_one_line(mnist_run, extra, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", str(mnist_run / "checkpoint.npz"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numbacnn: error: ") and needle in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


@needs_mnist
def test_export_never_overwrites_and_carries_the_preprocessing(mnist_run, tmp_path, capsys):
    """An existing --out is refused (kept whole) unless --overwrite; both formats carry the
    model, classes and preprocessing, so predict runs from the exported safetensors."""
    ck = str(mnist_run / "checkpoint.npz")
    mine = tmp_path / "mine.onnx"
    mine.write_text("precious")
    assert main(["export", "--checkpoint", ck, "--out", str(mine)]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err and mine.read_text() == "precious"
    assert main(["export", "--checkpoint", ck, "--out", str(mine), "--overwrite"]) == 0
    props = {p.key: p.value for p in onnx.load(str(mine)).metadata_props}
    pre = json.loads(props["numbacnn.preprocess"])
    assert pre == {"channels": 1, "size": [28, 28], "pad": 2, "mean": [0.1307], "std": [0.3081]}

    st = tmp_path / "w.safetensors"
    assert main(["export", "--checkpoint", ck, "--out", str(st)]) == 0
    assert read_metadata(st)["preprocess"] == pre and numbacnn.load(st).preprocess == pre
    from PIL import Image

    from numbacnn.data.mnist import load_mnist

    digit = tmp_path / "d.png"
    Image.fromarray(load_mnist()["x_test"][0]).save(digit)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(st), str(digit)]) == 0
    assert capsys.readouterr().out.startswith(f"{digit}: 7 (")
    assert main(["evaluate", "--checkpoint", str(st)]) == 2
    assert "is a weights file without a dataset: pass --dataset" in capsys.readouterr().err
