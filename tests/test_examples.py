"""The examples run end to end: the lecture filters write their PNG grid, the LeNet-5
recipe example trains (and resumes) on a slice of MNIST, the verify example catches its
student's bug."""

import os
import subprocess
import sys

from conftest import needs_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lecture_filters_example_writes_png(tmp_path):
    out = tmp_path / "filters.png"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "lecture_filters.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 50_000  # a real 3x4 grid of photographs, not an empty figure


@needs_mnist
def test_train_lenet_mnist_example_runs_the_recipe(tmp_path):
    """examples/train_lenet_mnist.py (TrainConfig + run) on a slice of MNIST, then --resume."""
    from numbacnn import checkpoint
    from numbacnn.recipe import TrainConfig

    script = os.path.join(ROOT, "examples", "train_lenet_mnist.py")
    out = tmp_path / "lenet5"
    for epochs, extra in ((1, []), (2, ["--resume"])):
        res = subprocess.run(
            [
                sys.executable,
                script,
                "--epochs",
                str(epochs),
                "--out",
                str(out),
                "--limit-train",
                "256",
                *extra,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert res.returncode == 0, res.stderr
        assert f"epoch {epochs}: test accuracy" in res.stdout
    meta = checkpoint.load(out / "checkpoint.npz").meta
    # the example spells out SGD's defaults (lr 0.05, momentum 0.9), as the README's command does
    expected = TrainConfig(epochs=2, out=str(out), limit_train=256, lr=0.05, momentum=0.9)
    assert TrainConfig.from_dict(meta["config"]) == expected


def test_verify_your_kernel_example_catches_the_bug_and_passes_the_fix():
    """examples/verify_your_kernel.py: the student's off-by-one is caught, the fix passes."""
    script = os.path.join(ROOT, "examples", "verify_your_kernel.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "hand-made tests: pass" in done.stdout
    assert "conv2d: conv2d_student is wrong on this case" in done.stdout
    assert "conv2d: conv2d_fixed passed 200 examples" in done.stdout
