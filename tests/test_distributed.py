"""Data-parallel training over real MPI (mpi4py and the mpich wheel, ``mpiexec -n 2`` on this
machine): K ranks compute what one process computes on the whole batch, a failing rank ends
the run, and ``numbacnn train`` under mpiexec writes one set of outputs."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import needs_mnist

pytest.importorskip("mpi4py")

BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec")
HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.skipif(
    not os.path.exists(MPIEXEC), reason="mpiexec not installed (pip install mpich)"
)


def _run(cmd, cwd, timeout=120, env=None):
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith(("PMI_", "OMPI_"))}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _steps(tmp_path, ranks, model, batch, sync_bn, dtype, name):
    """fit_steps.py (20 SGD steps through numbacnn.train.fit) on ``ranks`` ranks."""
    script = [sys.executable, os.path.join(HERE, "mpi", "fit_steps.py"), model, str(batch), "20",
              "1" if sync_bn else "0", dtype, name]  # fmt: skip
    res = _run(([MPIEXEC, "-n", str(ranks)] if ranks > 1 else []) + script, tmp_path)
    assert res.returncode == 0, res.stderr
    return np.load(tmp_path / f"{name}.npz")


def _max_diff(a, b, keys):
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in keys)


@needs_mnist
def test_lenet5_two_ranks_equal_one_rank(tmp_path):
    """LeNet-5, 2 ranks x 32 images = 1 rank x 64 images: the same parameters after 20 SGD
    steps (momentum, weight decay) within 1e-5 (float32)."""
    one = _steps(tmp_path, 1, "lenet5", 64, False, "float32", "one")
    two = _steps(tmp_path, 2, "lenet5", 64, False, "float32", "two")
    assert _max_diff(one, two, one.files) <= 1e-5


@needs_mnist
def test_sync_batch_norm_two_ranks_equal_one_rank(tmp_path):
    """resnet_cifar with --sync-bn on 2 ranks x 8 images = 1 rank x 16: parameters and
    running statistics after 20 steps. In float64: this ResNet at batch 16 is chaotic in
    float32 (a 1e-7 relative change of its initial weights moves them by 0.1 within 20
    steps in ONE process), so float32 rounding cannot be told apart from a bug there.
    Without sync-bn each rank normalises its own 8 images and the run differs."""
    one = _steps(tmp_path, 1, "resnet_cifar", 16, True, "float64", "one")
    two = _steps(tmp_path, 2, "resnet_cifar", 16, True, "float64", "two")
    params = [k for k in one.files if k.endswith(("weight", "bias"))]
    stats = [k for k in one.files if "running" in k]
    assert len(stats) == 2 * 21 and _max_diff(one, two, params) <= 1e-8 and _max_diff(one, two, stats) <= 1e-8
    apart = _steps(tmp_path, 2, "resnet_cifar", 16, False, "float64", "apart")
    assert _max_diff(one, apart, stats) > 1e-3


@needs_mnist
@pytest.mark.parametrize("mode", ["cli", "api"])
def test_a_failing_rank_ends_every_rank(tmp_path, mode):
    """Rank 1 raises in its third batch while rank 0 waits in the gradient Allreduce, in
    ``numbacnn train`` and in a script that calls fit: mpiexec exits non-zero within 30 s,
    with rank 1's message."""
    t0 = time.perf_counter()
    script = os.path.join(HERE, "mpi", "fail_rank.py")
    res = _run([MPIEXEC, "-n", "2", sys.executable, script, mode, "out"], tmp_path, timeout=60)
    assert res.returncode != 0 and time.perf_counter() - t0 < 30
    assert "ValueError: injected failure on rank 1" in res.stderr


@pytest.mark.parametrize(
    "mode, words",
    [
        ("unequal", "the same number of training batches per epoch, got rank 0: 5, rank 1: 4"),
        ("noise", "the same training images (CRC-32), got rank 0: "),
        (
            "dtype",
            "the same model's state_dict (names, shapes, dtypes), got rank 0: "
            "[('conv1.weight', (6, 1, 5, 5), 'float32')",
        ),
    ],
)
def test_ranks_given_different_data_or_models_are_refused(tmp_path, mode, words):
    """Rank 1's loader holds 256 images to rank 0's 320, or other images with the same labels,
    or its model is float64: fit refuses on every rank before any batch, naming what differs
    and each rank's value (no hang, no mixed-up batch, no NaN); every rank failed alike, so
    mpiexec ends without MPI_Abort."""
    script = os.path.join(HERE, "mpi", "fail_rank.py")
    res = _run([MPIEXEC, "-n", "2", sys.executable, script, mode, "out"], tmp_path, timeout=60)
    assert res.returncode != 0
    assert "every rank must be given " + words in res.stderr and "MPI_Abort" not in res.stderr


