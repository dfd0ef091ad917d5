"""The lecture's worked examples (shared/lecture/cnn-lecture.md), verified exactly.

Where the slide's own arithmetic does not hold, the test says so and checks the true value
(see test_lecture_224_input_needs_55_layers_not_44 and the max-pooling edge example).
"""

import numpy as np
import pytest

from numbacnn import functional as F
from numbacnn import reference as R

X3 = np.arange(9.0).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
K2 = np.array([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
def test_lecture_3x3_star_2x2(impl):
    """Slide "2-D Convolution Layer": [[0,1,2],[3,4,5],[6,7,8]] (star) [[0,1],[2,3]] = [[19,25],[37,43]]."""
    y = impl.conv2d(X3, K2)
    np.testing.assert_array_equal(y, [[[[19.0, 25.0], [37.0, 43.0]]]])
    # e.g. 19 = 0*0 + 1*1 + 3*2 + 4*3
    assert 0 * 0 + 1 * 1 + 3 * 2 + 4 * 3 == 19


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
def test_lecture_two_channel_example(impl):
    """Slide "Multiple Input Channels": (1*1 + 2*2 + 4*3 + 5*4) + (0*0 + 1*1 + 3*2 + 4*3) = 56."""
    x = np.stack([np.arange(9.0).reshape(3, 3), np.arange(1.0, 10.0).reshape(3, 3)])[None]
    w = np.stack([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])[None]
    y = impl.conv2d(x, w)
    assert y[0, 0, 0, 0] == (1 * 1 + 2 * 2 + 4 * 3 + 5 * 4) + (0 * 0 + 1 * 1 + 3 * 2 + 4 * 3) == 56
    # the full output, by the same arithmetic: channel 0 gives [[19,25],[37,43]], channel 1
    # gives [[37,47],[67,77]] (e.g. 47 = 2*1 + 3*2 + 5*3 + 6*4); the sum over channels:
    ch1 = np.array(
        [
            [1 * 1 + 2 * 2 + 4 * 3 + 5 * 4, 2 * 1 + 3 * 2 + 5 * 3 + 6 * 4],
            [4 * 1 + 5 * 2 + 7 * 3 + 8 * 4, 5 * 1 + 6 * 2 + 8 * 3 + 9 * 4],
        ]
    )
    np.testing.assert_array_equal(ch1, [[37, 47], [67, 77]])
    np.testing.assert_array_equal(y, [[[[56.0, 72.0], [104.0, 120.0]]]])
    # "Y = sum_i X_i (star) W_i": the sum of the two single-channel correlations
    np.testing.assert_array_equal(y, impl.conv2d(x[:, :1], w[:, :1]) + impl.conv2d(x[:, 1:], w[:, 1:]))


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
def test_lecture_padding_example(impl):
    """Slide "Padding": with one row/column of zeros around the input, the top-left output is
    0*0 + 0*1 + 0*2 + 0*3 = 0 and the output grows to (3 - 2 + 2 + 1) = 4 per side."""
    y = impl.conv2d(X3, K2, padding=1)
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == 0.0
    np.testing.assert_array_equal(y[0, 0, 1:3, 1:3], [[19.0, 25.0], [37.0, 43.0]])
    np.testing.assert_array_equal(y[0, 0], [[0, 3, 8, 4], [9, 19, 25, 10], [21, 37, 43, 16], [6, 7, 8, 0]])


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
def test_lecture_padding_stride_example(impl):
    """Slide "Stride": padding 1, strides 3 (height) and 2 (width):
    0*0 + 0*1 + 1*2 + 2*3 = 8 and 0*0 + 6*1 + 0*2 + 0*3 = 6."""
    y = impl.conv2d(X3, K2, padding=1, stride=(3, 2))
    # floor((3 - 2 + 2 + 3)/3) x floor((3 - 2 + 2 + 2)/2) = 2 x 2
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [[0.0, 8.0], [6.0, 8.0]])
    assert y[0, 0, 0, 1] == 0 * 0 + 0 * 1 + 1 * 2 + 2 * 3 == 8
    assert y[0, 0, 1, 0] == 0 * 0 + 6 * 1 + 0 * 2 + 0 * 3 == 6


# ----------------------------------------------------------------------------------------
# output shapes (slides "Padding" and "Stride")


def _conv_chain_size(n, k, layers):
    x = np.zeros((1, 1, n, n))
    w = np.ones((1, 1, k, k))
    for _ in range(layers):
        x = F.conv2d(x, w)
    return x.shape[2:]


def test_lecture_32x32_with_5x5_gives_28x28_then_4x4_after_7_layers():
    assert _conv_chain_size(32, 5, 1) == (28, 28)
    assert _conv_chain_size(32, 5, 7) == (4, 4)


def test_lecture_224_input_needs_55_layers_not_44():
    """Slide "Stride": "Given a 224 x 224 input with a 5 x 5 kernel, needs 44 layers to reduce
    the shape to 4 x 4". Each unpadded 5x5 layer removes 4 rows, so 44 layers leave
    224 - 44*4 = 48; reaching 4x4 takes (224 - 4) / 4 = 55 layers. The slide's 44 is an
    arithmetic slip (the point, that shrinking is linear and slow, stands)."""
    n, layers = 224, 0
    while n > 4:
        n = (n - 5 + 0 + 1) // 1  # floor((n - k + p + s) / s) with p = 0, s = 1
        layers += 1
    assert (n, layers) == (4, 55)
    assert 224 - 44 * 4 == 48
    assert _conv_chain_size(224, 5, 55) == (4, 4)
    assert _conv_chain_size(224, 5, 44) == (48, 48)


def test_lecture_output_shape_formula():
    """floor((n - k + p + s) / s) per axis, p the TOTAL padding (p/2 per side here)."""
    for n in (1, 2, 3, 5, 8, 9, 13):
        for k in (1, 2, 3, 4):
            for p in (0, 2, 4):
                for s in (1, 2, 3):
                    if n + p < k:
                        continue
                    y = F.conv2d(np.zeros((1, 1, n, n + 1)), np.zeros((1, 1, k, k)), padding=p // 2, stride=s)
                    assert y.shape[2:] == ((n - k + p + s) // s, (n + 1 - k + p + s) // s), (n, k, p, s)
    # without padding and stride: (n_h - k_h + 1) x (n_w - k_w + 1)
    assert F.conv2d(np.zeros((1, 1, 7, 9)), np.zeros((1, 1, 3, 2))).shape[2:] == (5, 8)


def test_lecture_same_padding_with_stride_gives_floor_n_plus_s_minus_1_over_s():
    """With p = k - 1: floor((n + s - 1) / s), i.e. n / s when s divides n."""
    for n in range(1, 12):
        for s in (1, 2, 3, 4):
            for k in (1, 2, 3, 4, 5):
                y = F.conv2d(np.zeros((1, 1, n, n)), np.zeros((1, 1, k, k)), padding="same", stride=s)
                assert y.shape[2:] == ((n + s - 1) // s,) * 2, (n, s, k)
                if n % s == 0:
                    assert y.shape[2] == n // s


def test_lecture_same_even_kernel_pads_ceil_on_top_floor_on_bottom():
    """Slide "Padding": even k_h: ceil(p_h/2) on top, floor(p_h/2) on bottom (p_h = k_h - 1).
    A 2x2 kernel: one row of zeros on top, none on the bottom (likewise left/right)."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
    y = F.conv2d(x, w, padding="same")
    assert y.shape == x.shape
    # the top-left tap reads padded[i, j] = x[i-1, j-1]: a zero first row and column
    np.testing.assert_array_equal(y[0, 0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]])
    w2 = np.zeros((1, 1, 4, 4))
    w2[0, 0, 0, 0] = 1.0  # k = 4: p = 3, 2 on top/left, 1 on bottom/right
    y2 = F.conv2d(x, w2, padding="same")
    np.testing.assert_array_equal(y2[0, 0], [[0, 0, 0], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(R.conv2d(x, w2, padding="same"), y2)


# ----------------------------------------------------------------------------------------
# pooling


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
def test_lecture_max_pool_window(impl):
    """Slide "2-D Max Pooling": max(0, 1, 3, 4) = 4 in a 2x2 window."""
    y = impl.max_pool2d(X3, 2, stride=1)
    assert y[0, 0, 0, 0] == max(0, 1, 3, 4) == 4
    np.testing.assert_array_equal(y[0, 0], [[4.0, 5.0], [7.0, 8.0]])


def _edge_image(first_ones):
    x = np.zeros((1, 1, 4, 5))
    x[..., :first_ones] = 1.0
    return x


def test_lecture_vertical_edge_then_max_pool_tolerant_to_one_pixel():
    """Slides "Pooling" / "2-D Max Pooling": X with ones in its first two columns and the
    kernel [[1, -1]] give Y with a 1 in column 1 (the vertical edge)."""
    X = _edge_image(2)
    K = np.array([[[[1.0, -1.0]]]])
    Y = F.conv2d(X, K)
    np.testing.assert_array_equal(Y[0, 0], [[0, 1, 0, 0]] * 4)
    np.testing.assert_array_equal(R.conv2d(X, K), Y)

    # A 2x2 max pool with stride 1 widens the detection to columns 0..1 (3x3 output).
    P = F.max_pool2d(Y, 2, stride=1)
    np.testing.assert_array_equal(P[0, 0], [[1, 1, 0]] * 3)

    # The slide's pooled matrix is 4x4 with ones in columns 0..2. No 2x2 window can produce
    # three ones from a single-column edge; the slide's matrix is exactly a 3x3 max pool with
    # stride 1 and padding 1 (a same-size pooling), which we reproduce verbatim:
    P_slide = F.max_pool2d(Y, 3, stride=1, padding=1)
    np.testing.assert_array_equal(P_slide[0, 0], [[1, 1, 1, 0]] * 4)

    # "Tolerant to 1 pixel": shift X by one pixel (ones in the first three columns). The raw
    # detection moves to a column where the old one was 0, but the pooled detections overlap.
    Y_shift = F.conv2d(_edge_image(3), K)
    np.testing.assert_array_equal(Y_shift[0, 0], [[0, 0, 1, 0]] * 4)
    assert not np.any((Y == 1) & (Y_shift == 1))
    P_shift = F.max_pool2d(Y_shift, 2, stride=1)
    np.testing.assert_array_equal(P_shift[0, 0], [[0, 1, 1]] * 3)
    assert np.any((P == 1) & (P_shift == 1))
    P_slide_shift = F.max_pool2d(Y_shift, 3, stride=1, padding=1)
    assert np.array_equal(P_slide_shift[..., :, 1:3], P_slide[..., :, 1:3])  # columns 1, 2 still fire


def test_lecture_1x1_conv_equals_dense_layer():
    """Slide "1 x 1 Convolutional Layer": a dense layer over the channels at every pixel,
    with n_h n_w x c_i input and c_o x c_i weight."""
    rng = np.random.default_rng(0)
    N, ci, co, h, w = 2, 5, 3, 4, 6
    x = rng.standard_normal((N, ci, h, w))
    W = rng.standard_normal((co, ci))
    b = rng.standard_normal(co)
    y = F.conv2d(x, W.reshape(co, ci, 1, 1), b)
    pixels = x.transpose(0, 2, 3, 1).reshape(N * h * w, ci)  # (n_h n_w, c_i) per image
    dense = F.linear(pixels, W, b).reshape(N, h, w, co).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, dense, rtol=1e-12, atol=1e-12)
    # and their gradients agree too
    dy = rng.standard_normal(y.shape)
    dx, dW, db = F.conv2d_backward(dy, x, W.reshape(co, ci, 1, 1))
    dpix, dW2, db2 = F.linear_backward(dy.transpose(0, 2, 3, 1).reshape(-1, co), pixels, W)
    np.testing.assert_allclose(dx, dpix.reshape(N, h, w, ci).transpose(0, 3, 1, 2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dW.reshape(co, ci), dW2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, db2, rtol=1e-12, atol=1e-12)


def test_lecture_lenet_feature_map_sizes():
    """Slide "LeNet-5": 32x32x1 -> conv5 28x28x6 -> avgpool2 14x14x6 -> conv5 10x10x16
    -> avgpool2 5x5x16 -> conv5 1x1x120."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 32, 32))
    x = F.tanh(F.conv2d(x, rng.standard_normal((6, 1, 5, 5))))
    assert x.shape == (1, 6, 28, 28)
    x = F.avg_pool2d(x, 2, stride=2)
    assert x.shape == (1, 6, 14, 14)
    x = F.tanh(F.conv2d(x, rng.standard_normal((16, 6, 5, 5))))
    assert x.shape == (1, 16, 10, 10)
    x = F.avg_pool2d(x, 2, stride=2)
    assert x.shape == (1, 16, 5, 5)
    x = F.conv2d(x, rng.standard_normal((120, 16, 5, 5)))
    assert x.shape == (1, 120, 1, 1)
