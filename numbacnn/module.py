"""Parameter and Module: the registration and state-dict plumbing every layer inherits.

As in torch.nn: assigning a `Parameter` or a `Module` to an attribute registers it (in
assignment order), buffers are registered with `register_buffer`, `parameters()` walks own
parameters first and then the children, and `state_dict()` / `load_state_dict()` use
torch's dotted names ("layer1.0.conv1.weight", "bn1.running_mean"), so the zoo's state dicts
load into torchvision's models and back.

The layer protocol (docs/CONTRACT.md, "Model API") is declared here and implemented by
numbacnn.layers: `y = m(x)`, `dx = m.backward(dy)` (accumulating into each `.grad`),
`m.output_shape(input_shape)`, `m.macs(input_shape)`.
"""

import os

import numpy as np

from . import device as _device
from .kernels import backend as _backend
from .kernels import get as _kernels_for
from .kernels import is_device_array as _is_device_array

__all__ = ["Parameter", "Module", "FlatStorage", "flat_runs", "zero_grads", "split", "host_copy", "move"]


class Parameter:
    """A trainable array `data` and its gradient `grad` (same shape, dtype and device).

    `data` is a NumPy array or a numba.cuda device array (Module.to moves it). `grad` starts
    at zero and is accumulated by every backward pass (`accumulate_grad`, on the device of
    `grad`). `flat` is (FlatStorage, offset) when data and grad are views of a model's flat
    arrays (Module.to("cuda")), else None.
    """

    __slots__ = ("data", "grad", "flat")

    def __init__(self, data):
        if _is_device_array(data):
            be = _backend(data)
            self.data = be.ascontiguous(data)
            self.grad = be.full(self.data.shape, 0.0, self.data.dtype)
        else:
            self.data = np.ascontiguousarray(data)
            self.grad = np.zeros(self.data.shape, self.data.dtype)
        self.flat = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    @property
    def device(self):
        """ "cpu" or "cuda": where `data` lives."""
        return _device.device_of(self.data)

    def zero_grad(self):
        """grad[...] = 0 on grad's device."""
        _backend(self.grad).fill_(self.grad, 0.0)

    def accumulate_grad(self, g):
        """grad += g, in place on grad's device (the backward passes' sum, as torch's autograd).
        g: an array of grad's shape, dtype and device (ValueError / TypeError otherwise)."""
        if tuple(g.shape) != tuple(self.grad.shape):
            raise ValueError(
                f"{self!r}.accumulate_grad: g.shape={tuple(g.shape)}, expected {self.grad.shape}"
            )
        if g.dtype != self.grad.dtype or _is_device_array(g) != _is_device_array(self.grad):
            raise TypeError(
                f"{self!r}.accumulate_grad: g is {g.dtype} on {_device.device_of(g)}, the gradient "
                f"{self.grad.dtype} on {_device.device_of(self.grad)}"
            )
        _backend(self.grad).add_(self.grad, g)

    def __repr__(self):
        where = ", device='cuda'" if _is_device_array(self.data) else ""
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{where})"


class FlatStorage:
    """The parameters of a model in one flat data array and one flat gradient array.

    Module.to("cuda") puts them there: each Parameter's data and grad become views (in
    parameters() order, one dtype), so zero_grad is one fill and SGD one fused kernel over the
    whole model (numbacnn.optim), instead of one launch per parameter.

    data, grad: (total,) arrays on one device; views[k] = (data view, grad view) of params[k].
    """

    def __init__(self, params, device):
        be = _kernels_for(device)
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) > 1:
            raise TypeError(
                f"FlatStorage: the parameters must share one dtype, got {sorted(map(str, dtypes))}"
            )
        dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        total = sum(p.size for p in params)
        self.device, self.dtype, self.size = device, dtype, total
        self.data = be.empty((total,), dtype)
        self.grad = be.full((total,), 0.0, dtype)
        shapes = [p.shape for p in params]
        self.views = list(zip(split(self.data, shapes), split(self.grad, shapes), strict=True))
        offset = 0
        for p, (d, g) in zip(params, self.views, strict=True):
            be.copy_(d, p.data)
            be.copy_(g, p.grad)
            p.data, p.grad, p.flat = d, g, (self, offset)
            offset += p.size

    def holds(self, p):
        """True while p's data and grad are still this storage's views (nobody replaced them)."""
        if p.flat is None or p.flat[0] is not self:
            return False
        return any(p.data is d and p.grad is g for d, g in self.views)


def split(flat, shapes):
    """Views of consecutive slices of the 1-D array ``flat``, one per shape, in order."""
    views, offset = [], 0
    for shape in shapes:
        n = int(np.prod(shape, dtype=np.int64))
        views.append(flat[offset : offset + n].reshape(shape))
        offset += n
    return views


