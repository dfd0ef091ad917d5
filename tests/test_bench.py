"""numbacnn bench: the smoke run writes its table, JSON and chart, with every implementation
timed (each external baseline in its own process); the PyTorch mirror of a model has the
numbacnn model's parameters."""

import json

import numpy as np
import pytest

from numbacnn.bench import _model, _torch_model, cases, machine_peak
from numbacnn.cli import main


def test_bench_quick_writes_the_table_json_and_chart(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "machine peak (float32): " in out and " x 2 flops x " in out and "vs torch" in out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["notes"] == {} and report["peak_gflops"] == pytest.approx(machine_peak()[0])
    rows = {r["case"]: r for r in report["rows"]}
    assert list(rows) == [name for name, *_ in cases(quick=True)]
    conv = rows["LeNet C3 6->16 5x5 14x14 conv2d"]
    for impl in ("numbacnn", "numbacnn 1 thread", "numpy im2col", "scipy", "torch"):
        assert conv[impl]["ms"] > 0 and conv[impl]["gflops"] > 0, impl
    assert conv["vs_torch"] == pytest.approx(conv["torch"]["ms"] / conv["numbacnn"]["ms"])
    step = rows["LeNet-5 step b8"]
    assert step["numbacnn"]["ms"] > 0 and step["torch"]["ms"] > 0 and step["scipy"] is None
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name,channels", [("lenet5", 1), ("resnet_cifar", 3), ("vgg_block", 64)])
def test_the_torch_mirror_has_the_models_parameters(name, channels):
    import torch

    ours = _model(name, channels)
    theirs = _torch_model(name, channels)
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_parameters()
    x = torch.from_numpy(np.zeros((2, channels, 32, 32), np.float32))
    assert tuple(theirs(x).shape) == (2, 10)
