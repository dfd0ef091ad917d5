"""Optimizers with PyTorch's semantics: SGD (momentum, weight decay, Nesterov), Adam, AdamW
and RMSprop; the learning-rate schedules live in numbacnn.schedules (re-exported here).

The lecture's SGD step is ``theta = theta - eta * g`` with ``g`` the mini-batch mean gradient
(our losses already average over the batch). On top of it we implement exactly PyTorch's
``torch.optim.SGD`` rule (dampening 0), so runs can be compared number for number::

    g   = grad + weight_decay * p                 # L2 penalty folded into the gradient
    buf = g                      (first step)
    buf = momentum * buf + g     (later steps)    # heavy-ball velocity
    g   = g + momentum * buf     if nesterov else buf
    p  -= lr * g

Every update is a kernel on the parameter's device, in its dtype (numbacnn/kernels/cpu/optim.py
and its CUDA twin, whose docstring has the formulas: torch's single-tensor implementations,
term for term). SGD updates a model moved with ``Module.to("cuda")`` in ONE launch: its
parameters, gradients and momentum buffers are views of one flat array each (the fused
update); elsewhere, and for Adam, AdamW and RMSprop, it is one launch per parameter.

Every optimizer has ``lr`` (a schedule sets it each epoch), ``step()``, ``zero_grad()``, and
``state_dict()`` / ``load_state_dict()`` of plain arrays (hyper-parameters as 0-d arrays,
per-parameter state as ``<name>.<i>``), which checkpoints store, so a run resumes exactly.
"""

import numpy as np

from ._checks import check_bool, check_number
from .device import device_of
from .kernels import backend
from .module import flat_runs, host_copy, move, split, zero_grads

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "OPTIMIZERS", "build_optimizer",
           "ConstantLR", "StepLR", "CosineLR", "build_schedule"]  # fmt: skip


