"""Weights in and out, under PyTorch's state_dict names, and never through pickle.

    read_state_dict(path)          -> {name: ndarray} from a .safetensors file, a PyTorch
                                      .pt/.pth state_dict, or a numbacnn checkpoint .npz
    save_safetensors(state, path, metadata=None)
                                      a state_dict (or a Module's) as safetensors, atomically
    load(path, model=None)         -> a Module with the file's weights (numbacnn.load)

Formats:
  - safetensors (https://github.com/huggingface/safetensors): a JSON header and raw
    little-endian arrays; read and written with the ``safetensors`` package's NumPy API.
    Nothing in it can run code. Metadata (string -> string) holds what numbacnn knows about
    the model: ``numbacnn.model`` (its registry name), ``numbacnn.classes`` (JSON list).
  - PyTorch .pt / .pth: read ONLY with ``torch.load(path, weights_only=True)`` (torch's
    restricted unpickler: tensors and plain containers, no code), and only when torch is
    installed; without torch the file is refused, never unpickled by other means. A dict
    that wraps the state_dict under "state_dict" or "model" is unwrapped, and a "module."
    prefix on every key (torch.nn.DataParallel) is dropped.
  - numbacnn's checkpoint .npz (numbacnn.checkpoint): its model state.

Every failure names the file: FileNotFoundError, ValueError (not a weights file, a dtype
numbacnn cannot hold, a missing torch), and ``load``'s mismatches name the keys and shapes.
"""

import json
import math
import os

import numpy as np

from .. import checkpoint as ckpt
from .._io import atomic_write

__all__ = ["read_state_dict", "read_metadata", "save_safetensors", "load", "SUFFIXES"]

SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".npz": "checkpoint"}


def _format(path):
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unknown weights format {suffix or '(no suffix)'!r}; numbacnn reads "
            f"{', '.join(SUFFIXES)} (safetensors, a PyTorch state_dict, a numbacnn checkpoint)"
        )
    return SUFFIXES[suffix]


