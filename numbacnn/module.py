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

__all__ = ["Parameter", "Module"]


class Parameter:
    """A trainable array `data` and its gradient `grad` (same shape and dtype).

    `grad` starts at zero and is accumulated (+=) by every backward pass.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros(self.data.shape, self.data.dtype)

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return self.data.size

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


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
        """Set every parameter gradient to 0 (backward ACCUMULATES into .grad)."""
        for p in self.parameters():
            p.zero_grad()

    def astype(self, dtype):
        """Cast parameters (and zero their grads) and float buffers to `dtype`, in place."""
        dtype = np.dtype(dtype)
        for _, mod in self.named_modules():
            for p in mod._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = np.zeros(p.data.shape, dtype)
            for name, b in list(mod._buffers.items()):
                if np.issubdtype(b.dtype, np.floating):
                    mod._buffers[name] = b.astype(dtype)
        return self

    # ---- state dict -------------------------------------------------------------------------
    def state_dict(self):
        """{torch-style name: copy of the array}: parameters and buffers, in torch's order.

        Buffers include BatchNorm's running_mean, running_var and num_batches_tracked (an
        int64 0-d array), exactly the keys of the equivalent torch model's state_dict().
        """
        out = {}
        for mod_prefix, mod in self.named_modules():
            for name, p in mod._parameters.items():
                out[f"{mod_prefix}.{name}" if mod_prefix else name] = p.data.copy()
            for name, b in mod._buffers.items():
                out[f"{mod_prefix}.{name}" if mod_prefix else name] = np.array(b, copy=True)
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
            if name in mod._parameters:
                p = mod._parameters[name]
                np.copyto(p.data, arrays[k].astype(p.data.dtype, copy=False))
            else:
                np.copyto(mod._buffers[name], arrays[k].astype(mod._buffers[name].dtype, copy=False))

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