class Optimizer:
    """The part every optimizer shares: its parameters (checked), ``lr``, ``zero_grad``."""

    def _init_params(self, params):
        name = type(self).__name__
        try:
            self.params = list(params)
        except TypeError:
            raise TypeError(
                f"{name}: params must be an iterable of parameters, got {type(params).__name__}"
            ) from None
        if not self.params:
            raise ValueError(f"{name}: params is empty (the model has no parameters?)")
        for i, p in enumerate(self.params):
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(
                    f"{name}: params[{i}] must have .data and .grad (a Parameter), got {type(p).__name__}"
                )

    def zero_grad(self):
        """Set every parameter's gradient to zero, in place, on its device (one kernel for the
        parameters of a model moved to "cuda")."""
        zero_grads([p for p in self.params if p.grad is not None])

    def _grads(self):
        """(i, parameter, gradient) of the parameters that have a gradient (torch skips the
        others), the shapes checked."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(
                    f"{type(self).__name__}: parameter {i} has grad.shape={p.grad.shape} but "
                    f"data.shape={p.data.shape}"
                )
            yield i, p, p.grad


class SGD(Optimizer):
    """SGD with momentum, weight decay and Nesterov momentum (PyTorch semantics).

    params: an iterable of objects with ``.data`` (ndarray, updated in place) and ``.grad``
    (ndarray of the same shape, or None: such a parameter is skipped, as in PyTorch).
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        self._init_params(params)
        lr = check_number("SGD", "lr", lr, minimum=0.0, finite=True)
        momentum = check_number("SGD", "momentum", momentum, minimum=0.0, finite=True)
        weight_decay = check_number("SGD", "weight_decay", weight_decay, minimum=0.0, finite=True)
        nesterov = check_bool("SGD", "nesterov", nesterov)
        if nesterov and momentum <= 0.0:
            raise ValueError("SGD: nesterov momentum requires momentum > 0")
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = bool(nesterov)
        self.buffers = [None] * len(self.params)  # momentum buffers, created on first step
        self._flat_momentum = {}  # (id(storage), start, stop) -> (flat buffer, views, storage)
        self.step_count = 0

    def step(self):
        """One update of every parameter from its current ``.grad``, in place on its device:
        one kernel (``kernels.<device>.optim.sgd_step``) per run of a model's flat storage
        (the whole model after Module.to("cuda")), one per other parameter."""
        self._prepare()
        for run in flat_runs(self.params):
            if run[0] is None or not self._fused_step(*run):
                for i in run[3]:
                    self._step_one(i)
        self.step_count += 1

    def _prepare(self):
        """Before anything changes: the gradients' shapes checked (_grads), and each momentum
        buffer on its parameter's device (copied there if the model moved since its step)."""
        for i, p, _ in self._grads():
            if self.buffers[i] is not None:
                self.buffers[i] = move(self.buffers[i], device_of(p.data))

    def _settings(self):
        return self.lr, self.momentum, self.weight_decay, self.nesterov

    def _step_one(self, i):
        """Update parameter i alone (its own launch)."""
        p = self.params[i]
        if p.grad is None:
            return
        be = backend(p.data)
        g = be.ascontiguous(p.grad)
        first = self.momentum != 0.0 and self.buffers[i] is None
        if first:
            self.buffers[i] = be.empty(p.data.shape, p.data.dtype)
        buf = self.buffers[i] if self.momentum != 0.0 else g  # mu = 0: not read, not written
        be.optim.sgd_step(p.data.reshape(-1), g.reshape(-1), buf.reshape(-1), first, *self._settings())

    def _fused_step(self, storage, start, stop, idx):
        """One launch over storage[start:stop] (parameters idx); False when their momentum
        buffers are half started (a partial state_dict), to update them one by one."""
        be = backend(storage.data)
        first = False
        if self.momentum != 0.0:
            started = [self.buffers[i] is not None for i in idx]
            if any(started) and not all(started):
                return False
            first = not started[0]
            flat = self._flat_momentum.get((id(storage), start, stop))
            if flat is None or any(self.buffers[i] is not v for i, v in zip(idx, flat[1], strict=True)):
                flat = self._momentum_views(be, storage, start, stop, idx, copy=not first)
            buf = flat[0]
        else:
            buf = storage.grad[start:stop]
        be.optim.sgd_step(storage.data[start:stop], storage.grad[start:stop], buf, first, *self._settings())
        return True

    def _momentum_views(self, be, storage, start, stop, idx, copy):
        """One flat momentum array for a run, its parameters' buffers views of it (their
        values copied in when ``copy``: a restored state)."""
        flat = be.empty((stop - start,), storage.dtype)
        views = split(flat, [self.params[i].shape for i in idx])
        for i, view in zip(idx, views, strict=True):
            if copy:
                be.copy_(view, self.buffers[i])
            self.buffers[i] = view
        self._flat_momentum[(id(storage), start, stop)] = (flat, views, storage)
        return self._flat_momentum[(id(storage), start, stop)]

    # --- state (plain arrays, so a checkpoint can store it without pickle) -------------
    def state_dict(self):
        """Flat ``{name: ndarray}``: hyper-parameters as 0-d arrays, momentum buffers as
        ``momentum_buffer.<i>`` (i = index in params; absent before the first step)."""
        state = {
            "lr": np.array(self.lr, dtype=np.float64),
            "momentum": np.array(self.momentum, dtype=np.float64),
            "weight_decay": np.array(self.weight_decay, dtype=np.float64),
            "nesterov": np.array(self.nesterov, dtype=np.bool_),
            "step_count": np.array(self.step_count, dtype=np.int64),
        }
        for i, buf in enumerate(self.buffers):
            if buf is not None:
                state[f"momentum_buffer.{i}"] = host_copy(buf)
        return state

    def load_state_dict(self, state):
        """Restore a ``state_dict()``; buffers are checked against the parameter shapes."""
        state = dict(state)
        for key in ("lr", "momentum", "weight_decay", "nesterov", "step_count"):
            if key not in state:
                raise ValueError(f"SGD.load_state_dict: missing key {key!r}")
            value = np.asarray(state[key])
            if value.shape != () or value.dtype.kind not in ("b" if key == "nesterov" else "fiu"):
                raise ValueError(
                    f"SGD.load_state_dict: {key!r} must be a number, got {value.dtype} {value.shape}"
                )
        buffers = [None] * len(self.params)
        for key, value in state.items():
            if not key.startswith("momentum_buffer."):
                continue
            try:
                i = int(key[len("momentum_buffer.") :])
            except ValueError:
                raise ValueError(f"SGD.load_state_dict: bad key {key!r}") from None
            if not 0 <= i < len(self.params):
                raise ValueError(
                    f"SGD.load_state_dict: {key!r} but the optimizer has {len(self.params)} params"
                )
            p = self.params[i]
            value = np.asarray(value)
            if value.shape != p.data.shape:
                raise ValueError(
                    f"SGD.load_state_dict: {key!r} has shape {value.shape} but parameter {i} "
                    f"has shape {p.data.shape}"
                )
            buffers[i] = move(np.array(value, dtype=p.data.dtype, copy=True), device_of(p.data))
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.nesterov = bool(state["nesterov"])
        self.step_count = int(state["step_count"])
        self.buffers = buffers
        self._flat_momentum = {}