def flat_runs(params):
    """params split into runs of consecutive slices of one FlatStorage: a list of
    (storage, start, stop, indices); a parameter outside any storage is a run of its own
    with storage None (start, stop its size)."""
    runs = []
    for i, p in enumerate(params):
        flat = getattr(p, "flat", None)  # the optimizers take any object with .data and .grad
        storage = flat[0] if flat is not None and flat[0].holds(p) else None
        if storage is not None and runs and runs[-1][0] is storage and runs[-1][2] == flat[1]:
            st, start, stop, idx = runs[-1]
            runs[-1] = (st, start, stop + p.data.size, idx + [i])
        elif storage is not None:
            runs.append((storage, flat[1], flat[1] + p.data.size, [i]))
        else:
            runs.append((None, 0, p.data.size, [i]))
    return runs


def zero_grads(params):
    """Every gradient set to 0: one fill per run of flat storage, one per other parameter."""
    for storage, start, stop, idx in flat_runs(params):
        if storage is None:
            g = params[idx[0]].grad
            _backend(g).fill_(g, 0.0)
        else:
            _kernels_for(storage.device).fill_(storage.grad[start:stop], 0.0)


class Module:
    """Base class: registers Parameters, buffers and child Modules in assignment order.

    As in torch.nn.Module, assigning a Parameter or a Module to an attribute registers it,
    and `parameters()` walks own parameters first, then children in registration order.
    Buffers (e.g. BatchNorm running statistics) are registered with `register_buffer` and
    appear in `state_dict()` but not in `parameters()`.
    """

    num_inputs = 1

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # ---- registration -----------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        # Re-assigning keeps the registration position (as torch); assigning a plain value
        # to a registered name (e.g. `self.bias = None`) unregisters it.
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            self.__dict__.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._parameters.pop(name, None)
            self.__dict__.pop(name, None)
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: look in the registries.
        for store in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name, array):
        """A non-trainable array saved in state_dict (e.g. running_mean)."""
        self._buffers[name] = array

    # ---- traversal ----------------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_children(self):
        """(name, module) of the direct children, in registration order (torch's API)."""
        yield from self._modules.items()

    def children(self):
        """The direct child modules, in registration order."""
        return [m for _, m in self.named_children()]

    def modules(self):
        """This module and every module below it, depth first (torch's order)."""
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) in torch.nn.Module.parameters() order."""
        for mod_prefix, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self):
        """List of Parameters in torch.nn.Module.parameters() order."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mod_prefix, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ---- modes and gradients -------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (BatchNorm uses batch statistics, Dropout drops); mode a bool
        (TypeError otherwise, as torch refuses non-bools). Returns self."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.train: mode must be True or False, got {mode!r}")
        for _, mod in self.named_modules():
            object.__setattr__(mod, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (BatchNorm uses running statistics, Dropout is the identity)."""
        return self.train(False)

    def zero_grad(self):
        """Set every parameter gradient to 0 (backward ACCUMULATES into .grad); on a model
        moved to "cuda", one kernel for all of them."""
        zero_grads(self.parameters())

    def astype(self, dtype):
        """Cast parameters (and zero their grads) and float buffers to `dtype`, in place (on
        the model's device: a "cuda" model is cast on the host and moved back)."""
        dtype = np.dtype(dtype)
        device = self.device
        if device != "cpu":
            self.to("cpu")
        for _, mod in self.named_modules():
            for p in mod._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = np.zeros(p.data.shape, dtype)
            for name, b in list(mod._buffers.items()):
                if np.issubdtype(b.dtype, np.floating):
                    mod._buffers[name] = b.astype(dtype)
        return self.to(device) if device != "cpu" else self

    # ---- devices ------------------------------------------------------------------------------
    @property
    def device(self):
        """ "cuda" when the parameters (and float buffers) live on the GPU, else "cpu"."""
        for p in self.parameters():
            return p.device
        for _, b in self.named_buffers():
            if _is_device_array(b):
                return "cuda"
        return "cpu"

    def to(self, device):
        """Move parameters, gradients and float buffers to ``device`` ("cpu" or "cuda"), in
        place, as torch.nn.Module.to; returns self. On "cuda" the parameters become views of
        one flat data array and one flat gradient array (FlatStorage): zero_grad and SGD are
        then one kernel each. Integer buffers (num_batches_tracked) stay on the host. Make
        the optimizer after moving the model (as torch advises): it holds the Parameters,
        which stay the same objects. Raises ValueError for another name,
        numbacnn.device.DeviceUnavailable (one sentence: what is missing) when CUDA cannot
        run here, TypeError for parameters of mixed dtypes."""
        device = _device.require(f"{type(self).__name__}.to", device)
        params = list({id(p): p for p in self.parameters()}.values())  # a shared one once
        dtypes = {p.data.dtype for p in params}
        if device != "cpu" and len(dtypes) > 1:  # refused before anything moves
            raise TypeError(
                f"{type(self).__name__}.to({device!r}): the parameters must share one dtype (one flat "
                f"array holds them), got {sorted(map(str, dtypes))}: cast with astype first"
            )
        for _, mod in self.named_modules():
            for name, b in list(mod._buffers.items()):
                if np.issubdtype(b.dtype, np.floating):
                    mod._buffers[name] = move(b, device)
        if device == "cpu":
            for p in params:
                p.data, p.grad, p.flat = move(p.data, "cpu"), move(p.grad, "cpu"), None
        else:
            for p in params:  # FlatStorage copies each into its place on the device
                p.flat = None
            FlatStorage(params, device)
        return self

    # ---- state dict -------------------------------------------------------------------------
    def state_dict(self):
        """{torch-style name: NumPy copy of the array}: parameters and buffers, in torch's
        order (copied to the host from a "cuda" model).

        Buffers include BatchNorm's running_mean, running_var and num_batches_tracked (an
        int64 0-d array), exactly the keys of the equivalent torch model's state_dict().
        """
        out = {}
        for mod_prefix, mod in self.named_modules():
            for name, p in mod._parameters.items():
                out[f"{mod_prefix}.{name}" if mod_prefix else name] = host_copy(p.data)
            for name, b in mod._buffers.items():
                out[f"{mod_prefix}.{name}" if mod_prefix else name] = host_copy(b)
        return out

    def load_state_dict(self, state, strict=True):
        """Copy arrays from `state` into this model, in place, casting to each entry's dtype.

        state: name -> array-like (from state_dict() or a torch model's state_dict()), or the
        path of a weights file: .safetensors, a PyTorch .pt/.pth state_dict (read only with
        torch.load(weights_only=True), when torch is installed: nothing is ever unpickled
        otherwise) or a numbacnn checkpoint .npz (numbacnn.bridges.weights.read_state_dict).

        Raises ValueError listing missing/unexpected names (when strict) and any shape
        mismatch (always), before anything is modified; FileNotFoundError / ValueError
        naming the file for a path that cannot be read.
        """
        if isinstance(state, (str, os.PathLike)):
            from .bridges.weights import read_state_dict

            state = read_state_dict(state)
        targets = {}
        for mod_prefix, mod in self.named_modules():
            for name in list(mod._parameters) + list(mod._buffers):
                targets[f"{mod_prefix}.{name}" if mod_prefix else name] = (mod, name)
        arrays = {}
        for k, v in state.items():
            if hasattr(v, "detach"):  # a torch tensor
                v = v.detach().cpu().numpy()
            arrays[k] = np.asarray(v)
        missing = [k for k in targets if k not in arrays]
        unexpected = [k for k in arrays if k not in targets]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        for k, (mod, name) in targets.items():
            if k not in arrays:
                continue
            current = mod._parameters[name].data if name in mod._parameters else mod._buffers[name]
            if arrays[k].shape != current.shape:
                problems.append(f"{k}: shape {arrays[k].shape} in state dict, {current.shape} in model")
        if problems:
            raise ValueError(f"load_state_dict({type(self).__name__}): " + "; ".join(problems))
        for k, (mod, name) in targets.items():
            if k not in arrays:
                continue
            target = mod._parameters[name].data if name in mod._parameters else mod._buffers[name]
            _backend(target).copy_(target, arrays[k].astype(target.dtype, copy=False))

    # ---- the layer protocol -----------------------------------------------------------------
    def __call__(self, *inputs):
        return self.forward(*inputs)

    def forward(self, *inputs):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def output_shape(self, input_shape):
        """Default: shape-preserving (activations, normalisation, dropout)."""
        return tuple(input_shape)

    def macs(self, *input_shapes):
        return 0

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def _fail(self, msg):
        """A shape error that names the layer."""
        raise ValueError(f"{self!r}: {msg}")


def host_copy(a):
    """A NumPy copy of a host or device array (state_dict, an optimizer's state_dict)."""
    return _backend(a).to_host(a) if _is_device_array(a) else np.array(a, copy=True)


def move(a, device):
    """Array ``a`` on ``device`` ("cpu" or "cuda"): ``a`` itself when it is there already,
    else a copy (Module.to; an optimizer's state following its parameters)."""
    if device == "cpu":
        return _backend(a).to_host(a) if _is_device_array(a) else a
    return a if _is_device_array(a) else _kernels_for(device).ascontiguous(a)