def test_fit_returns_on_every_rank_after_rank_0_wrote(tmp_path):
    """Every rank returns rank 0's metrics, once rank 0 has written the last checkpoint; a
    refusal met by rank 0 alone (OUT locked by a live process) is raised on every rank, so a
    script's sys.exit on each ends the run instead of leaving a rank waiting."""
    script = os.path.join(HERE, "mpi", "fail_rank.py")
    res = _run([MPIEXEC, "-n", "2", sys.executable, script, "returns", "out"], tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [
        f"returned 2 rows, checkpoint epoch 2 on rank {r}" for r in (0, 1)
    ]
    res = _run([MPIEXEC, "-n", "2", sys.executable, script, "locked", "held"], tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr


def test_a_mistake_under_mpiexec_is_one_line(tmp_path):
    """A mistake on the command line is every rank's: one line from rank 0, exit 2, no
    MPI_Abort; --help is printed once."""
    res = _run([MPIEXEC, "-n", "2", os.path.join(BIN, "numbacnn"), "train", "--model", "nope"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [res.stderr.splitlines()[0]]
    assert res.stderr.startswith("numbacnn: error: argument --model: ")
    res = _run([MPIEXEC, "-n", "2", os.path.join(BIN, "numbacnn"), "train", "--help"], tmp_path)
    assert res.returncode == 0 and res.stdout.count("usage: numbacnn train") == 1
    # found after parsing, still every rank's: one plain line, no MPI_Abort
    res = _run(
        [MPIEXEC, "-n", "2", os.path.join(BIN, "numbacnn"), "train", "--resume", "--overwrite"], tmp_path
    )
    assert res.returncode == 2 and res.stderr.startswith("numbacnn: error: --resume continues")
    assert len(res.stderr.splitlines()) == 1, res.stderr


@needs_mnist
def test_dropout_two_ranks_equal_one_rank(tmp_path):
    """vgg_small (two Dropout(0.5) layers; --sync-bn, float64) on 2 ranks x 8 = 1 rank x 16:
    each rank's share takes the global batch's rows of the dropout mask (offset by its first
    row); with every rank drawing the mask of rows 0.. the runs end 1.5 apart."""
    one = _steps(tmp_path, 1, "vgg_small", 16, True, "float64", "one")
    two = _steps(tmp_path, 2, "vgg_small", 16, True, "float64", "two")
    assert _max_diff(one, two, one.files) <= 1e-8


@needs_mnist
def test_numbacnn_train_under_mpiexec(tmp_path):
    """mpiexec -n 2 numbacnn train writes one checkpoint, one metrics file and one plot,
    recording world_size 2; the run resumes on 1 rank (the global batch does not change)."""
    argv = [os.path.join(BIN, "numbacnn"), "train", "--limit-train", "1024", "--limit-test", "256",
            "--epochs", "1", "--no-progress", "--out", "run"]  # fmt: skip
    res = _run([MPIEXEC, "-n", "2", *argv], tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.npz", "curves.png", "metrics.json"]
    assert res.stdout.count("final test accuracy") == 1 and res.stderr.count("epoch 1/1:") == 1
    assert "2 ranks: gradients all-reduced in 1 bucket(s), 0.24 MiB, in host memory" in res.stderr
    from numbacnn import checkpoint

    assert checkpoint.load(tmp_path / "run" / "checkpoint.npz").meta["world_size"] == 2
    res = _run([os.path.join(BIN, "numbacnn"), "train", "--out", "run", "--resume", "--epochs", "2",
                "--no-progress"], tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "resuming on 1 rank a run written by 2: the global batches are the same\n" in res.stderr
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [(r["epoch"], r["world_size"]) for r in rows] == [(1, 2), (2, 1)]
    assert rows[1]["test_accuracy"] > rows[0]["test_accuracy"]
    # back on 2 ranks, nothing to do: one result line (rank 0's), not one per rank
    res = _run(
        [MPIEXEC, "-n", "2", *argv[:1], "train", "--out", "run", "--resume", "--epochs", "2"], tmp_path
    )
    assert res.returncode == 0 and res.stdout.count("final test accuracy") == 1, res.stdout
    assert "after 2 epochs" in res.stdout and "nothing to do" in res.stderr
    # the other commands run on rank 0 alone: export writes once, without racing itself
    res = _run([MPIEXEC, "-n", "2", *argv[:1], "export", "--checkpoint", "run/checkpoint.npz", "--out",
                "m.safetensors"], tmp_path)  # fmt: skip
    assert res.returncode == 0 and res.stdout.count("wrote") == 1, (res.stdout, res.stderr)


def test_gradients_on_the_device_are_staged_through_pinned_memory(tmp_path):
    """The exchange on numba.cuda device gradients (the CUDA simulator's): the mpich wheel
    is not CUDA-aware, so the buckets go through pinned host memory, and every rank ends
    with the sum of the ranks' gradients; mixed host and device gradients are refused."""
    script = os.path.join(HERE, "mpi", "exchange_device.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = _run([MPIEXEC, "-n", "2", sys.executable, script], tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert lines == [f"rank {r}: gradients all-reduced in 3 bucket(s), 0.00 MiB, staged through pinned host "
                     "memory (MPI is not CUDA-aware)" for r in (0, 1)], res.stdout  # fmt: skip


def test_the_mpich_wheel_is_not_cuda_aware():
    """cuda_aware_mpi() asks the loaded libmpi (MPIX_Query_cuda_support): the wheel says no."""
    from numbacnn.distributed import cuda_aware_mpi

    assert cuda_aware_mpi() is False


def test_sync_batch_norm_of_features_two_and_three_ranks(tmp_path):
    """SyncBatchNorm from BatchNorm1d on (N, C) and (N, C, L) shares (11 and 7 rows over 2
    and 3 ranks) equals BatchNorm1d on the whole batch: y, dx, parameter gradients, running
    statistics, to 1e-12 in float64."""
    for ranks in ("2", "3"):
        res = _run(
            [MPIEXEC, "-n", ranks, sys.executable, os.path.join(HERE, "mpi", "sync_bn_shapes.py")], tmp_path
        )
        assert res.returncode == 0 and res.stdout == "ok\n", res.stderr


def test_the_api_checks_its_arguments():
    """One process: misuse of the distributed API is a clear error naming the argument."""
    from numbacnn import distributed as D
    from numbacnn.layers import BatchNorm1d, BatchNorm2d
    from numbacnn.models import build_model

    w = D.World()
    for call, kind, words in [
        (lambda: w.shard(-3), ValueError, "n must be >= 0"),
        (lambda: w.shard(2.5), TypeError, "n must be an int"),
        (lambda: D.shard_sizes(5, 0), ValueError, "size must be >= 1"),
        (lambda: D.convert_sync_batchnorm(build_model("resnet_cifar"), "x"), TypeError, "world must be"),
        (lambda: D.SyncBatchNorm(4, world="x"), TypeError, "world must be"),
        (lambda: D.GradientExchange(w, bucket_bytes=0), ValueError, "bucket_bytes must be >= 1"),
    ]:
        with pytest.raises(kind, match=words):
            call()
    assert w.shard(7) == (0, 7) and D.shard_sizes(7, 3) == {2, 3}
    model = build_model("lenet5")
    exchange = D.GradientExchange(w).attach(model)
    with pytest.raises(RuntimeError, match="already attached"):
        exchange.attach(model)
    exchange.detach()
    exchange.attach(model).detach()  # detached, it attaches again
    # None is this process's world; batch norms of both kinds are converted, sharing the arrays
    net = build_model("resnet_cifar")
    net.extra = BatchNorm1d(5)
    bn = net.bn1 if hasattr(net, "bn1") else next(m for m in net.modules() if type(m) is BatchNorm2d)
    weight = bn.weight
    D.convert_sync_batchnorm(net)
    assert not any(type(m) in (BatchNorm1d, BatchNorm2d) for m in net.modules())
    assert any(m.weight is weight for m in net.modules() if isinstance(m, D.SyncBatchNorm))
    assert net.extra.world is D.world() and D.world().size == 1
