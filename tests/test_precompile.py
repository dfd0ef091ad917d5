"""compile_ahead (numbacnn/kernels/cpu/precompile.py): a cold first batch's kernels compiled
by several processes at once, each kernel by one, then loaded from Numba's cache; nothing
computed changes. Each case runs in a fresh process with its own empty NUMBA_CACHE_DIR."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from numbacnn.kernels.cpu import precompile

STEP = r"""
import json, sys
import numpy as np
import numbacnn.functional as F
from numbacnn.kernels import jit_counts
from numbacnn.kernels.cpu.precompile import compile_ahead

x = np.linspace(-3, 3, 4 * 4 * 16 * 16, dtype=np.float32).reshape(4, 4, 16, 16)

def step():  # four kernels: tanh and relu, forward and backward
    y = F.tanh(x)
    r = F.relu(y)
    return F.tanh_backward(F.relu_backward(np.ones_like(r), y), y)

if sys.argv[2] == "warm-threads":
    F.relu(x)  # Numba's threads start: a fork now would copy only this one
ahead = compile_ahead(step, workers=int(sys.argv[1]))
before = jit_counts()
out = step()
after = jit_counts()
print(json.dumps({"ahead": ahead, "compiled": after[0] - before[0], "loaded": after[1] - before[1],
                  "out": out.tobytes().hex()}))
"""


def _run(code, cache, *args, workers_env=None):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    env.pop("NUMBACNN_JIT_WORKERS", None)
    if workers_env is not None:
        env["NUMBACNN_JIT_WORKERS"] = workers_env
    res = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_cold_step_is_compiled_by_several_processes_and_then_only_loaded(tmp_path):
    cold = _run(STEP, tmp_path / "cache", "8", "-")
    here, children, processes = cold["ahead"]
    assert processes == 4  # 8 asked, but no more processes than the step's 4 kernels
    assert children >= 1 and here + children == 4  # every kernel, each once
    assert cold["compiled"] == 0 and cold["loaded"] == children  # the step: the children's from disk
    again = _run(STEP, tmp_path / "cache", "2", "-")  # all on disk: nothing to fork for
    assert again["ahead"] is None and again["compiled"] == 0 and again["loaded"] == 4
    plain = _run(STEP, tmp_path / "plain", "1", "-")  # one worker: Numba's own JIT, as before
    assert plain["ahead"] is None and plain["compiled"] == 4
    assert cold["out"] == again["out"] == plain["out"]  # bit for bit


def test_no_fork_once_numbas_threads_run(tmp_path):
    res = _run(STEP, tmp_path / "cache", "2", "warm-threads")
    assert res["ahead"] is None and res["compiled"] == 3  # relu was compiled before


TRACE = r"""
import json, sys
import numpy as np
import numbacnn.functional as F
from numbacnn.kernels.cpu.precompile import kernel_calls

import multiprocessing
mm = np.memmap(sys.argv[1], dtype=np.float32, mode="r+", shape=(2, 3, 4, 4))
shared = np.frombuffer(multiprocessing.RawArray("f", 96), np.float32).reshape(2, 3, 4, 4)
shared[...] = -2.5  # shared with every fork: writing it in a child would change it here
own = np.full((2, 3, 4, 4), -3.5, np.float32)
calls = kernel_calls(lambda: [F.relu(a, inplace=True) for a in (mm, shared, own)])  # in place: relu writes a
calls += kernel_calls(lambda: 1 / 0)  # a failing step ends its trace, not the caller
mm.flush()
print(json.dumps({"names": [d.py_func.__qualname__ for d, _ in calls],
                  "shared": float(shared.min()), "own": float(own.max())}))
