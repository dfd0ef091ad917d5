"""Stochastic gradient descent and learning-rate schedules.

The lecture's SGD step is ``theta = theta - eta * g`` with ``g`` the mini-batch mean gradient
(our losses already average over the batch). On top of it we implement exactly PyTorch's
``torch.optim.SGD`` rule (dampening 0), so runs can be compared number for number::

    g   = grad + weight_decay * p                 # L2 penalty folded into the gradient
    buf = g                      (first step)
    buf = momentum * buf + g     (later steps)    # heavy-ball velocity
    g   = g + momentum * buf     if nesterov else buf
    p  -= lr * g

Everything is done in place on ``Parameter.data`` with NumPy, in the parameter's dtype.

Schedules are pure functions of the epoch (their whole state is the epoch counter), so a
resumed run recomputes exactly the same learning rate:

    StepLR:   lr(e) = base_lr * gamma ** (e // step_size)
    CosineLR: lr(e) = eta_min + (base_lr - eta_min) * (1 + cos(pi * e / T_max)) / 2
"""

import math

import numpy as np

from ._checks import check_bool, check_int, check_number

__all__ = ["SGD", "ConstantLR", "StepLR", "CosineLR", "build_schedule"]


class SGD:
    """SGD with momentum, weight decay and Nesterov momentum (PyTorch semantics).

    params: an iterable of objects with ``.data`` (ndarray, updated in place) and ``.grad``
    (ndarray of the same shape, or None: such a parameter is skipped, as in PyTorch).
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        try:
            self.params = list(params)
        except TypeError:
            raise TypeError(
                f"SGD: params must be an iterable of parameters, got {type(params).__name__}"
            ) from None
        if not self.params:
            raise ValueError("SGD: params is empty (the model has no parameters?)")
        for i, p in enumerate(self.params):
            if not (hasattr(p, "data") and hasattr(p, "grad")):
                raise TypeError(
                    f"SGD: params[{i}] must have .data and .grad (a Parameter), got {type(p).__name__}"
                )
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
        self.step_count = 0

    def zero_grad(self):
        """Set every parameter's gradient to zero (in place when it exists)."""
        for p in self.params:
            if p.grad is not None:
                p.grad[...] = 0

    def step(self):
        """One update of every parameter from its current ``.grad``."""
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad
            if g.shape != p.data.shape:
                raise ValueError(f"SGD: parameter {i} has grad.shape={g.shape} but data.shape={p.data.shape}")
            if wd != 0.0:
                g = g + p.data.dtype.type(wd) * p.data
            if mu != 0.0:
                buf = self.buffers[i]
                if buf is None:
                    buf = np.array(g, dtype=p.data.dtype, copy=True)
                    self.buffers[i] = buf
                else:
                    buf *= p.data.dtype.type(mu)
                    buf += g
                if self.nesterov:
                    g = g + p.data.dtype.type(mu) * buf
                else:
                    g = buf
            p.data -= p.data.dtype.type(lr) * g
        self.step_count += 1

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
                state[f"momentum_buffer.{i}"] = buf.copy()
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
            buffers[i] = np.array(value, dtype=p.data.dtype, copy=True)
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.nesterov = bool(state["nesterov"])
        self.step_count = int(state["step_count"])
        self.buffers = buffers


# --- learning-rate schedules -------------------------------------------------------------
class _Schedule:
    """Base: ``lr_at(epoch)`` is a pure function; ``step()`` advances the epoch counter and
    writes the new rate into the optimizer. Usage (as with torch): after each epoch call
    ``schedule.step()``; ``schedule.epoch`` is the number of completed epochs."""

    name = "none"
    length = 0  # epochs one cycle of the schedule spans (cosine: T_max, step: step_size)

    def __init__(self, optimizer, base_lr=None):
        name = type(self).__name__
        if not isinstance(optimizer, SGD):
            raise TypeError(f"{name}: optimizer must be an SGD, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        base_lr = optimizer.lr if base_lr is None else base_lr
        self.base_lr = check_number(name, "base_lr", base_lr, minimum=0.0, finite=True)
        self.epoch = 0
        self.restored = None  # the (name, length) a checkpoint's state came from
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):
        raise NotImplementedError

    @property
    def lr(self):
        return self.lr_at(self.epoch)

    def step(self):
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)

    def state_dict(self):
        """epoch and base_lr (what the rate is computed from), and the schedule's name and
        length, so a resumed run can tell whether its schedule is the one it was saved with."""
        return {
            "epoch": np.array(self.epoch, dtype=np.int64),
            "base_lr": np.array(self.base_lr, dtype=np.float64),
            "name": np.frombuffer(self.name.encode("ascii"), dtype=np.uint8).copy(),
            "length": np.array(self.length, dtype=np.int64),
        }

    def load_state_dict(self, state):
        """Continue from a state_dict(): its epoch and base_lr; its name and length (None
        in older checkpoints) are kept in ``restored`` for the caller to compare."""
        self.epoch = int(state["epoch"])
        self.base_lr = float(state["base_lr"])
        name = bytes(np.asarray(state["name"], np.uint8)).decode("ascii") if "name" in state else None
        length = int(state["length"]) if "length" in state else None
        self.restored = (name, length)
        self.optimizer.lr = self.lr_at(self.epoch)


class ConstantLR(_Schedule):
    """No schedule: lr(e) = base_lr."""

    name = "none"

    def lr_at(self, epoch):
        return self.base_lr


class StepLR(_Schedule):
    """lr(e) = base_lr * gamma ** (e // step_size)  (torch.optim.lr_scheduler.StepLR)."""

    name = "step"

    def __init__(self, optimizer, step_size, gamma=0.1, base_lr=None):
        self.step_size = self.length = check_int("StepLR", "step_size", step_size, minimum=1)
        self.gamma = check_number("StepLR", "gamma", gamma, minimum=0.0, finite=True)
        super().__init__(optimizer, base_lr)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (int(epoch) // self.step_size)


class CosineLR(_Schedule):
    """lr(e) = eta_min + (base_lr - eta_min) * (1 + cos(pi * e / T_max)) / 2
    (the closed form of torch.optim.lr_scheduler.CosineAnnealingLR)."""

    name = "cosine"

    def __init__(self, optimizer, T_max, eta_min=0.0, base_lr=None):
        self.T_max = self.length = check_int("CosineLR", "T_max", T_max, minimum=1)
        self.eta_min = check_number("CosineLR", "eta_min", eta_min, minimum=0.0, finite=True)
        super().__init__(optimizer, base_lr)

    def lr_at(self, epoch):
        return (
            self.eta_min
            + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * int(epoch) / self.T_max)) / 2.0
        )


def build_schedule(name, optimizer, epochs, step_size=None, gamma=0.1, eta_min=0.0):
    """The schedule the CLI names: "none", "step" (default step_size: a third of the
    epochs, at least 1) or "cosine" (T_max = epochs)."""
    if not isinstance(name, str):
        raise TypeError(f"build_schedule: name must be 'none', 'step' or 'cosine', got {name!r}")
    epochs = check_int("build_schedule", "epochs", epochs, minimum=1)
    if name == "none":
        return ConstantLR(optimizer)
    if name == "step":
        if step_size is None:
            step_size = max(1, epochs // 3)
        return StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return CosineLR(optimizer, T_max=epochs, eta_min=eta_min)
    raise ValueError(f"build_schedule: unknown schedule {name!r} (choose none, step or cosine)")