class _Adaptive(Optimizer):
    """Adam-family bookkeeping: named hyper-parameters (HYPER) and per-parameter buffers
    (BUFFERS, created as zeros on a parameter's first step) with a per-parameter step count
    (as torch), saved as 0-d arrays and ``<buffer>.<i>`` / ``step.<i>``."""

    HYPER = ()
    BUFFERS = ()

    def _init_state(self):
        self.state = [None] * len(self.params)  # per parameter: {"step": int, buffer: array}
        self.step_count = 0

    def _state(self, i, p):
        if self.state[i] is None:
            be = backend(p.data)
            self.state[i] = {"step": 0, **{b: be.full(p.data.shape, 0.0, p.data.dtype) for b in self.BUFFERS}}
        for b in self.BUFFERS:  # on the parameter's device, if the model moved since
            self.state[i][b] = move(self.state[i][b], device_of(p.data))
        self.state[i]["step"] += 1
        return self.state[i]

    def state_dict(self):
        out = {name: np.array(getattr(self, name), dtype=np.float64) for name in self.HYPER}
        out["step_count"] = np.array(self.step_count, dtype=np.int64)
        for i, st in enumerate(self.state):
            if st is not None:
                out[f"step.{i}"] = np.array(st["step"], dtype=np.int64)
                out.update({f"{b}.{i}": host_copy(st[b]) for b in self.BUFFERS})
        return out

    def load_state_dict(self, state):
        """Restore a ``state_dict()``; every entry is checked (ValueError names it)."""
        name = type(self).__name__
        state = dict(state)
        for key in (*self.HYPER, "step_count"):
            value = np.asarray(state.get(key))
            if key not in state or value.shape != () or value.dtype.kind not in "fiub":
                raise ValueError(f"{name}.load_state_dict: {key!r} must be a number in the state")
        restored = [None] * len(self.params)
        for i, p in enumerate(self.params):
            keys = [f"step.{i}", *(f"{b}.{i}" for b in self.BUFFERS)]
            if not any(k in state for k in keys):
                continue
            if not all(k in state for k in keys):
                raise ValueError(f"{name}.load_state_dict: parameter {i} has only part of its state")
            st = {"step": int(np.asarray(state[keys[0]]))}
            for b, k in zip(self.BUFFERS, keys[1:], strict=True):
                value = np.asarray(state[k])
                if value.shape != p.data.shape or value.dtype.kind != "f":
                    raise ValueError(
                        f"{name}.load_state_dict: {k!r} has shape {value.shape}, parameter {i} {p.data.shape}"
                    )
                st[b] = move(np.array(value, dtype=p.data.dtype), device_of(p.data))
            restored[i] = st
        for key in self.HYPER:
            setattr(self, key, float(state[key]))
        self.step_count = int(state["step_count"])
        self.state = restored