def _existing(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a weights file")
    return path


def _plain(path, name, value):
    """A tensor or array as a NumPy array of a numeric dtype (ValueError naming the key)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            value = value.float()  # NumPy has no bfloat16: widen (exact)
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{path}: {name!r} has dtype {arr.dtype}, not a numeric array")
    return arr


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    except TypeError as e:  # a dtype NumPy has no type for (bfloat16, float8)
        raise ValueError(f"{path}: {e} (numbacnn reads float16/32/64 and integer tensors)") from None


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{path} is a PyTorch file: reading it needs torch (pip install torch), whose "
            "torch.load(weights_only=True) is the only way numbacnn opens one; it never unpickles "
            "otherwise. Or save it as safetensors."
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's UnpicklingError names what weights_only refused
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refused or could not read it ({first}); "
            "numbacnn reads plain state_dicts only"
        ) from None
    for key in ("state_dict", "model"):  # a training checkpoint that wraps the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not hasattr(obj[key], "detach"):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "detach") for v in obj.values()):
        raise ValueError(f"{path}: not a PyTorch state_dict (a dict of tensors), got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def read_state_dict(path):
    """The weights in ``path`` as ``{name: ndarray}`` (names as stored: torch's for files
    written by torch or by numbacnn). The format comes from the suffix: .safetensors, .pt /
    .pth (torch.load with weights_only=True, needs torch), .npz (a numbacnn checkpoint).

    Raises FileNotFoundError, ValueError (unknown suffix, unreadable or not a weights file,
    non-numeric entries; ``numbacnn.checkpoint.CheckpointError`` for a bad checkpoint)."""
    path = _existing(path)
    kind = _format(path)
    if kind == "safetensors":
        raw = _read_safetensors(path)
    elif kind == "torch":
        raw = _read_torch(path)
    else:
        raw = ckpt.load(path).model_state
    return {k: _plain(path, k, v) for k, v in raw.items()}


def read_metadata(path):
    """What a weights file says about its model: ``{"model": name, "classes": list,
    "input_shape": [C, H, W], "preprocess": {"channels", "size": [H, W], "pad", "mean",
    "std"}}``, each None when the file does not say (safetensors metadata written by
    numbacnn, a checkpoint's meta; a PyTorch file says nothing). A checkpoint from before
    ``preprocess`` was stored is an MNIST one: its preprocess is MNIST's."""
    path = _existing(path)
    kind = _format(path)
    info = {"model": None, "classes": None, "input_shape": None, "preprocess": None}
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                meta = f.metadata() or {}
        except Exception as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
        for key in info:
            if f"numbacnn.{key}" in meta:
                value = meta[f"numbacnn.{key}"]
                try:
                    info[key] = value if key == "model" else json.loads(value)
                except ValueError:
                    raise ValueError(
                        f"{path}: its metadata numbacnn.{key} is not JSON: {value[:60]!r}"
                    ) from None
    elif kind == "checkpoint":
        meta = ckpt.load(path).meta
        config = meta.get("config") or {}
        info["model"] = config.get("model")
        info["classes"] = config.get("classes")
        info["input_shape"] = config.get("input_shape")
        info["preprocess"] = config.get("preprocess")
        if info["preprocess"] is None and config.get("dataset", "mnist") == "mnist" and "pad" in config:
            from ..data import mnist

            info["preprocess"] = dict(channels=1, size=[28, 28], pad=config["pad"], mean=[mnist.MEAN],
                                      std=[mnist.STD])  # fmt: skip
    return _checked(path, info)


def _checked(path, info):
    """``info`` with every field the expected type (ValueError naming the file and field):
    the metadata of a file may have been written by anyone."""

    def bad(field, value):
        return ValueError(f"{path}: its {field} is not valid: {str(value)[:80]}")

    model, classes, shape, pre = info["model"], info["classes"], info["input_shape"], info["preprocess"]
    if model is not None and not isinstance(model, str):
        raise bad("model name", model)
    if classes is not None and not (
        isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
    ):
        raise bad("class list", classes)

    def ints(v, n, least):
        return isinstance(v, list) and len(v) == n and all(isinstance(i, int) and i >= least for i in v)

    if shape is not None and not ints(shape, 3, 1):
        raise bad("input_shape", shape)
    if pre is not None:
        ok = isinstance(pre, dict) and pre.get("channels") in (1, 3) and ints(pre.get("size"), 2, 1)
        ok = ok and isinstance(pre.get("pad"), int) and pre["pad"] >= 0
        for key in ("mean", "std"):
            v = pre.get(key) if ok else None
            ok = ok and isinstance(v, list) and len(v) == pre["channels"]
            ok = ok and all(isinstance(a, (int, float)) and math.isfinite(a) for a in v)
        if not ok or min(pre["std"]) <= 0:
            raise bad("preprocess ({channels: 1 or 3, size: [H, W], pad, mean, std})", pre)
    return info


def metadata_strings(info):
    """The ``numbacnn.*`` metadata (str -> str, JSON values) of ``read_metadata``'s dict, as
    exported files carry it."""
    out = {}
    for key, value in info.items():
        if value is not None:
            out[f"numbacnn.{key}"] = value if key == "model" else json.dumps(value)
    return out


def save_safetensors(state, path, metadata=None):
    """Write a state_dict (``{name: array}``, or a Module's ``state_dict()``) to ``path`` as
    safetensors, atomically (an existing file is replaced whole or not at all).

    metadata: ``{str: str}`` for the header; numbacnn uses ``numbacnn.model`` and
    ``numbacnn.classes``. ``{"format": "pt"}`` is added, as PyTorch's safetensors files
    carry. Raises ValueError for a non-numeric entry or non-string metadata."""
    from safetensors.numpy import save

    if hasattr(state, "state_dict"):
        state = state.state_dict()
    arrays = {k: np.require(_plain(path, k, v), requirements="C") for k, v in state.items()}  # 0-d stays 0-d
    metadata = {"format": "pt", **(metadata or {})}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"save_safetensors: metadata must map str to str, got {metadata!r}")
    data = save(arrays, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def _build_for(name, state, path):
    """Build registry model ``name`` with the class count and input channels its weights in
    ``state`` have (read from the first convolution's and the last linear layer's weights;
    the defaults when those are missing, and loading then names the keys)."""
    from ..layers import Conv2d, Linear
    from ..models import MODELS, build_model

    if name not in MODELS:
        raise ValueError(f"{path}: unknown model {name!r} (choose from: {', '.join(sorted(MODELS))})")
    probe = build_model(name)
    convs = [n for n, m in probe.named_modules() if isinstance(m, Conv2d)]
    linears = [n for n, m in probe.named_modules() if isinstance(m, Linear)]
    kwargs = {}
    for key, arg, axis, rank in ((f"{convs[0]}.weight", "in_channels", 1, 4),
                                 (f"{linears[-1]}.weight", "num_classes", 0, 2)):  # fmt: skip
        if key in state and np.ndim(state[key]) == rank:  # else: loading names the missing keys
            kwargs[arg] = int(np.shape(state[key])[axis])
    return build_model(name, **kwargs)


def load(path, model=None):
    """A model with the weights in ``path`` (.safetensors, .pt/.pth, or a numbacnn
    checkpoint .npz), in eval mode.

    model: a Module to load into (in place; returned), a registry name such as "resnet18"
    (built with the class count and input channels the weights have), or None: the name
    the file records (safetensors metadata written by numbacnn, a checkpoint's config).
    The model's ``classes`` and ``preprocess`` attributes are set to what the file records
    (the class names; how an image becomes its input: numbacnn.report.predict_files), or
    None.

    Raises FileNotFoundError, ValueError naming the file (unknown format, no model named
    and none recorded, weights that do not fit the model: missing/unexpected keys, shapes).
    """
    from ..module import Module

    path = os.fspath(path)
    state = read_state_dict(path)
    info = read_metadata(path)
    if model is None:
        if info["model"] is None:
            raise ValueError(
                f"{path} does not record which model it holds: pass model='resnet18' (a name) or a Module"
            )
        model = info["model"]
    if isinstance(model, str):
        model = _build_for(model, state, path)
    elif not isinstance(model, Module):
        raise TypeError(f"load: model must be None, a model name or a Module, got {type(model).__name__}")
    try:
        ckpt.load_model_state(model, state)
    except ckpt.CheckpointError as e:
        raise ValueError(f"{path}: {e}") from None
    for key, value in state.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: {key!r} has NaN or infinite values: these weights are not usable")
    outputs = [v.shape[0] for v in model.state_dict().values() if v.ndim == 2][-1:]  # the classifier's rows
    if info["classes"] is not None and outputs and len(info["classes"]) != outputs[0]:
        raise ValueError(
            f"{path}: it names {len(info['classes'])} classes but the model has {outputs[0]} outputs"
        )
    first = next((v for v in model.state_dict().values() if v.ndim == 4), None)  # the first conv's weight
    pre = info["preprocess"]
    if pre is not None and first is not None and pre["channels"] != first.shape[1]:
        raise ValueError(
            f"{path}: its preprocess makes {pre['channels']}-channel images; the model takes {first.shape[1]}"
        )
    model.eval()
    model.classes = info["classes"]
    model.preprocess = info["preprocess"]
    return model
