"""Weight initialisation, as torch.nn.init (the defaults of torch.nn's layers and torchvision).

    Conv2d / Linear weight: kaiming_uniform(a=sqrt(5))  ==  U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    Conv2d / Linear bias:   U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    ResNet conv weights:    kaiming_normal_fan_out  ==  N(0, 2 / fan_out)

Every draw comes from `numbacnn.random.rng()` (so `numbacnn.random.seed(s)` makes a model's
initial weights reproducible) and is made directly in float32.
"""

import math

import numpy as np

from numbacnn import random as nrandom

__all__ = ["uniform", "kaiming_uniform", "kaiming_normal_fan_out"]


def uniform(shape, bound):
    """U(-bound, bound) in float32, drawn directly in float32 (no float64 temporary)."""
    u = nrandom.rng().random(shape, dtype=np.float32)  # [0, 1)
    u *= np.float32(2 * bound)
    u -= np.float32(bound)
    return u


_SQRT5 = math.sqrt(5)  # torch.nn's default `a` for Conv2d and Linear weights


def kaiming_uniform(shape, fan_in, a=_SQRT5):
    """torch.nn.init.kaiming_uniform_(w, a): U(-b, b), b = gain * sqrt(3 / fan_in),
    gain = sqrt(2 / (1 + a^2)). With a = sqrt(5) (torch's default) b = 1 / sqrt(fan_in)."""
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in))


def kaiming_normal_fan_out(shape):
    """torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu") for a conv
    weight (C_out, C_in/g, kH, kW): N(0, 2 / fan_out), fan_out = C_out * kH * kW."""
    fan_out = shape[0] * int(np.prod(shape[2:]))
    w = nrandom.rng().standard_normal(shape, dtype=np.float32)
    w *= np.float32(math.sqrt(2.0 / fan_out))
    return w
