"""The main job, for real: the README's command trains LeNet-5 on the full MNIST
(60k/10k, 3 epochs) and must reach >= 98.5% test accuracy, as a new user runs it: in a
fresh process, from an empty Numba cache, its first batch compiled on 2 processes at once
(kernels/cpu/precompile.py). About 35 s on 2 cores."""

import json
import os
import re
import subprocess
import sys

import pytest

README_COMMAND = (
    "train --model lenet5 --dataset mnist --epochs 3 --batch-size 64 --lr 0.05 --momentum 0.9".split()
)


@pytest.mark.slow
def test_readme_command_trains_lenet5_to_98_5_percent_on_real_mnist(tmp_path):
    out = tmp_path / "lenet5"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), NUMBACNN_JIT_WORKERS="2")
    cmd = [sys.executable, "-m", "numbacnn.cli", *README_COMMAND, "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    note = re.search(
        r"the first batch compiled its kernels in ([\d.]+) s \(Numba's JIT, in 2 processes at once",
        res.stderr,
    )
    assert note, res.stderr
    print(f"cold first batch: {note[1]} s on 2 processes")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        print(
            f"epoch {m['epoch']}: test accuracy {m['test_accuracy']:.4f}, "
            f"{m['seconds']:.1f} s, {m['images_per_second']:.0f} images/s"
        )
    assert metrics[-1]["test_accuracy"] >= 0.985
    assert os.path.getsize(out / "checkpoint.npz") > 0 and (out / "curves.png").exists()