class Adam(_Adaptive):
    """Adam (Kingma & Ba, 2015) with torch.optim.Adam's defaults and semantics: L2
    weight_decay folded into the gradient, bias-corrected moments. lr, eps > 0 floats;
    betas a pair in [0, 1); weight_decay >= 0. One Numba kernel pass per parameter."""

    HYPER = ("lr", "beta1", "beta2", "eps", "weight_decay")
    BUFFERS = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        name = type(self).__name__
        self._init_params(params)
        self.lr = check_number(name, "lr", lr, minimum=0.0, finite=True)
        self.betas = betas
        self.eps = check_number(name, "eps", eps, above=0.0, finite=True)
        self.weight_decay = check_number(name, "weight_decay", weight_decay, minimum=0.0, finite=True)
        self._init_state()

    @property
    def betas(self):
        """(beta1, beta2), as torch names them."""
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, pair):
        self.beta1, self.beta2 = self._check_betas(pair)

    def _check_betas(self, betas):
        name = type(self).__name__
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"{name}: betas must be a pair of numbers, got {betas!r}")
        beta1, beta2 = (check_number(name, "betas", b, minimum=0.0, maximum=1.0) for b in betas)
        if not (beta1 < 1.0 and beta2 < 1.0):
            raise ValueError(f"{name}: betas must be in [0, 1), got {betas!r}")
        return beta1, beta2

    def step(self):
        """One update of every parameter that has a gradient."""
        for i, p, g in self._grads():
            st = self._state(i, p)
            t = st["step"]
            step_size = self.lr / (1.0 - self.beta1**t)
            bias_correction2_sqrt = (1.0 - self.beta2**t) ** 0.5
            backend(p.data).optim.adam_step(
                p.data.reshape(-1), backend(g).ascontiguous(g).reshape(-1), st["exp_avg"].reshape(-1),
                st["exp_avg_sq"].reshape(-1), self.lr, self.beta1, self.beta2, self.eps, self.weight_decay,
                self._decoupled, step_size, bias_correction2_sqrt,
            )  # fmt: skip
        self.step_count += 1


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with DECOUPLED weight decay, p *= 1 - lr *
    weight_decay before the Adam step (torch.optim.AdamW, default weight_decay 0.01)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(_Adaptive):
    """RMSprop with torch.optim.RMSprop's defaults and semantics (alpha 0.99, eps 1e-8,
    optional momentum and centered variant; L2 weight_decay folded into the gradient)."""

    HYPER = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        self._init_params(params)
        self.lr = check_number("RMSprop", "lr", lr, minimum=0.0, finite=True)
        self.alpha = check_number("RMSprop", "alpha", alpha, minimum=0.0, maximum=1.0)
        self.eps = check_number("RMSprop", "eps", eps, above=0.0, finite=True)
        self.weight_decay = check_number("RMSprop", "weight_decay", weight_decay, minimum=0.0, finite=True)
        self.momentum = check_number("RMSprop", "momentum", momentum, minimum=0.0, finite=True)
        self.centered = check_bool("RMSprop", "centered", centered)
        self._init_state()

    def step(self):
        """One update of every parameter that has a gradient."""
        for i, p, g in self._grads():
            st = self._state(i, p)
            backend(p.data).optim.rmsprop_step(
                p.data.reshape(-1), backend(g).ascontiguous(g).reshape(-1), st["square_avg"].reshape(-1),
                st["grad_avg"].reshape(-1), st["momentum_buffer"].reshape(-1), self.lr, self.alpha, self.eps,
                self.weight_decay, self.momentum, bool(self.centered),
            )  # fmt: skip
        self.step_count += 1


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def build_optimizer(name, params, lr, **settings):
    """``OPTIMIZERS[name](params, lr, **settings)``: the optimizer ``numbacnn train
    --optimizer NAME`` builds from ``TrainConfig.optimizer_settings``. ValueError for an
    unknown name, TypeError for a setting that optimizer does not take."""
    if name not in OPTIMIZERS:
        choices = ", ".join(OPTIMIZERS)
        raise ValueError(f"build_optimizer: unknown optimizer {name!r} (choose from: {choices})")
    return OPTIMIZERS[name](params, lr, **settings)


from .schedules import ConstantLR, CosineLR, StepLR, build_schedule  # noqa: E402  (re-exported)
