"""Checkpoints: one ``.npz`` file of plain arrays, no pickle, written atomically.

Layout of the archive (every member a numeric/bool/bytes array, never an object array)::

    __numbacnn_format__   uint8 bytes of b"numbacnn-checkpoint"   (our marker)
    __numbacnn_version__  int64 scalar, FORMAT_VERSION
    __meta__              uint8 bytes of a UTF-8 JSON document (epoch, args, rng state, metrics...)
    model/<name>          model.state_dict() entries, e.g. model/conv1.weight
    optim/<name>          optimizer (and schedule) state entries

``save`` writes through ``numbacnn._io.atomic_write``: a crash or Ctrl-C at any moment
leaves either the old complete checkpoint or the new complete one, never a torn file.

``load`` reads with ``np.load(allow_pickle=False)`` and turns every way a file can be wrong
(not a zip, truncated, foreign archive, object arrays, bad JSON) into ``CheckpointError``.
"""

import json
import os
from typing import NamedTuple

import numpy as np

from ._io import atomic_write

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save",
    "load",
    "load_model_state",
    "FORMAT_MARKER",
    "FORMAT_VERSION",
]

FORMAT_MARKER = b"numbacnn-checkpoint"
FORMAT_VERSION = 1
_MARKER_KEY = "__numbacnn_format__"
_VERSION_KEY = "__numbacnn_version__"
_META_KEY = "__meta__"
_MODEL = "model/"
_OPTIM = "optim/"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit the model it is loaded into."""


class Checkpoint(NamedTuple):
    model_state: dict
    optim_state: dict
    meta: dict


def _bytes_array(b):
    return np.frombuffer(bytes(b), dtype=np.uint8).copy()


def _plain_array(section, name, value):
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise TypeError(
            f"checkpoint.save: {section} entry {name!r} has dtype=object; "
            "only numeric/bool arrays can be stored (no pickle)"
        )
    return arr


def save(path, model_state, optim_state=None, meta=None):
    """Write ``{model_state, optim_state, meta}`` to ``path`` (one .npz, atomically).

    model_state / optim_state: ``{name: array}``; meta: a JSON-serialisable dict.
    """
    arrays = {
        _MARKER_KEY: _bytes_array(FORMAT_MARKER),
        _VERSION_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
        _META_KEY: _bytes_array(json.dumps(meta or {}, sort_keys=True).encode("utf-8")),
    }
    for name, value in (model_state or {}).items():
        arrays[_MODEL + name] = _plain_array("model_state", name, value)
    for name, value in (optim_state or {}).items():
        arrays[_OPTIM + name] = _plain_array("optim_state", name, value)

    def write(f):
        np.savez(f, **arrays)

    atomic_write(path, write)


def load(path):
    """Read a checkpoint written by ``save``; returns ``Checkpoint(model_state, optim_state,
    meta)``. Raises ``CheckpointError`` with the reason for anything that is not one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    try:
        obj = np.load(path, allow_pickle=False)
    except ValueError:
        # np.load falls back to unpickling for anything that is neither .npy nor .npz;
        # allow_pickle=False makes that a ValueError instead of running pickle. (numpy's own
        # message invites loading it with pickle, which a checkpoint never needs: drop it.)
        raise CheckpointError(
            f"{path} is not a numbacnn checkpoint: not an .npz archive (and pickled data is never loaded)"
        ) from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, ...
        raise CheckpointError(
            f"{path} is corrupt or truncated, not a readable checkpoint: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} holds a single .npy array, not a numbacnn checkpoint (.npz archive)")
    try:
        # Read every member eagerly: NpzFile is lazy, and a truncated or corrupted member
        # only fails when it is read.
        with obj as npz:
            data = {key: npz[key] for key in npz.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CheckpointError(
                f"{path} is not a numbacnn checkpoint: it holds object "
                f"(pickled) arrays, which are never loaded ({e})"
            ) from None
        raise CheckpointError(f"{path} is corrupt, not a readable checkpoint: {e}") from None
    except Exception as e:
        raise CheckpointError(
            f"{path} is corrupt or truncated, not a readable checkpoint: {type(e).__name__}: {e}"
        ) from None

    marker = data.get(_MARKER_KEY)
    if marker is None or marker.dtype != np.uint8 or marker.tobytes() != FORMAT_MARKER:
        raise CheckpointError(
            f"{path} is an .npz archive but not a numbacnn checkpoint "
            f"(no {_MARKER_KEY!r} marker; keys: {sorted(data)[:8]})"
        )
    version = data.get(_VERSION_KEY)
    if version is None or version.shape != () or int(version) != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported numbacnn checkpoint version "
            f"{None if version is None else version.tolist()} "
            f"(this numbacnn reads version {FORMAT_VERSION})"
        )
    raw_meta = data.get(_META_KEY)
    try:
        meta = json.loads(raw_meta.tobytes().decode("utf-8")) if raw_meta is not None else {}
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: the {_META_KEY!r} entry is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: the {_META_KEY!r} entry is not a JSON object (got {type(meta).__name__})"
        )
    if not isinstance(meta.get("config", {}), dict):
        raise CheckpointError(f"{path}: meta['config'] is not a JSON object")
    model_state, optim_state = {}, {}
    for key, value in data.items():
        if key.startswith(_MODEL):
            model_state[key[len(_MODEL) :]] = value
        elif key.startswith(_OPTIM):
            optim_state[key[len(_OPTIM) :]] = value
    return Checkpoint(model_state, optim_state, meta)


def _some(names, at_most=6):
    """The first names of a long list, and how many more (a whole model's keys are hundreds)."""
    return str(names) if len(names) <= at_most else f"{names[:at_most]} and {len(names) - at_most} more"


def check_state(expected, state, what="model"):
    """Raise CheckpointError unless ``state`` has exactly the names and shapes of
    ``expected`` (both ``{name: array}``)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_some(unexpected)}")
        raise CheckpointError(f"checkpoint does not fit the {what}: " + "; ".join(parts))
    for k, v in expected.items():
        got = np.shape(state[k])
        if got != np.shape(v):
            raise CheckpointError(
                f"checkpoint does not fit the {what}: {k!r} has shape {got} in the checkpoint "
                f"but {np.shape(v)} in the {what}"
            )


def load_model_state(model, state):
    """Check names/shapes against ``model.state_dict()``, then load (cast to the model's
    dtypes)."""
    expected = model.state_dict()
    check_state(expected, state)
    for k in expected:
        kind = np.asarray(state[k]).dtype.kind
        if kind not in "fiub" or (kind != "f") != (np.asarray(expected[k]).dtype.kind != "f"):
            raise CheckpointError(
                f"checkpoint does not fit the model: {k!r} has dtype {np.asarray(state[k]).dtype} "
                f"in the checkpoint but {np.asarray(expected[k]).dtype} in the model"
            )
    model.load_state_dict({k: np.asarray(state[k], dtype=np.asarray(expected[k]).dtype) for k in expected})
