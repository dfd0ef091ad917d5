"""Configuration of the CUDA tests (tests/cuda).

Two ways to run them:

* on a machine with an NVIDIA GPU:        pytest -q tests/cuda
* anywhere, with Numba's CUDA simulator:  NUMBA_ENABLE_CUDASIM=1 pytest -q tests/cuda
  (the variable must be set before numba is imported, i.e. in the environment).

In a plain `pytest` run without either, test_cuda_sim.py skips itself at import.

The simulator runs every CUDA thread as a Python thread, so the tests use tiny shapes.
The simulator evaluates the dropout hash with NumPy uint64 scalars, whose (intended)
wrap-around multiplication emits "overflow encountered" RuntimeWarnings: test_cuda_sim.py
silences them (pytestmark).

The shared assertions of tests/conftest.py (assert_close, check_op_vs_torch, the tolerance table) are
re-exported here: both files are imported under the module name "conftest", and a test
module's `from conftest import assert_close` gets whichever pytest imported last, so it must
find the same names in this one (tests/conftest.py explains the alias it registers).
"""

import os

from _numbacnn_tests_conftest import *  # noqa: F401,F403  the shared helpers, see above

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if SIM:
    # Speed, not behaviour: the simulator's block scheduler (BlockManager.run) polls its
    # threads in a loop that holds the GIL, so the Python threads that ARE the CUDA threads
    # wait for it. The same loop, sleeping 50 us per round, runs the tiled kernels (a
    # cuda.syncthreads() per staged tile) about 2x faster.
    import time

    import numpy as _np
    from numba.cuda.simulator import kernel as _sim_kernel

    def _run_block(self, grid_point, *args):
        threads, live, blocked = set(), set(), set()
        for block_point in _np.ndindex(*self._block_dim):

            def target():
                self._f(*args)

            t = _sim_kernel.BlockThread(target, self, grid_point, block_point, self._debug)
            t.start()
            threads.add(t)
            live.add(t)
        while live:
            time.sleep(0.00005)  # the only change: let the block's threads run
            for t in live:
                if t.syncthreads_blocked:
                    blocked.add(t)
                elif t.exception:
                    for other in threads:
                        other.abort = True
                        other.syncthreads_blocked = False
                        other.syncthreads_event.set()
                    raise t.exception[0].with_traceback(t.exception[1])
            if live == blocked:
                for t in blocked:
                    t.syncthreads_blocked = False
                    t.syncthreads_event.set()
                blocked = set()
            live = {t for t in live if t.is_alive()}
        for t in threads:
            if t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    if hasattr(_sim_kernel, "BlockManager") and hasattr(_sim_kernel, "BlockThread"):
        _sim_kernel.BlockManager.run = _run_block


def cuda_usable():
    """(usable, reason): the simulator is on, or numba sees a CUDA GPU."""
    try:
        from numba import config, cuda
    except Exception as exc:  # pragma: no cover
        return False, f"numba.cuda is not importable ({exc})"
    if SIM:
        if not config.ENABLE_CUDASIM:
            return False, (
                "NUMBA_ENABLE_CUDASIM=1 was set after numba was imported; "
                "set it in the environment before starting pytest"
            )
        return True, "CUDA simulator"
    try:
        if cuda.is_available():
            return True, "CUDA GPU"
    except Exception:  # pragma: no cover
        pass
    return False, (
        "no CUDA GPU and the CUDA simulator is off: run "
        "`NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda` to test the CUDA "
        "kernels without a GPU"
    )
