"""The model zoo against the lecture's tables (shapes, parameter counts, MACs) and
torchvision's published sizes, plus the registry."""

import numpy as np
import pytest

import numbacnn.random as nrandom
from numbacnn.graph import format_shape
from numbacnn.models import (
    MODELS,
    ModelInfo,
    alexnet,
    build_model,
    lenet5,
    model_info,
    resnet18,
    resnet34,
    resnet50,
    vgg11,
    vgg16,
    vgg19,
)


def test_lenet5_summary_reproduces_the_lecture_table(capsys):
    table = lenet5().summary((1, 32, 32))
    printed = capsys.readouterr().out
    assert "MACs" in printed and "conv1" in printed
    # lecture: feature map size per layer
    lecture = {
        "conv1": "28 x 28 x 6",
        "pool1": "14 x 14 x 6",
        "conv2": "10 x 10 x 16",
        "pool2": "5 x 5 x 16",
        "flatten": "120",
        "fc1": "84",
        "fc2": "10",
    }
    for name, shape in lecture.items():
        assert format_shape(table.row(name)["output_shape"]) == shape, name
    assert table.row("conv3")["output_shape"] == (1, 120, 1, 1)  # the lecture's "120"
    # parameters: weights + biases
    assert [table.row(n)["params"] for n in ("conv1", "conv2", "conv3", "fc1", "fc2")] == [
        6 * 25 + 6,
        16 * 6 * 25 + 16,
        120 * 400 + 120,
        84 * 120 + 84,
        10 * 84 + 10,
    ]
    assert table.total_params == 61_706
    # MACs = output positions x (C_in kH kW)
    assert table.row("conv1")["macs"] == 28 * 28 * 6 * 25
    assert table.row("conv2")["macs"] == 10 * 10 * 16 * 6 * 25
    assert table.total_macs == 416_520


def test_lenet5_against_the_lecture_complexity_column():
    """The lecture's LeNet column (params 150 / 2.4K / 0.48M / 0.1M, total 0.6M; FLOP 1.2M /
    2.4M / 0.48M / 0.1M, total 4M) treats conv3 (400 -> 120) as Dense1 and fc1 as Dense2.
    Its conv weight counts are exact; every other entry is 10x the true count (e.g. conv1:
    28*28*6*25 = 117,600 MACs, not 1.2M)."""
    t = lenet5().summary((1, 32, 32), print_table=False)
    weights = {"conv1": 150, "conv2": 2_400}  # the lecture counts weights only
    for name, lecture in weights.items():
        assert t.row(name)["params"] - t.row(name)["output_shape"][1] == lecture
    for name, lecture_params, lecture_macs in [("conv3", 0.48e6, 0.48e6), ("fc1", 0.1e6, 0.1e6)]:
        assert approx(10 * t.row(name)["params"], lecture_params, rel=0.02)
        assert approx(10 * t.row(name)["macs"], lecture_macs, rel=0.02)
    for name, lecture_macs in [("conv1", 1.2e6), ("conv2", 2.4e6)]:
        assert approx(10 * t.row(name)["macs"], lecture_macs)
    assert approx(10 * t.total_params, 0.6e6, rel=0.05) and approx(10 * t.total_macs, 4e6, rel=0.05)


def approx(value, lecture, rel=0.05):
    """Within the lecture's rounding (values like '35K', '3M', '1G')."""
    return abs(value - lecture) <= rel * lecture


