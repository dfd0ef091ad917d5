"""numbacnn bench: the smoke run writes its table, JSON and chart, with every implementation
timed (each external baseline in its own process); the PyTorch mirror of a model has the
numbacnn model's parameters; a user's conv2d (--kernel) is checked against the oracle before
it is timed, and a wrong one is shown, not timed."""

import json
import os
import re

import numpy as np
import pytest

from numbacnn import functional as F
from numbacnn.bench import (
    _interleave,
    _model,
    _numbacnn,
    _Server,
    _torch,
    _torch_model,
    cases,
    check_kernel,
    cpu_times,
    machine_peak,
    run,
    steal_share,
)
from numbacnn.cli import main

USER_KERNELS = """
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    k = weight.shape[2]
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, weight).astype(x.dtype)


def flipped(x, weight, bias=None, stride=1, padding=0):  # a convolution, not a cross-correlation
    return conv2d(x, np.ascontiguousarray(weight[:, :, ::-1, ::-1]), bias, stride, padding)
"""


def test_bench_quick_writes_the_table_json_and_chart(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(USER_KERNELS)
    kernels = ["--kernel", f"{tmp_path / 'mine.py'}:conv2d", "--kernel", f"{tmp_path / 'mine.py'}:flipped"]
    assert main(["bench", "--quick", "--out", str(tmp_path)] + kernels) == 0
    out = capsys.readouterr().out
    assert "machine peak (float32): " in out and " x 2 flops x " in out and "vs torch" in out
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["notes"] == {} and report["peak_gflops"] == pytest.approx(machine_peak()[0])
    assert report["rounds"] == 1 and " range " not in out  # --quick: one round, no spread to show
    rows = {r["case"]: r for r in report["rows"]}
    assert list(rows) == [name for name, *_ in cases(quick=True)]
    conv = rows["LeNet C3 6->16 5x5 14x14 conv2d"]
    for impl in ("numbacnn", "numbacnn 1 thread", "numpy im2col", "scipy", "torch"):
        assert conv[impl]["ms"] > 0 and conv[impl]["gflops"] > 0, impl
    assert conv["vs_torch"] == pytest.approx(conv["torch"]["ms"] / conv["numbacnn"]["ms"])
    # your kernels: a right one is timed on the forward rows only, a wrong one is not timed
    assert report["kernels"] == ["conv2d", "flipped"] and "conv2d   flipped" in out
    assert conv["conv2d"]["ms"] > 0 and conv["flipped"] is None
    assert rows["LeNet C3 6->16 5x5 14x14 dw"]["conv2d"] is None
    assert report["kernel_checks"]["conv2d"] == {}
    why = report["kernel_checks"]["flipped"]["LeNet C3 6->16 5x5 14x14 conv2d"]
    assert (
        why.startswith("wrong: y[0, 0, 0, 0] = ")
        and "flipped on LeNet C3 6->16 5x5 14x14 conv2d: not timed" in out
    )
    step = rows["LeNet-5 step b8"]
    assert step["numbacnn"]["ms"] > 0 and step["torch"]["ms"] > 0 and step["scipy"] is None
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the share of CPU time stolen by other tenants while each implementation ran
    assert set(report["steal"]) == {"numbacnn", "numbacnn 1 thread", "numpy im2col", "scipy", "torch"}
    for share in report["steal"].values():
        assert share is None or 0 <= share <= 1
    if cpu_times() is not None:
        assert "(steal, /proc/stat): numbacnn " in out


def test_interleave_times_each_case_in_turn_and_takes_the_median():
    """Case by case, round by round, the two implementations alternate who goes first; each
    figure is the median over the rounds (the fastest for whole epochs), with the rounds'
    lowest and highest ratio; a case either cannot run is None."""
    calls = []
    ours_t = {"a": [1.0, 2.0, 9.0], "e": [5.0, 4.0, 6.0], "n": [1.0, 1.0, 1.0]}
    theirs_t = {"a": [2.0, 2.0, 2.0], "e": [8.0, 8.0, 9.0], "n": [None, None, None]}

    def ours(name):
        calls.append(("ours", name))
        return ours_t[name][sum(1 for who, n in calls if who == "ours" and n == name) - 1]

    def theirs(name):
        calls.append(("theirs", name))
        return theirs_t[name][sum(1 for who, n in calls if who == "theirs" and n == name) - 1]

    mine, other, spread = _interleave(["a", "e", "n"], ours, theirs, 3, best={"e"})
    assert calls[:6] == [("ours", "a"), ("theirs", "a"), ("theirs", "a"), ("ours", "a"), ("ours", "a"),
                         ("theirs", "a")]  # fmt: skip
    assert [n for _, n in calls] == ["a"] * 6 + ["e"] * 6 + ["n"] * 6  # one case at a time
    assert mine == {"a": 2.0, "e": 4.0, "n": 1.0} and other == {"a": 2.0, "e": 8.0, "n": None}
    assert spread["a"] == (pytest.approx(2 / 9), 2.0) and spread["e"] == (1.5, 2.0) and spread["n"] is None
    for bad in (0, -1, True, 2.0, np.int64(0)):
        with pytest.raises(
            ValueError, match=re.escape(f"bench: rounds must be a whole number >= 1, got {bad!r}")
        ):
            run(quick=True, rounds=bad)


def test_the_torch_server_times_cases_by_name_and_reports_why_it_stopped(tmp_path, monkeypatch):
    """The PyTorch process that `run` times in turn with numbacnn: a case's seconds by name; a
    process that cannot start (here PyTorch hidden) or dies is one line in `error`, and every
    later request None."""
    server = _Server("torch", True, np.float32, 1)
    try:
        assert server.error is None and server.time("avg pool 2x2 6x28x28") > 0
        assert server.time("no such case") is None and "KeyError: 'no such case'" in server.error
        assert server.time("avg pool 2x2 6x28x28") is None
    finally:
        server.close()
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    hidden = _Server("torch", True, np.float32, 1)
    assert hidden.error == "PyTorch is not installed (pip install torch==2.13.0, the CPU build)"
    assert hidden.time("avg pool 2x2 6x28x28") is None
    hidden.close()


def test_an_interrupted_start_ends_the_torch_process(monkeypatch):
    """An interrupt while the PyTorch process starts (before it says it is ready) kills it:
    it must not go on importing PyTorch on its own after the run has ended."""
    import subprocess

    import numbacnn.bench as bench

    started, popen = [], subprocess.Popen

    def spy(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.subprocess, "Popen", spy)
    monkeypatch.setattr(_Server, "_answer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _Server("torch", True, np.float32, 1)
    assert len(started) == 1 and started[0].poll() is not None  # ended, and waited for


def test_steal_share_reads_proc_stat():
    """The steal column of /proc/stat's cpu line, as a share of the busy and stolen ticks in
    between, clamped to [0, 1] (a counter that goes backwards reads as 0)."""
    assert steal_share((10, 1000), (30, 1400)) == pytest.approx(0.05)
    assert steal_share(None, (30, 1400)) is None and steal_share((30, 1400), (30, 1400)) is None
    assert steal_share((100, 1000), (90, 1100)) == 0.0
    now = cpu_times()
    if now is not None:  # Linux: the counters only grow
        assert 0 <= now[0] <= now[1]


@pytest.mark.parametrize("name,channels", [("lenet5", 1), ("resnet_cifar", 3), ("vgg_block", 64)])
def test_the_torch_mirror_has_the_models_parameters(name, channels):
    import torch

    ours = _model(name, channels)
    theirs = _torch_model(name, channels)
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_parameters()
    x = torch.from_numpy(np.zeros((2, channels, 32, 32), np.float32))
    assert tuple(theirs(x).shape) == (2, 10)


def test_the_inference_row_runs_eval_mode_forwards():
    """The full run's ResNet-20 inference row: numbacnn in eval mode (batch norms folded into
    the convs) and torch under no_grad, both giving the logits of the batch."""
    (row,) = [c for c in cases() if c[1] == "inference"]
    assert row[0] == "ResNet-20 inference b64" and row[3] == 64 * _model("resnet_cifar", 3).macs(
        (1, 3, 32, 32)
    )
    params = dict(row[2], N=2)
    assert _numbacnn("inference", params, np.float32)().shape == (2, 10)
    assert tuple(_torch("inference", params, np.float32)().shape) == (2, 10)
    assert not [c for c in cases(quick=True) if c[1] == "inference"]


def test_check_kernel_names_what_is_wrong():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = F.conv2d(x, w, None, 2, 1)
    assert check_kernel(lambda *a: y.copy(), x, w, 2, 1) is None
    assert check_kernel(lambda *a: y.astype(np.float64), x, w, 2, 1) == (
        "returned float64 (2, 4, 5, 5), expected float32 (2, 4, 5, 5)"
    )
    assert check_kernel(lambda *a: y[:, :, :4], x, w, 2, 1).startswith("returned float32 (2, 4, 4, 5)")
    assert check_kernel(lambda *a: y.tolist(), x, w, 2, 1).startswith("returned a list, expected a NumPy")
    nan = y.copy()
    nan[1, 2, 3, 4] = np.nan
    assert check_kernel(lambda *a: nan, x, w, 2, 1).startswith("wrong: y[1, 2, 3, 4] = nan, expected ")

    def fails(x, w, b, stride, padding):
        raise ValueError("only stride 1\nsecond line")

    assert check_kernel(fails, x, w, 2, 1) == "raised ValueError: only stride 1"

    def scribbles(x, w, b, stride, padding):
        y = F.conv2d(x, w, None, stride, padding)
        x[0, 0, 0, 0] = 7.0
        return y

    assert check_kernel(scribbles, x, w, 2, 1) == (
        "modified its argument x (a conv2d must leave its inputs as they were)"
    )


def test_bench_kernel_mistakes_are_one_line(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(USER_KERNELS)
    for spec, says in [
        (f"{tmp_path / 'mine.py'}:nope", "'nope' is not defined in"),
        (f"{tmp_path / 'absent.py'}:conv2d", "not found, expected a .py file"),
        ("conv2d", "name the function as FILE.py:FUNCTION or MODULE:FUNCTION"),
    ]:
        assert main(["bench", "--quick", "--out", str(tmp_path / "b"), "--kernel", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("numbacnn: error: ") and says in err[0], err
    for rounds in ("0", "two", "101"):
        assert main(["bench", "--quick", "--out", str(tmp_path / "b"), "--rounds", rounds]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        says = f"argument --rounds: expected an integer between 1 and 100, got '{rounds}'"
        assert len(err) == 1 and err[0].startswith("numbacnn: error: ") and says in err[0], err
    assert not (tmp_path / "b" / "bench.json").exists()


def test_kernel_labels_and_headers_never_clash():
    """Column labels: the function's name, FILE:FUNCTION when names repeat or are reserved
    (a built-in column or a JSON row key), the whole spec when even that repeats; headers
    longer than 9 characters or equal after cutting become #<i>, named in a legend."""
    from numbacnn.bench import RESERVED, _headers
    from numbacnn.cli import _kernel_labels

    specs = ["a/good.py:conv2d", "b/good2.py:conv2d", "x.py:case", "y.py:torch", "z.py:fast"]
    assert _kernel_labels(specs, RESERVED) == [
        "good.py:conv2d",
        "good2.py:conv2d",
        "x.py:case",
        "y.py:torch",
        "fast",
    ]
    assert _kernel_labels(["a/k.py:f", "b/k.py:f"], RESERVED) == ["a/k.py:f", "b/k.py:f"]
    heads = _headers(["good.py:conv2d", "good2.py:conv2d", "fast", "im2col"])
    assert heads == {"good.py:conv2d": "#1", "good2.py:conv2d": "#2", "fast": "fast", "im2col": "#4"}
    assert _headers(["a_very_long_kernel_name", "kernel1"])["kernel1"] == "kernel1"  # "#1" cannot clash
    with pytest.raises(ValueError, match="'macs' is used twice or is a built-in column or row key"):
        run(quick=True, kernels=[("macs", F.conv2d)])


def test_a_kernel_that_fails_while_timed_is_an_error_not_a_crash():
    from numbacnn.bench import _user_column

    calls = []

    def once(x, w, b, stride, padding):  # right the first time, then it fails
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("only once")
        return F.conv2d(x, w, None, stride, padding)

    def leaves(x, w, b, stride, padding):
        if calls:
            raise SystemExit(3)
        calls.append(1)
        return F.conv2d(x, w, None, stride, padding)

    times, why = _user_column(once, True, np.float32)
    first, second = why.values()  # the first row fails while timed, the second when checked
    assert (first, second) == (
        "raised RuntimeError while it was timed: only once",
        "raised RuntimeError: only once",
    )
    assert all(t is None for t in times.values())
    calls.clear()
    times, why = _user_column(leaves, True, np.float32)
    assert list(why.values()) == [
        "raised SystemExit (it called sys.exit(3)) while it was timed",
        "raised SystemExit (it called sys.exit(3))",
    ]

    def reshapes(x, w, b, stride, padding):  # changes x's shape in place
        y = F.conv2d(x, w, None, stride, padding)
        x.shape = (x.shape[0], -1)
        return y

    _, why = _user_column(reshapes, True, np.float32)
    assert set(why.values()) == {"modified its argument x (a conv2d must leave its inputs as they were)"}

    class Odd(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    def odd(*args):
        raise Odd()

    def gen_exit(*args):
        raise GeneratorExit("gen")

    assert set(_user_column(odd, True, np.float32)[1].values()) == {"raised Odd"}
    assert set(_user_column(gen_exit, True, np.float32)[1].values()) == {"raised GeneratorExit: gen"}
    masked = np.ma.masked_array(np.zeros((8, 6, 28, 28), np.float32), mask=True)
    _, why = _user_column(lambda *a: masked, True, np.float32)
    assert all(w.startswith("returned float32") or w.startswith("wrong: ") for w in why.values())


def test_an_interrupted_bench_leaves_no_empty_folder(tmp_path):
    (tmp_path / "stop.py").write_text("def conv2d(*args):\n    raise KeyboardInterrupt\n")
    out = tmp_path / "new" / "bench"
    assert main(["bench", "--quick", "--out", str(out), "--kernel", f"{tmp_path / 'stop.py'}:conv2d"]) == 130
    assert not (tmp_path / "new").exists()  # nor the folder made above it


def test_machine_peak_is_measured_and_shown_as_the_lectures_formula():
    """The peak is cores x one core's measured FMA throughput (kernels/cpu/peak.py), once per
    dtype and process; float64 is half of float32's; the text gives the formula with the
    clock that measurement implies, and /proc/cpuinfo's beside it.  The implied clock of a
    real core lies between 0.5 and 6 GHz (a core with one FMA unit reads as half its clock)."""
    from numbacnn.kernels.cpu.peak import CHAINS, LANES, _fma_chains

    peak32, how32 = machine_peak(np.float32)
    assert machine_peak(np.dtype("float32")) == (peak32, how32)  # measured once
    peak64, how64 = machine_peak(np.float64)
    cores = len(os.sched_getaffinity(0))
    ghz = float(re.search(r"x 2 flops x ([0-9.]+) GHz", how32).group(1))
    assert 0.5 < ghz < 6 and f"{cores} cores x " in how32 and "measured on one core" in how32
    per_core = float(re.search(r"x (\d+) GFLOP/s measured", how32).group(1))  # printed rounded
    assert peak32 == pytest.approx(cores * per_core, abs=cores * 0.5)
    assert peak64 == pytest.approx(peak32 / 2, rel=0.5)  # separately measured: the clock moves
    s = np.full(CHAINS * LANES, 2.0, np.float32)
    _fma_chains(s, 3, np.float32(0.5), np.float32(1.0))  # 2 -> 2 (a fixed point): 3 steps
    assert (s == 2).all()
    s[:] = 0
    _fma_chains(s, 2, np.float32(3.0), np.float32(1.0))  # 0 -> 1 -> 4
    assert (s == 4).all()
