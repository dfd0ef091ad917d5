"""ResNet (He et al. 2016), following torchvision's structure (v1.5: stride on the 3x3 conv
of the bottleneck), so parameter names, order and shapes equal torchvision's resnet18/34/50.

    stem:    conv1 7x7/2 (pad 3, no bias) - bn1 - relu - maxpool 3x3/2 (pad 1)
    layer1..layer4: stages of blocks with widths 64, 128, 256, 512; the first block of
             layer2..4 has stride 2; a block whose stride or width changes gets a projection
             shortcut `downsample` = 1x1 conv (stride s, no bias) + BatchNorm2d
    head:    avgpool (global) - flatten - fc

BasicBlock (resnet18/34):  x -> conv3x3/s-bn-relu-conv3x3-bn -> (+ shortcut(x)) -> relu
Bottleneck (resnet50, expansion 4):
    x -> conv1x1-bn-relu-conv3x3/s-bn-relu-conv1x1(x4)-bn -> (+ shortcut(x)) -> relu

Each block is a Graph: x fans out to the residual branch and the shortcut, and the Graph's
backward sums the two gradients. Convolution weights use torchvision's init
(kaiming_normal_, mode="fan_out", nonlinearity="relu"); BN weight 1, bias 0.

resnet_cifar: He et al.'s CIFAR ResNet (depth 6n+2, e.g. ResNet-20) for 28-32 px inputs:
3x3 stem (16 channels, no max-pool), three stages of widths 16, 32, 64, projection
shortcuts (1x1 conv + BN), global average pool, fc.
"""

from numbacnn.graph import Graph, Sequential
from numbacnn.layers import (
    Add,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    kaiming_normal_fan_out,
)


def _shortcut(in_channels, out_channels, stride):
    """1x1 conv + BN projection (names downsample.0 / downsample.1, as torchvision)."""
    return Sequential(
        Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), BatchNorm2d(out_channels)
    )


class BasicBlock(Graph):
    """(N, in_channels, H, W) -> (N, channels, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, in_channels, channels, stride=1):
        super().__init__(input_name="x")
        self.add(
            "conv1", Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False), inputs=["x"]
        )
        self.add("bn1", BatchNorm2d(channels))
        self.add("relu1", ReLU())
        self.add("conv2", Conv2d(channels, channels, 3, padding=1, bias=False))
        self.add("bn2", BatchNorm2d(channels))
        shortcut = "x"
        if stride != 1 or in_channels != channels:
            self.add("downsample", _shortcut(in_channels, channels, stride), inputs=["x"])
            shortcut = "downsample"
        self.add("add", Add(), inputs=["bn2", shortcut])
        self.add("relu2", ReLU())
        self._desc = f"{in_channels}, {channels}, stride={stride}"

    def extra_repr(self):
        return self._desc


class Bottleneck(Graph):
    """(N, in_channels, H, W) -> (N, 4 * width, H/stride, W/stride); stride on the 3x3 conv."""

    expansion = 4

    def __init__(self, in_channels, width, stride=1):
        super().__init__(input_name="x")
        out = width * self.expansion
        self.add("conv1", Conv2d(in_channels, width, 1, bias=False), inputs=["x"])
        self.add("bn1", BatchNorm2d(width))
        self.add("relu1", ReLU())
        self.add("conv2", Conv2d(width, width, 3, stride=stride, padding=1, bias=False))
        self.add("bn2", BatchNorm2d(width))
        self.add("relu2", ReLU())
        self.add("conv3", Conv2d(width, out, 1, bias=False))
        self.add("bn3", BatchNorm2d(out))
        shortcut = "x"
        if stride != 1 or in_channels != out:
            self.add("downsample", _shortcut(in_channels, out, stride), inputs=["x"])
            shortcut = "downsample"
        self.add("add", Add(), inputs=["bn3", shortcut])
        self.add("relu3", ReLU())
        self._desc = f"{in_channels}, {width}, stride={stride}"

    def extra_repr(self):
        return self._desc


def _stage(block, in_channels, width, num_blocks, stride):
    """A Sequential of blocks "0", "1", ...; the first one carries the stride."""
    stage = Sequential()
    for i in range(num_blocks):
        stage.append(block(in_channels, width, stride if i == 0 else 1))
        in_channels = width * block.expansion
    return stage, in_channels


def _torchvision_init(model):
    """Conv weights ~ kaiming_normal_(fan_out, relu), as torchvision's ResNet.__init__."""
    for _, m in model.named_modules():
        if isinstance(m, Conv2d):
            m.weight.data[...] = kaiming_normal_fan_out(m.weight.shape)
    return model


def resnet(block, layers, num_classes=1000, in_channels=3, widths=(64, 128, 256, 512), stem="imagenet"):
    """A ResNet of `block`s; layers[i] blocks in stage i+1 (stride 1 for the first stage,
    2 for the others). stem="imagenet": 7x7/2 conv + 3x3/2 max-pool (H/4);
    stem="cifar": 3x3/1 conv, no pool."""
    net = Graph(input_name="x")
    c = widths[0]
    if stem == "imagenet":
        net.add("conv1", Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False))  # (N, 64, H/2, W/2)
    elif stem == "cifar":
        net.add("conv1", Conv2d(in_channels, c, 3, stride=1, padding=1, bias=False))  # (N, 16, H, W)
    else:
        raise ValueError(f"resnet: stem must be 'imagenet' or 'cifar', got {stem!r}")
    net.add("bn1", BatchNorm2d(c))
    net.add("relu", ReLU())
    if stem == "imagenet":
        net.add("maxpool", MaxPool2d(3, stride=2, padding=1))  # (N, 64, H/4, W/4)
    for i, (n, w) in enumerate(zip(layers, widths, strict=True), start=1):
        stage, c = _stage(block, c, w, n, 1 if i == 1 else 2)
        net.add(f"layer{i}", stage)  # (N, w * expansion, ...)
    net.add("avgpool", GlobalAvgPool2d())  # (N, c, 1, 1)
    net.add("flatten", Flatten())  # (N, c)
    net.add("fc", Linear(c, num_classes))  # (N, num_classes)
    return _torchvision_init(net)


def resnet18(num_classes=1000, in_channels=3):
    return resnet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes=1000, in_channels=3):
    return resnet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes=1000, in_channels=3):
    return resnet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet_cifar(num_classes=10, in_channels=3, depth=20):
    """He et al.'s CIFAR ResNet-(6n+2): 3 stages of n BasicBlocks, widths 16/32/64."""
    if (depth - 2) % 6:
        raise ValueError(f"resnet_cifar: depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return resnet(BasicBlock, (n, n, n), num_classes, in_channels, widths=(16, 32, 64), stem="cifar")
