"""The main job, for real: the README's command trains LeNet-5 on the full MNIST
(60k/10k, 3 epochs) and must reach >= 98.5% test accuracy. About 40 s on 2 cores."""

import json
import os

import pytest

from numbacnn.cli import main

README_COMMAND = (
    "train --model lenet5 --dataset mnist --epochs 3 --batch-size 64 --lr 0.05 --momentum 0.9".split()
)


@pytest.mark.slow
def test_readme_command_trains_lenet5_to_98_5_percent_on_real_mnist(tmp_path):
    out = tmp_path / "lenet5"
    assert main(README_COMMAND + ["--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        print(
            f"epoch {m['epoch']}: test accuracy {m['test_accuracy']:.4f}, "
            f"{m['seconds']:.1f} s, {m['images_per_second']:.0f} images/s"
        )
    assert metrics[-1]["test_accuracy"] >= 0.985
    assert os.path.getsize(out / "checkpoint.npz") > 0 and (out / "curves.png").exists()
