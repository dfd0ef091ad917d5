"""The one random generator numbacnn draws from: weight init, dropout seeds, shuffling defaults.

`seed(s)` makes a run reproducible; `get_state()`/`set_state()` round-trip the generator
through plain JSON-able data, so a checkpoint can store it without pickle.
"""

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
