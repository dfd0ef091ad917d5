"""LeNet-5 as in the lecture (LeCun et al. 1998; the lecture's table and PyTorch code).

    layer          #channels  kernel  stride  activation  feature map
    Input                                                 32 x 32 x 1
    Conv 1         6          5 x 5   1       tanh        28 x 28 x 6
    Avg Pooling 1             2 x 2   2                   14 x 14 x 6
    Conv 2         16         5 x 5   1       tanh        10 x 10 x 16
    Avg Pooling 2             2 x 2   2                   5 x 5 x 16
    Conv 3         120        5 x 5   1       tanh        120
    FC 1                                      tanh        84
    FC 2                                                  10

Note: the lecture's table puts tanh after Conv 3, its PyTorch code does not (Conv3 is
followed directly by Flatten). We follow the table (and LeCun's C5 layer), so Conv 3 is
followed by tanh; the torch twin in tests/test_parity_torch.py does the same.
"""

from numbacnn.graph import Sequential
from numbacnn.layers import AvgPool2d, Conv2d, Flatten, Linear, Tanh


def lenet5(num_classes=10, in_channels=1):
    """LeNet-5 for 32 x 32 inputs (MNIST's 28 x 28 padded by 2)."""
    return Sequential(
        ("conv1", Conv2d(in_channels, 6, kernel_size=5)),  # (N, 6, 28, 28)
        ("tanh1", Tanh()),
        ("pool1", AvgPool2d(kernel_size=2, stride=2)),  # (N, 6, 14, 14)
        ("conv2", Conv2d(6, 16, kernel_size=5)),  # (N, 16, 10, 10)
        ("tanh2", Tanh()),
        ("pool2", AvgPool2d(kernel_size=2, stride=2)),  # (N, 16, 5, 5)
        ("conv3", Conv2d(16, 120, kernel_size=5)),  # (N, 120, 1, 1)
        ("tanh3", Tanh()),
        ("flatten", Flatten()),  # (N, 120)
        ("fc1", Linear(120, 84)),  # (N, 84)
        ("tanh4", Tanh()),
        ("fc2", Linear(84, num_classes)),  # (N, num_classes)
    )
