"""Argument checks shared by functional, shapes, the layers and the data API: one
implementation of each, so every user mistake gets the same kind of message.

Conventions (docs/CONTRACT.md): a wrong TYPE raises TypeError, a wrong VALUE or SHAPE raises
ValueError, and the message starts with the operation (`op`), names the argument and shows
the value, shapes or dtypes involved.  `bool` is not an int here (Python says it is).
"""

import numpy as np

from .kernels import backend, is_device_array

__all__ = [
    "labels_checked",
    "is_int",
    "check_int",
    "check_bool",
    "check_number",
    "pair",
    "positive_pair",
    "float_array",
    "same_dtype",
    "same_shape",
    "FLOAT_DTYPES",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_int(value):
    """True for Python and NumPy integers, False for bool / np.bool_ and everything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(op, name, value, minimum=None):
    """`value` as a Python int; TypeError unless it is an integer (not a bool), ValueError if
    it is below `minimum`."""
    if not is_int(value):
        raise TypeError(f"{op}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_bool(op, name, value):
    """`value` as a bool; TypeError unless it is a bool (or np.bool_): 0, 1 and "yes" are not."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_number(op, name, value, minimum=None, maximum=None, above=None, finite=False):
    """`value` as a float: TypeError unless it is a real number (not a bool, not a string),
    ValueError if it is NaN or outside [minimum, maximum] or not > `above`, or (finite=True)
    infinite."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: {name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if finite and not np.isfinite(value):
        raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
    low_ok = (minimum is None or value >= minimum) and (above is None or value > above)
    if not (low_ok and (maximum is None or value <= maximum)):  # NaN fails here too
        bounds = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
                  f"<= {maximum}" if maximum is not None else ""]  # fmt: skip
        raise ValueError(f"{op}: {name} must be {' and '.join(b for b in bounds if b)}, got {value!r}")
    return value


# Sizes, strides, paddings and dilations beyond this are typos (and overflow int64 index math).
MAX_GEOMETRY = 2**31 - 1


def pair(value, name, op):
    """An int or a pair of ints as an (h, w) tuple of Python ints.

    Raises ValueError for a tuple/list of another length or an entry larger than
    MAX_GEOMETRY in magnitude, TypeError for anything else that is not an int (floats,
    strings, bools)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    if not (is_int(a) and is_int(b)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if max(abs(int(a)), abs(int(b))) > MAX_GEOMETRY:
        raise ValueError(f"{op}: {name} must be at most {MAX_GEOMETRY} in magnitude, got {value!r}")
    return int(a), int(b)


def positive_pair(value, name, op):
    """`pair`, and both entries > 0 (ValueError otherwise)."""
    a, b = pair(value, name, op)
    if a <= 0 or b <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value!r}")
    return a, b


def float_array(op, name, a, ndims):
    """Check that `a` is a float32/float64 NumPy or numba.cuda array whose ndim is in
    `ndims`; return it C-contiguous (copied on its own device if it was not)."""
    if not (isinstance(a, np.ndarray) or is_device_array(a)):
        raise TypeError(
            f"{op}: {name} must be a numpy.ndarray (or a numba.cuda device array), got {type(a).__name__}"
        )
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32 or float64, got dtype {a.dtype} ({name}.shape={a.shape})"
        )
    if a.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{op}: {name} must be {want}, got {a.ndim}-D {name}.shape={a.shape}")
    return backend(a).ascontiguous(a)


def same_dtype(op, **arrays):
    """All given (non-None) arrays share one dtype (TypeError) and one device (TypeError)."""
    dtype = None
    for v in arrays.values():  # the common case, NumPy arrays of one dtype, in a loop (5 -> 0.4 us)
        if v is None:
            continue
        if type(v) is not np.ndarray or (dtype is not None and v.dtype != dtype):
            break  # the full check below says what is wrong, or that nothing is
        dtype = v.dtype
    else:
        return
    items = [(k, v) for k, v in arrays.items() if v is not None]
    if len({v.dtype for _, v in items}) > 1:
        desc = ", ".join(f"{k}: {v.dtype} {v.shape}" for k, v in items)
        raise TypeError(f"{op}: arguments must share one dtype, got {desc}")
    if len({is_device_array(v) for _, v in items}) > 1:
        desc = ", ".join(f"{k}: {'cuda' if is_device_array(v) else 'numpy'} {v.shape}" for k, v in items)
        raise TypeError(f"{op}: arguments must all be on one device, got {desc}")


def same_shape(op, name, a, shape, why="", **fields):
    """ValueError unless a.shape == shape; `why` explains where `shape` comes from (formatted
    with `fields` only for the error: a passing check, made every call, formats nothing)."""
    if tuple(a.shape) != tuple(shape):
        why = why.format(**fields) if fields else why
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}{why}, got {name}.shape={a.shape}")


def inplace_vector(op, name, a, C, x):
    """A per-channel vector updated in place (batch norm's running statistics): a 1-D,
    contiguous, writeable array of x's dtype, on x's device, with C entries."""
    if not (isinstance(a, np.ndarray) or is_device_array(a)) or a.dtype != x.dtype or a.ndim != 1:
        got = f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}"
        raise TypeError(
            f"{op}: {name} must be a 1-D numpy array of dtype {x.dtype} (x.shape={x.shape}), got {got}"
        )
    same_shape(op, name, a, (C,), " (one per channel of x.shape={x})", x=x.shape)
    same_dtype(op, x=x, **{name: a})
    if not backend(a).is_contiguous(a):
        raise ValueError(f"{op}: {name} is updated in place and must be a contiguous, writeable array")
    return a


_CHECKED_LABELS = {}  # id(device labels) -> (weak reference, (lo, hi))


def labels_checked(labels, lo, hi):
    """Record that device array ``labels`` holds values in [lo, hi], checked on the host
    before upload (numbacnn.data.DeviceLoader does it once per data set), so that
    class_labels needs no device-to-host copy for it. The record goes with the array."""
    import weakref

    key = id(labels)
    _CHECKED_LABELS[key] = (weakref.ref(labels, lambda _: _CHECKED_LABELS.pop(key, None)), (int(lo), int(hi)))
    return labels


def class_labels(op, labels, logits):
    """Integer class labels (N,) for logits (N, K), each in [0, K), on the logits' device.
    Array-likes are converted with np.asarray; an empty batch (N = 0) is allowed."""
    if not (isinstance(labels, np.ndarray) or is_device_array(labels)):
        labels = np.asarray(labels)
        if labels.size == 0:  # [] is float64 to NumPy; an empty batch has no labels to type
            labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"{op}: labels must be integers, got dtype {labels.dtype} (labels.shape={labels.shape})"
        )
    N, K = logits.shape
    if labels.shape != (N,):
        raise ValueError(
            f"{op}: labels must have shape ({N},) to match logits.shape={logits.shape}, "
            f"got labels.shape={labels.shape}"
        )
    checked = _CHECKED_LABELS.get(id(labels))
    if checked is not None and checked[0]() is labels:  # range known from the host: no copy
        lo, hi = checked[1]
    else:
        host_labels = backend(labels).to_host(labels)
        lo, hi = (int(host_labels.min()), int(host_labels.max())) if N else (0, 0)
    if lo < 0 or hi >= K:
        raise ValueError(
            f"{op}: labels must be in [0, {K - 1}] for logits.shape={logits.shape}, "
            f"got values in [{lo}, {hi}]"
        )
    if is_device_array(labels) != is_device_array(logits):
        raise TypeError(f"{op}: logits and labels must be on one device")
    return labels
