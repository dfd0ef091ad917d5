"""Learning-rate schedules: pure functions of the epoch (their whole state is the epoch
counter, the base rate, and their kind and length), so a resumed run recomputes exactly the
same learning rate:

    ConstantLR: lr(e) = base_lr
    StepLR:     lr(e) = base_lr * gamma ** (e // step_size)          (torch's StepLR)
    CosineLR:   lr(e) = eta_min + (base_lr - eta_min) * (1 + cos(pi * e / T_max)) / 2
                                                   (torch's CosineAnnealingLR, closed form)

A schedule drives any numbacnn.optim optimizer through its ``lr`` attribute.
"""

import math

import numpy as np

from ._checks import check_int, check_number
from .optim import Optimizer

__all__ = ["ConstantLR", "StepLR", "CosineLR", "build_schedule"]


class _Schedule:
    """Base: ``lr_at(epoch)`` is a pure function; ``step()`` advances the epoch counter and
    writes the new rate into the optimizer. Usage (as with torch): after each epoch call
    ``schedule.step()``; ``schedule.epoch`` is the number of completed epochs."""

    name = "none"
    length = 0  # epochs one cycle of the schedule spans (cosine: T_max, step: step_size)

    def __init__(self, optimizer, base_lr=None):
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{name}: optimizer must be a numbacnn.optim optimizer, got {type(optimizer).__name__}"
            )
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
