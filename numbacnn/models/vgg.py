"""VGG (Simonyan & Zisserman 2014) as in the lecture: repeated VGG blocks, then dense layers.

A VGG block is n 3x3 convolutions (padding 1) with ReLU, then a 2x2 max-pool with stride
2 (halving H and W). A configuration is a tuple of (num_convs, out_channels) per block;
the classifier is Flatten-Linear(hidden)-ReLU-Dropout-Linear(hidden)-ReLU-Dropout-
Linear(num_classes), as in the lecture/d2l (hidden = 4096 at 224 x 224).
"""

from numbacnn.graph import Sequential
from numbacnn.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU

VGG_CONFIGS = {
    "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
    "vgg13": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),
    "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
    "vgg19": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),
    # narrow variant for 28-32 px inputs (MNIST padded to 32, CIFAR): 32 -> 2 x 2 x 128
    "vgg_small": ((1, 16), (1, 32), (2, 64), (2, 128)),
}


def vgg_block(num_convs, in_channels, out_channels, batch_norm=False):
    """(N, in_channels, H, W) -> (N, out_channels, H/2, W/2)."""
    block = Sequential()
    c = in_channels
    for i in range(1, num_convs + 1):
        block.add(f"conv{i}", Conv2d(c, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            block.add(f"bn{i}", BatchNorm2d(out_channels))
        block.add(f"relu{i}", ReLU())
        c = out_channels
    block.add("pool", MaxPool2d(kernel_size=2, stride=2))
    return block


def vgg(cfg, num_classes=1000, in_channels=3, input_size=224, hidden=4096, dropout=0.5, batch_norm=False):
    """VGG from `cfg` (a name in VGG_CONFIGS or a tuple of (num_convs, channels)) for
    square inputs of side `input_size`. batch_norm=True inserts BatchNorm2d after each conv."""
    if isinstance(cfg, str):
        if cfg not in VGG_CONFIGS:
            raise ValueError(f"vgg: unknown configuration {cfg!r}; known: {sorted(VGG_CONFIGS)}")
        cfg = VGG_CONFIGS[cfg]
    side = input_size
    for _ in cfg:
        side //= 2
    if side < 1:
        raise ValueError(
            f"vgg: input_size={input_size} is too small for {len(cfg)} blocks (each halves H and W)"
        )
    net = Sequential()
    c = in_channels
    for b, (num_convs, channels) in enumerate(cfg, start=1):
        net.add(f"block{b}", vgg_block(num_convs, c, channels, batch_norm))  # (N, channels, H/2^b, W/2^b)
        c = channels
    net.add("flatten", Flatten())  # (N, c * side * side)
    net.add("fc1", Linear(c * side * side, hidden))
    net.add("relu1", ReLU())
    net.add("drop1", Dropout(dropout))
    net.add("fc2", Linear(hidden, hidden))
    net.add("relu2", ReLU())
    net.add("drop2", Dropout(dropout))
    net.add("fc3", Linear(hidden, num_classes))  # (N, num_classes)
    return net


def vgg11(num_classes=1000, in_channels=3, **kw):
    return vgg("vgg11", num_classes, in_channels, **kw)


def vgg13(num_classes=1000, in_channels=3, **kw):
    return vgg("vgg13", num_classes, in_channels, **kw)


def vgg16(num_classes=1000, in_channels=3, **kw):
    return vgg("vgg16", num_classes, in_channels, **kw)


def vgg19(num_classes=1000, in_channels=3, **kw):
    return vgg("vgg19", num_classes, in_channels, **kw)


def vgg_small(num_classes=10, in_channels=1, input_size=32, hidden=256, dropout=0.5, batch_norm=True):
    """A narrow VGG with BatchNorm for 32 x 32 inputs: 4 blocks (16, 32, 64x2, 128x2)."""
    return vgg(
        "vgg_small",
        num_classes,
        in_channels,
        input_size=input_size,
        hidden=hidden,
        dropout=dropout,
        batch_norm=batch_norm,
    )
