"""AlexNet as in the lecture (single tower, the d2l version) for 224 x 224 inputs.

    Conv(96, 11, s4, p1)-ReLU-MaxPool(3, 2)        54 x 54 x 96  -> 26 x 26 x 96
    Conv(256, 5, p2)-ReLU-MaxPool(3, 2)            26 x 26 x 256 -> 12 x 12 x 256
    Conv(384, 3, p1)-ReLU                          12 x 12 x 384
    Conv(384, 3, p1)-ReLU                          12 x 12 x 384
    Conv(256, 3, p1)-ReLU-MaxPool(3, 2)            12 x 12 x 256 -> 5 x 5 x 256
    Flatten-Linear(6400, 4096)-ReLU-Dropout(0.5)
    Linear(4096, 4096)-ReLU-Dropout(0.5)
    Linear(4096, num_classes)

With 3 input channels this reproduces the lecture's complexity table (params / MACs):
Conv1 35K / 101M, Conv2 614K / 415M, Conv3-5 3M / 445M, Dense1 26M / 26M,
Dense2 16M / 16M, total 46M / 1G. (The table's totals leave out the output layer:
Linear(4096, 1000) adds 4.1M parameters and 4.1M MACs.)
"""

from numbacnn.graph import Sequential
from numbacnn.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU


def alexnet(num_classes=1000, in_channels=3, dropout=0.5):
    """The lecture's AlexNet; expects (N, in_channels, 224, 224) inputs."""
    return Sequential(
        ("conv1", Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1)),  # (N, 96, 54, 54)
        ("relu1", ReLU()),
        ("pool1", MaxPool2d(kernel_size=3, stride=2)),  # (N, 96, 26, 26)
        ("conv2", Conv2d(96, 256, kernel_size=5, padding=2)),  # (N, 256, 26, 26)
        ("relu2", ReLU()),
        ("pool2", MaxPool2d(kernel_size=3, stride=2)),  # (N, 256, 12, 12)
        ("conv3", Conv2d(256, 384, kernel_size=3, padding=1)),  # (N, 384, 12, 12)
        ("relu3", ReLU()),
        ("conv4", Conv2d(384, 384, kernel_size=3, padding=1)),  # (N, 384, 12, 12)
        ("relu4", ReLU()),
        ("conv5", Conv2d(384, 256, kernel_size=3, padding=1)),  # (N, 256, 12, 12)
        ("relu5", ReLU()),
        ("pool5", MaxPool2d(kernel_size=3, stride=2)),  # (N, 256, 5, 5)
        ("flatten", Flatten()),  # (N, 6400)
        ("fc1", Linear(6400, 4096)),
        ("relu6", ReLU()),
        ("drop1", Dropout(dropout)),
        ("fc2", Linear(4096, 4096)),
        ("relu7", ReLU()),
        ("drop2", Dropout(dropout)),
        ("fc3", Linear(4096, num_classes)),  # (N, num_classes)
    )
