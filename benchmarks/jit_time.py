"""Cold and warm start of numbacnn's CPU kernels.

Runs every numbacnn.functional op (forward and backward) once per dtype in a fresh
subprocess, twice: first with an empty NUMBA_CACHE_DIR (cold: every kernel is compiled by
LLVM), then again with the cache that the first run wrote (warm start: kernels are loaded
from disk). Prints the seconds for each, per dtype.

Then the README's training command (LeNet-5 on MNIST, 640 images of one epoch): its first
batch's note, from an empty cache with Numba's JIT in one process (NUMBACNN_JIT_WORKERS=1),
from an empty cache compiled on every core at once (kernels/cpu/precompile.py), and warm.

    python benchmarks/jit_time.py
"""

import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import numbacnn.functional as F
t_import = time.perf_counter() - t0
out = []
for dtype in (np.float32, np.float64):
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(dtype)
    w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    y = F.conv2d(x, w, np.zeros(6, dtype), padding=1)
    F.conv2d_backward(y, x, w, padding=1)
    F.conv2d(x, rng.standard_normal((6, 4, 8, 8)).astype(dtype))      # dense path (kernel = input)
    F.conv2d_backward(np.ones((2, 6, 1, 1), dtype), x, rng.standard_normal((6, 4, 8, 8)).astype(dtype))
    for pool in ("max", "avg"):
        p = getattr(F, pool + "_pool2d")(x, 2)
        getattr(F, pool + "_pool2d_backward")(p, x, 2)
    g, b = np.ones(4, dtype), np.zeros(4, dtype)
    rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
    F.batch_norm(x, g, b, rm, rv, True)
    F.batch_norm(x, g, b, rm, rv, False)
    F.batch_norm_backward(x, x, g)
    h = F.linear(x.reshape(2, -1), rng.standard_normal((5, 256)).astype(dtype), np.zeros(5, dtype))
    F.linear_backward(h, x.reshape(2, -1), rng.standard_normal((5, 256)).astype(dtype))
    for act in ("relu", "tanh", "sigmoid"):
        a = getattr(F, act)(x)
        getattr(F, act + "_backward")(a, x)
    d, m = F.dropout(x, 0.5, seed=1)
    F.dropout_backward(d, m, 0.5)
    F.add(x, x)
    F.cross_entropy(h, np.array([0, 1]))
    F.cross_entropy_backward(h, np.array([0, 1]))
    out.append((np.dtype(dtype).name, time.perf_counter() - t))
print(f"import {t_import:.2f}s; " + "; ".join(f"{n} {s:.1f}s" for n, s in out))
"""


def run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, res.stdout.strip()


def first_batch(cache, workers, out):
    """(seconds of the whole command, its first batch's note) for the README's command."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env.pop("NUMBACNN_JIT_WORKERS", None)
    if workers is not None:
        env["NUMBACNN_JIT_WORKERS"] = str(workers)
    cmd = [sys.executable, "-m", "numbacnn.cli", "train", "--model", "lenet5", "--dataset", "mnist",
           "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--momentum", "0.9",
           "--limit-train", "640", "--limit-test", "64", "--no-progress", "--out", out]  # fmt: skip
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    note = next((line for line in res.stderr.splitlines() if "the first batch" in line), "(no note)")
    return time.perf_counter() - t, note


def main():
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold (empty cache)", "warm (cached)"):
            total, detail = run(cache)
            print(f"{label:20s} total {total:6.1f}s   {detail}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = (("cold, one process", "one", 1), ("cold, every core", "all", None), ("warm", "all", None))
        for i, (label, cache, workers) in enumerate(runs):
            total, note = first_batch(os.path.join(tmp, cache), workers, os.path.join(tmp, f"run{i}"))
            print(f"README command, {label:18s} total {total:5.1f}s   {note}")


if __name__ == "__main__":
    main()
