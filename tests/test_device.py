"""Devices without a GPU: `--device cuda` says in one line what is missing (no traceback,
no CudaSupportError at import), and the CUDA kernels compile to PTX and SASS within the
project's limits (benchmarks/cuda_static.py, which CI runs here)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from numbacnn import device
from numbacnn.models import lenet5

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NO_CUDA = device.cuda_problem()
needs_no_gpu = pytest.mark.skipif(NO_CUDA is None, reason="CUDA is usable here: nothing is missing to report")


def test_importing_numbacnn_loads_no_cuda():
    code = "import sys, numbacnn, numbacnn.cli, numbacnn.train; print('numba.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_no_gpu
@pytest.mark.parametrize("command", ["train --limit-train 64 --limit-test 64 --epochs 1", "evaluate"])
def test_device_cuda_without_a_gpu_is_one_line(command, tmp_path):
    argv = command.split() + ["--device", "cuda"]
    if command == "evaluate":
        ckpt = tmp_path / "w.npz"
        np.savez(ckpt, x=np.zeros(1))
        argv += ["--checkpoint", str(ckpt)]
    else:
        argv += ["--out", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-m", "numbacnn.cli", *argv], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("numbacnn: error: "), res.stderr
    assert "train: CUDA cannot run here" in lines[0] or "evaluate: CUDA cannot run here" in lines[0]
    assert "no usable NVIDIA GPU" in lines[0] and "numbacnn[cuda]" in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


@needs_no_gpu
def test_module_to_cuda_without_a_gpu_raises_one_sentence():
    model = lenet5()
    with pytest.raises(
        device.DeviceUnavailable, match=r"Sequential.to: CUDA cannot run here: .*numbacnn\[cuda\]"
    ):
        model.to("cuda")
    assert model.device == "cpu"
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda', got 'gpu'"):
        model.to("gpu")


def test_module_to_cpu_is_a_no_op_on_the_cpu():
    model = lenet5()
    before = model.state_dict()
    assert model.to("cpu") is model and model.device == "cpu"
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _tools_present():
    from benchmarks.cuda_static import _tool

    return _tool("ptxas", "nvidia/cu*/bin/ptxas") and _tool("nvdisasm", "nvidia/cu*/bin/nvdisasm")


def test_cuda_static_check_passes(tmp_path):
    """Every kernel compiles (NVVM, ptxas) for sm_80 and sm_90 without spills, the float32
    implicit-GEMM conv kernels' inner loops take at most 4 SASS instructions per FFMA, and
    every ResNet-50 conv launch (batch 64, 224x224) has at least 264 blocks."""
    sys.path.insert(0, ROOT)
    try:
        if not _tools_present():
            pytest.skip("ptxas or nvdisasm is missing (CUDA toolkit; pip install nvidia-cuda-nvdisasm)")
    finally:
        sys.path.remove(ROOT)
    out = tmp_path / "static.json"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.cuda_static", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())
    kernels = [r for r in rows if "cc" in r]
    launches = [r for r in rows if "layer" in r]
    keys = {"kernel", "dtype", "cc", "registers", "spill_bytes", "shared_bytes", "occupancy", "sass_per_ffma"}
    assert kernels and all(set(r) == keys for r in kernels)
    assert {r["cc"] for r in kernels} == {80, 90} and {r["dtype"] for r in kernels} == {"float32", "float64"}
    gemm = [r for r in kernels if r["kernel"].startswith("conv_gemm") and r["dtype"] == "float32"]
    assert len(gemm) == 6 and all(0 < r["sass_per_ffma"] <= 4 for r in gemm)
    assert all(r["spill_bytes"] == 0 for r in kernels)
    assert launches and all(set(r) == {"layer", "kernel", "blocks"} and r["blocks"] >= 264 for r in launches)
    assert {r["kernel"] for r in launches} == {"conv_gemm_forward", "conv_gemm_input", "conv_gemm_weight"}