def test_alexnet_reproduces_the_lecture_complexity_table():
    table = alexnet(num_classes=1000, in_channels=3).summary((3, 224, 224), print_table=False)
    p = {r["name"]: r["params"] for r in table.rows}
    m = {r["name"]: r["macs"] for r in table.rows}
    conv35 = ("conv3", "conv4", "conv5")
    #            (ours,                                      lecture #params, lecture FLOP=MACs)
    lecture = {
        "Conv1": (p["conv1"], m["conv1"], 35e3, 101e6),
        "Conv2": (p["conv2"], m["conv2"], 614e3, 415e6),
        "Conv3-5": (sum(p[n] for n in conv35), sum(m[n] for n in conv35), 3e6, 445e6),
        "Dense1": (p["fc1"], m["fc1"], 26e6, 26e6),
        "Dense2": (p["fc2"], m["fc2"], 16e6, 16e6),
    }
    for row, (params, macs, lp, lm) in lecture.items():
        assert approx(params, lp), (row, params, lp)
        assert approx(macs, lm), (row, macs, lm)
    # exact values behind the rounded table
    assert m["conv1"] == 54 * 54 * 96 * 3 * 11 * 11 == 101_616_768
    assert m["conv2"] == 26 * 26 * 256 * 96 * 25 == 415_334_400
    # the table's totals (46M / 1G) cover the rows above; the output layer fc3 adds 4.1M / 4.1M
    assert approx(sum(v[0] for v in lecture.values()), 46e6)
    assert approx(sum(v[1] for v in lecture.values()), 1e9)
    assert table.total_params == sum(v[0] for v in lecture.values()) + p["fc3"] == 50_844_008
    assert approx(table.total_macs, 1e9, rel=0.02)
    assert table.row("pool5")["output_shape"] == (1, 256, 5, 5)


@pytest.mark.parametrize(
    "build, params, gmacs",
    [
        (resnet18, 11_689_512, 1.81),
        (resnet34, 21_797_672, 3.66),
        (resnet50, 25_557_032, 4.09),
        (vgg11, 132_863_336, 7.61),
        (vgg16, 138_357_544, 15.47),
        (vgg19, 143_667_240, 19.63),
    ],
)
def test_imagenet_models_match_torchvision_sizes(build, params, gmacs):
    """torchvision's documented #params and GFLOPS (which count MACs) at 224 x 224."""
    table = build(num_classes=1000, in_channels=3).summary((3, 224, 224), print_table=False)
    assert table.total_params == params
    assert abs(table.total_macs / 1e9 - gmacs) < 0.01 * gmacs


def test_registry_builds_every_model_with_the_right_output_shape():
    sizes = {"lenet5": 32, "alexnet": 224, "vgg_small": 32, "resnet_cifar": 32}
    for name in MODELS:
        model = build_model(name, num_classes=7, in_channels=1)
        side = sizes.get(name, 224 if name.startswith("vgg") else 64)
        assert model.output_shape((2, 1, side, side)) == (2, 7), name
        info = model_info(name)  # the registry's facts are true: it takes both sides
        for side in (info.side, info.min_side):
            assert model.output_shape((2, 1, side, side)) == (2, 7), (name, side)
    with pytest.raises(ValueError, match="unknown model 'lenet'"):
        build_model("lenet")


@pytest.mark.parametrize("name, side", [("lenet5", 32), ("vgg_small", 32), ("resnet_cifar", 28)])
def test_small_models_run_forward_and_backward(name, side):
    nrandom.seed(0)
    model = build_model(name, num_classes=10, in_channels=1)
    x = np.random.default_rng(0).standard_normal((2, 1, side, side)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32 and np.isfinite(y).all()
    dx = model.backward(np.ones_like(y) / 20)
    assert dx.shape == x.shape
    assert all(np.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.any() for p in model.parameters())


def test_resnet_cifar_is_resnet20():
    table = build_model("resnet_cifar", num_classes=10, in_channels=3).summary((3, 32, 32), print_table=False)
    assert table.total_params == 272_474  # He et al.: 0.27M
    convs = [r for r in table.rows if r["layer"].startswith("Conv2d") and "downsample" not in r["name"]]
    assert len(convs) + 1 == 20  # 19 convolutions + fc
    assert table.rows[-1]["output_shape"] == (1, 10)


def test_registry_holds_the_input_facts_of_every_model():
    """Every model's facts sit next to its builder (that the model takes them is checked
    in test_registry_builds_every_model_with_the_right_output_shape)."""
    for name in MODELS:
        info = model_info(name)
        assert isinstance(info, ModelInfo) and info.builder is MODELS[name]
        assert 1 <= info.min_side <= info.side, name
    assert [model_info(n).side for n in ("alexnet", "vgg11", "vgg19", "resnet18", "resnet50")] == [224] * 5
    assert [model_info(n).side for n in ("lenet5", "vgg_small", "resnet_cifar")] == [32] * 3
    assert [model_info(n).min_side for n in ("lenet5", "vgg_small", "resnet18", "resnet_cifar")] == [32] * 4
    with pytest.raises(ValueError, match="unknown model 'lenet'"):
        model_info("lenet")
