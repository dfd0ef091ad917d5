"""Model zoo: the lecture's networks, built from numbacnn layers and graphs.

    build_model(name, num_classes=10, in_channels=1, **kwargs) -> model
    MODELS: name -> builder(num_classes, in_channels, **kwargs)
    model_info(name) -> ModelInfo(builder, side, min_side)

The registry below is the one place that knows each model's input facts (square inputs,
H = W = side, in pixels):

    side      the side the model is built for: ``numbacnn summary`` uses it.
    min_side  the smallest side it is meant to take; smaller images (MNIST's 28 x 28) are
              zero-padded up to it (``numbacnn.recipe.input_pad``).

    lenet5, vgg_small      32 / 32    (their conv/dense stack fixes the side: 32-35, 32-39)
    resnet_cifar           32 / 32    (global pooling: any side works; 32 is the CIFAR side)
    resnet18/34/50        224 / 32    (global pooling: any side; at 32 the last map is 1 x 1)
    alexnet, vgg11..19    224 / 224   (the first dense layer is sized for 224)
"""

from collections.abc import Callable
from typing import NamedTuple

from numbacnn.models.alexnet import alexnet
from numbacnn.models.lenet import lenet5
from numbacnn.models.resnet import BasicBlock, Bottleneck, resnet, resnet18, resnet34, resnet50, resnet_cifar
from numbacnn.models.vgg import VGG_CONFIGS, vgg, vgg11, vgg13, vgg16, vgg19, vgg_block, vgg_small


class ModelInfo(NamedTuple):
    """A registry entry: ``builder(num_classes, in_channels, **kwargs)`` and the input sides
    (pixels) the model is built for (``side``) and meant to take at least (``min_side``)."""

    builder: Callable
    side: int
    min_side: int


_REGISTRY = {
    "lenet5": ModelInfo(lenet5, side=32, min_side=32),
    "alexnet": ModelInfo(alexnet, side=224, min_side=224),
    "vgg11": ModelInfo(vgg11, side=224, min_side=224),
    "vgg13": ModelInfo(vgg13, side=224, min_side=224),
    "vgg16": ModelInfo(vgg16, side=224, min_side=224),
    "vgg19": ModelInfo(vgg19, side=224, min_side=224),
    "vgg_small": ModelInfo(vgg_small, side=32, min_side=32),
    "resnet18": ModelInfo(resnet18, side=224, min_side=32),
    "resnet34": ModelInfo(resnet34, side=224, min_side=32),
    "resnet50": ModelInfo(resnet50, side=224, min_side=32),
    "resnet_cifar": ModelInfo(resnet_cifar, side=32, min_side=32),
}

MODELS = {name: info.builder for name, info in _REGISTRY.items()}


def build_model(name, num_classes=10, in_channels=1, **kwargs):
    """Build a registered model by name. Raises ValueError for an unknown name."""
    if name not in MODELS:
        raise ValueError(f"build_model: unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


def model_info(name):
    """The registry entry (``ModelInfo``) of a model. Raises ValueError for an unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"model_info: unknown model {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


__all__ = [
    "MODELS",
    "ModelInfo",
    "build_model",
    "model_info",
    "lenet5",
    "alexnet",
    "vgg",
    "vgg_block",
    "VGG_CONFIGS",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg_small",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_cifar",
    "BasicBlock",
    "Bottleneck",
]
