"""The one random generator numbacnn draws from: weight init, dropout seeds, shuffling defaults.

`seed(s)` makes a run reproducible; `get_state()`/`set_state()` round-trip the generator
through plain JSON-able data, so a checkpoint can store it without pickle.

`rows_from(lo)` says that the batch now going through the model is rows lo, lo+1, ... of a
larger batch (a rank's share of a global batch, numbacnn.distributed); draws made per
element (dropout's masks) are then those of the whole batch's rows, and K ranks drop what
one process drops. `first_row()` is lo (0 outside).
"""

import contextlib
import json

import numpy as np

_rng = np.random.default_rng(0)


def seed(s):
    """Reseed the global generator."""
    global _rng
    _rng = np.random.default_rng(int(s))


def rng():
    """The global numpy Generator."""
    return _rng


def get_state():
    """The generator state as a JSON string."""
    return json.dumps(_rng.bit_generator.state)


def set_state(state):
    """Restore a state produced by `get_state()`."""
    _rng.bit_generator.state = json.loads(state)


_first_row = 0


def first_row():
    """The row of the larger batch the current batch starts at (0 unless within rows_from)."""
    return _first_row


@contextlib.contextmanager
def rows_from(lo):
    """Within: the current batch is rows lo, lo + 1, ... of a larger batch (see above)."""
    global _first_row
    previous, _first_row = _first_row, int(lo)
    try:
        yield
    finally:
        _first_row = previous