"""


def test_the_trace_records_kernels_and_writes_only_memory_numpy_allocated(tmp_path):
    """The trace zeroes what a kernel would write (a forked child's copy), but never memory
    behind a file or shared between processes: the parent would see it written."""
    path = tmp_path / "data.f32"
    np.full((2, 3, 4, 4), -1.5, np.float32).tofile(path)
    res = _run(TRACE, tmp_path / "cache", str(path))
    assert len(res["names"]) == 1 and "relu" in res["names"][0]  # one kernel, one signature
    assert (np.fromfile(path, np.float32) == -1.5).all()  # relu would have written zeros
    assert res["shared"] == -2.5 and res["own"] == 0.0


def test_workers_setting(monkeypatch):
    monkeypatch.setenv("NUMBACNN_JIT_WORKERS", "1")
    assert precompile.default_workers() == 1
    assert precompile.compile_ahead(lambda: pytest.fail("the step must not run")) is None
    monkeypatch.setenv("NUMBACNN_JIT_WORKERS", "two")
    with pytest.raises(
        ValueError, match=r"NUMBACNN_JIT_WORKERS must be a whole number of processes \(1: off\), got 'two'"
    ):
        precompile.default_workers()
    monkeypatch.delenv("NUMBACNN_JIT_WORKERS")
    assert 1 <= precompile.default_workers() <= min(len(os.sched_getaffinity(0)), precompile.MAX_WORKERS)


INTERRUPT = r"""
import json, os, signal, threading, time
import numpy as np
import numbacnn.functional as F
from numbacnn.kernels.cpu import precompile

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a shell's `cmd &` ignores it)
x = np.ones((2, 3, 8, 8), np.float32)
nothing = precompile.compile_ahead(lambda: 1 / 0, workers=2)  # a step that fails at once: nothing to do

def slow_step():  # the trace takes 3 s (in the child), so Ctrl-C reaches the parent while it waits
    time.sleep(3)
    F.tanh(x)

result = {"nothing": nothing}
for what in ("trace", "reap"):
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t = time.perf_counter()
    try:
        if what == "trace":
            precompile.compile_ahead(slow_step, workers=2)
        else:  # the parent done, its children still compiling
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            precompile._reap([pid])
        result[what] = "not interrupted"
        timer.cancel()
    except KeyboardInterrupt:
        result[what] = time.perf_counter() - t
    try:
        os.waitpid(-1, os.WNOHANG)
        result[what + " children left"] = True
    except ChildProcessError:
        result[what + " children left"] = False
print(json.dumps(result))
"""


def test_ctrl_c_stops_every_process_at_once(tmp_path):
    """Ctrl-C while the parent waits for the trace, and while it waits for its compiling
    children: KeyboardInterrupt at once, and no child goes on. (Ctrl-C while this process
    itself compiles is Numba's own case, as without compile_ahead.)"""
    res = _run(INTERRUPT, tmp_path / "cache")
    assert res["nothing"] is None
    for what in ("trace", "reap"):
        assert isinstance(res[what], float) and res[what] < 2, res  # not the 3 s or 30 s
        assert not res[what + " children left"], res


HANG = r"""
import json, os, threading, time
import numbacnn.kernels.cpu.precompile as precompile

precompile.TRACE_SECONDS = 1
t = time.perf_counter()
ahead = precompile.compile_ahead(lambda: threading.Event().wait(), workers=2)  # waits forever in the fork
seconds = time.perf_counter() - t
try:
    os.waitpid(-1, os.WNOHANG)
    children_left = True
except ChildProcessError:
    children_left = False
print(json.dumps({"ahead": ahead, "seconds": seconds, "children_left": children_left}))
"""


def test_a_step_that_never_returns_in_the_fork_is_given_up(tmp_path):
    """A fork copies one thread: a step waiting on another (a loader's) never returns there."""
    res = _run(HANG, tmp_path / "cache")
    assert res["ahead"] is None and res["seconds"] < 5 and not res["children_left"]


ORPHAN = r"""
import os, sys
import numpy as np
import numbacnn.functional as F
from numbacnn.kernels.cpu.precompile import compile_ahead

x = np.ones((2, 3, 8, 8), np.float32)
print(os.getpid(), flush=True)
compile_ahead(lambda: F.max_pool2d(F.conv2d(x, np.ones((8, 3, 3, 3), np.float32)), 2), workers=2)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc (Linux)")
def test_killing_the_training_process_ends_its_compiling_children(tmp_path):
    """kill -9 of the parent: its children end too (Linux's parent-death signal), not go on
    compiling for a run that is gone."""
    import signal
    import time

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NUMBACNN_JIT_WORKERS", None)
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN], env=env, stdout=subprocess.PIPE, text=True)
    parent = int(proc.stdout.readline())
    children, deadline = [], time.monotonic() + 60
    while not children and time.monotonic() < deadline:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            children = [int(p) for p in f.read().split()]
        time.sleep(0.05)
    assert children, "no child was forked"
    os.kill(parent, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in children)


def test_a_bad_workers_setting_stops_fit_before_it_makes_anything(tmp_path, monkeypatch):
    from numbacnn.data import DataLoader
    from numbacnn.models import build_model
    from numbacnn.optim import SGD
    from numbacnn.train import fit

    model = build_model("lenet5")
    x, y = np.zeros((8, 1, 32, 32), np.float32), np.zeros(8, np.int64)
    monkeypatch.setenv("NUMBACNN_JIT_WORKERS", "two")
    with pytest.raises(ValueError, match="NUMBACNN_JIT_WORKERS must be a whole number"):
        fit(
            model,
            SGD(model.parameters(), lr=0.1),
            DataLoader(x, y, 4),
            DataLoader(x, y, 4),
            1,
            tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


HELD = r"""
import json, multiprocessing, os, time
import numpy as np
import numbacnn.functional as F
import numbacnn.kernels.cpu.precompile as precompile

precompile.TRACE_SECONDS = 20
x = np.ones((2, 3, 8, 8), np.float32)

def outlive():  # holds every fd it inherited but this test's output, for 8 s
    os.close(1)
    os.close(2)
    time.sleep(8)

def step():  # starts a process that outlives the step (a loader's worker, say)
    multiprocessing.get_context("fork").Process(target=outlive, daemon=False).start()
    F.tanh(x)

t = time.perf_counter()
ahead = precompile.compile_ahead(step, workers=2)
print(json.dumps({"ahead": ahead, "seconds": time.perf_counter() - t}))
os._exit(0)  # not waiting for the child's child
"""


def test_the_trace_answer_is_read_even_if_the_step_left_a_process_holding_the_pipe(tmp_path):
    res = _run(HELD, tmp_path / "cache")
    assert res["ahead"] is not None and res["seconds"] < 6  # not the 8 s of the process or TRACE_SECONDS


@pytest.mark.parametrize("user_level", [None, "3"])
def test_kernels_compiled_ahead_are_optimised_at_ahead_opt(user_level, monkeypatch):
    """_work has LLVM optimise at level AHEAD_OPT (2: 20% less compile than Numba's 3 for
    LeNet-5's kernels, the same speed in `numbacnn bench`), unless NUMBA_OPT is set, and puts
    Numba's level back afterwards: the levels LLVM's pass builders get are recorded (Numba's
    cheap first pass runs at 0)."""
    import multiprocessing

    from numba import njit, types
    from numba.core import codegen, config

    if user_level is None:
        monkeypatch.delenv("NUMBA_OPT", raising=False)
    else:
        monkeypatch.setenv("NUMBA_OPT", user_level)
    config.reload_config()
    before = config.OPT
    seen = []
    builder = codegen.CPUCodegen._pass_builder

    def spy(self, **kwargs):
        seen.append(int(kwargs.get("opt", config.OPT)))
        return builder(self, **kwargs)

    monkeypatch.setattr(codegen.CPUCodegen, "_pass_builder", spy)
    kernel = njit(lambda a: a + 1.0)
    counts, lock = multiprocessing.RawArray("q", 2), multiprocessing.Lock()
    assert precompile._work([(kernel, [(types.float64,)])], counts, lock) == 1
    full = {level for level in seen if level}  # the full pipeline's levels
    assert full == ({precompile.AHEAD_OPT} if user_level is None else {int(user_level)}), seen
    assert config.OPT == before and type(config.OPT) is type(before)
    assert kernel(1.0) == 2.0


@pytest.mark.parametrize("user", ["default", "off", "frozen"])
def test_compiling_ahead_collects_garbage_less_often_and_restores_the_collector(user, monkeypatch):
    """While _work compiles, Python's young collections run every GC_THRESHOLD allocations, not
    every 700 (Numba's compiler makes and drops many objects: LeNet-5's kernels 12% less time),
    and the objects from before are frozen; the thresholds are put back and the objects
    unfrozen afterwards, also when a kernel fails to compile."""
    import gc
    import multiprocessing

    from numba import njit, types
    from numba.core import codegen

    seen = []
    builder = codegen.CPUCodegen._pass_builder

    def spy(self, **kwargs):
        seen.append((gc.get_threshold()[0], gc.get_freeze_count() > 0))
        return builder(self, **kwargs)

    monkeypatch.setattr(codegen.CPUCodegen, "_pass_builder", spy)
    saved = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    if user == "off":  # a user's threshold 0 (automatic collection off) is kept
        gc.set_threshold(0, *saved[1:])
    elif user == "frozen":  # objects a user froze stay frozen, and nothing more is frozen
        gc.freeze()
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    good = njit(lambda a: a * 2.0)
    bad = njit(lambda a: a.no_such_attribute)
    counts, lock = multiprocessing.RawArray("q", 2), multiprocessing.Lock()
    kernels = [(bad, [(types.float64,)]), (good, [(types.float64,)])]
    try:
        assert precompile._work(kernels, counts, lock) == 1
        during = {
            "default": (precompile.GC_THRESHOLD, True),
            "off": (0, True),
            "frozen": (precompile.GC_THRESHOLD, True),
        }[user]
        assert seen and set(seen) == {during}
        assert gc.get_threshold() == before
        after = gc.get_freeze_count()  # (a frozen object that is freed leaves the count)
        assert after <= frozen and (after > 0) == (frozen > 0)
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
    assert good(2.0) == 4.0
