"""Model zoo: the lecture's networks, built from numbacnn layers and graphs.

    build_model(name, num_classes=10, in_channels=1, **kwargs) -> model
    MODELS: name -> builder(num_classes, in_channels, **kwargs)

Input sizes: lenet5 32 x 32; alexnet and the full vgg/resnet models 224 x 224 (resnets
accept any size >= 32); vgg_small and resnet_cifar 32 x 32 (28 also works for resnet_cifar).
"""
from numbacnn.models.alexnet import alexnet
from numbacnn.models.lenet import lenet5
from numbacnn.models.resnet import (BasicBlock, Bottleneck, resnet, resnet18, resnet34, resnet50,
                                    resnet_cifar)
from numbacnn.models.vgg import VGG_CONFIGS, vgg, vgg11, vgg13, vgg16, vgg19, vgg_block, vgg_small

MODELS = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "vgg_small": vgg_small,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet_cifar": resnet_cifar,
}


def build_model(name, num_classes=10, in_channels=1, **kwargs):
    """Build a registered model by name."""
    if name not in MODELS:
        raise ValueError(f"build_model: unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = ["MODELS", "build_model", "lenet5", "alexnet", "vgg", "vgg_block", "VGG_CONFIGS", "vgg11",
           "vgg13", "vgg16", "vgg19", "vgg_small", "resnet", "resnet18", "resnet34", "resnet50",
           "resnet_cifar", "BasicBlock", "Bottleneck"]
