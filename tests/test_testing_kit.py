"""numbacnn.testing (check_op, the strategies) and `numbacnn verify`: the kit passes the
project's kernels and its oracle, and catches a planted error in each op family with the
shrunk case, the first wrong index and both values."""

import importlib.util
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings

from numbacnn import functional as F
from numbacnn import reference as R
from numbacnn.cli import main
from numbacnn.testing import (
    OPS,
    batch_norm_configs,
    check_op,
    cross_entropy_configs,
    elementwise_configs,
    linear_configs,
    pool2d_configs,
)

ALL_OPS = [n for op in OPS for n in (op, op + "_backward")]
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "verify_your_kernel.py")


@pytest.mark.parametrize("op", ALL_OPS)
def test_check_op_passes_the_kernels_and_the_oracle(op):
    for candidate in (getattr(F, op), getattr(R, op)):
        report = check_op(op, candidate, examples=40)
        assert report.examples == 40, report
        assert str(report).startswith(f"{op}: {op} passed 40 examples against numbacnn.reference.{op}")
        if op.endswith("_backward"):  # about half the examples are float64 without a kink
            assert report.finite_differences >= 5, report


# ----------------------------------------------------------------------------------------
# planted errors, one or more per op family


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _load_example():
    spec = importlib.util.spec_from_file_location("verify_your_kernel", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _caught(op, candidate, examples=200):
    """check_op's AssertionError message for a wrong candidate."""
    with pytest.raises(AssertionError) as info:
        check_op(op, candidate, examples=examples)
    message = str(info.value)
    assert f"{op}: " in message and "the smallest one Hypothesis found" in message, message
    return message


def _first_wrong(message):
    """(index, got, expected) from a values mismatch line."""
    m = re.search(r"the first at index (\([\d, ]*\)): got (\S+), expected (\S+) ", message)
    assert m, message
    return m.groups()


def test_the_examples_padding_off_by_one_is_caught_and_shrunk():
    example = _load_example()
    message = _caught("conv2d", example.conv2d_student)
    assert "padding='same'" in message  # the only padding where top and bottom differ
    index, got, expected = _first_wrong(message)
    assert got != expected
    # shrunk: a small input, shown in full
    x = re.search(r"x=np.array\((\[.*?\]), dtype", message).group(1)
    assert np.array(eval(x)).size <= 4, message
    assert check_op("conv2d", example.conv2d_fixed).examples == 200


def test_a_wrong_stride_is_caught():
    def conv2d_one_stride(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return R.conv2d(x, weight, bias, _pair(stride)[0], padding, dilation, groups)  # stride_h for both

    message = _caught("conv2d", conv2d_one_stride)
    assert re.search(r"stride=\((\d), (?!\1)\d\)", message), message  # a pair of two strides
    assert "shape" in message or "differ" in message


def test_a_backward_that_ignores_dilation_is_caught():
    def conv2d_backward_no_dilation(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
        return R.conv2d_backward(dy, x, weight, stride, padding, 1, groups)

    message = _caught("conv2d_backward", conv2d_backward_no_dilation)
    assert "the call conv2d_backward(dy=np.array(" in message and "dilation=" in message


def _max_pool2d_backward_last_max(dy, x, kernel_size, stride=None, padding=0):
    """Each dy to the LAST maximum of its window (PyTorch and numbacnn pick the first)."""
    kH, kW = _pair(kernel_size)
    sh, sw = (kH, kW) if stride is None else _pair(stride)
    ph, pw = _pair(padding)
    N, C, H, W = x.shape
    dx = np.zeros_like(x)
    for n, c, oh, ow in np.ndindex(*dy.shape):
        best, where = -np.inf, None
        for kh in range(kH):
            for kw in range(kW):
                ih, iw = oh * sh - ph + kh, ow * sw - pw + kw
                if 0 <= ih < H and 0 <= iw < W and (where is None or x[n, c, ih, iw] >= best):
                    best, where = x[n, c, ih, iw], (ih, iw)
        dx[n, c, where[0], where[1]] += dy[n, c, oh, ow]
    return dx


def test_a_swapped_max_pool_tie_is_caught():
    message = _caught("max_pool2d_backward", _max_pool2d_backward_last_max)
    index, got, expected = _first_wrong(message)
    assert "dx: " in message


def test_average_pooling_without_the_padding_in_the_divisor_is_caught():
    def avg_pool2d_exclude_pad(x, kernel_size, stride=None, padding=0):
        ones = np.ones_like(x)
        return (
            R.avg_pool2d(x, kernel_size, stride, padding) / R.avg_pool2d(ones, kernel_size, stride, padding)
        ).astype(x.dtype)

    message = _caught("avg_pool2d", avg_pool2d_exclude_pad)
    assert re.search(r"padding=(\d+|\(\d, \d\))", message).group(1) not in ("0", "(0, 0)"), message


def _batch_norm(unbiased_running_var):
    def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
        axes = (0, *range(2, x.ndim))
        per_channel = (1, -1) + (1,) * (x.ndim - 2)
        if training and x.shape[0] == 0:  # an empty batch: nothing to normalise, no statistics
            return np.empty_like(x)
        if training:
            mean, var = x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)
            m = x.size // x.shape[1]
            if running_mean is not None:
                running_mean[...] = (1 - momentum) * running_mean + momentum * mean
                stat = var * m / (m - 1) if unbiased_running_var else var
                running_var[...] = (1 - momentum) * running_var + momentum * stat
        else:
            mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        y = (x - mean.reshape(per_channel)) / np.sqrt(var.reshape(per_channel) + eps)
        if weight is not None:
            y = y * weight.reshape(per_channel) + bias.reshape(per_channel)
        return y.astype(x.dtype)

    return batch_norm


def test_a_biased_running_variance_is_caught_and_the_unbiased_one_passes():
    message = _caught("batch_norm", _batch_norm(unbiased_running_var=False))
    assert "running_var: " in message and "training=True" in message
    assert check_op("batch_norm", _batch_norm(unbiased_running_var=True)).examples == 200


def test_a_naive_softmax_overflows_and_is_caught():
    def cross_entropy_naive(logits, labels):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))

    message = _caught("cross_entropy", cross_entropy_naive)
    assert "loss: got nan" in message or "loss: got inf" in message, message


def test_a_dropout_that_keeps_with_probability_p_is_caught():
    def dropout_keep_p(x, p=0.5, training=True, seed=None, offset=0):
        if not training:
            return x, None
        y, mask = R.dropout(x, 1.0 - p, training, seed, offset)
        return (x * mask / p if p else x * 0).astype(x.dtype), mask

    _caught("dropout", dropout_keep_p)


def test_a_blocked_loop_that_drops_its_remainder_is_caught():
    def linear_blocks_of_8(x, weight, bias=None):
        N, IN = x.shape
        y = np.zeros((N, weight.shape[0]), x.dtype)
        for b in range(max(1, IN // 8)):  # BUG: the last IN % 8 features are left out past 8
            y += x[:, b * 8 : (b + 1) * 8] @ weight[:, b * 8 : (b + 1) * 8].T
        return y if bias is None else y + bias

    assert "y: " in _caught("linear", linear_blocks_of_8)


def _bn_float32(two_pass):
    """batch norm computed in x's dtype: two-pass variance, or E[x^2] - E[x]^2 (cancels)."""

    def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
        axes, per_channel = (0, *range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)
        if training and x.shape[0] == 0:
            return np.empty_like(x)
        if training:
            mean = x.mean(axis=axes, dtype=x.dtype)
            if two_pass:
                var = ((x - mean.reshape(per_channel)) ** 2).mean(axis=axes, dtype=x.dtype)
            else:
                var = (x * x).mean(axis=axes, dtype=x.dtype) - mean * mean
            m = x.size // x.shape[1]
            if running_mean is not None:
                running_mean[...] = (1 - momentum) * running_mean + momentum * mean
                running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
        else:
            mean, var = running_mean, running_var
        y = (x - mean.reshape(per_channel)) / np.sqrt(var.reshape(per_channel) + x.dtype.type(eps))
        if weight is not None:
            y = y * weight.reshape(per_channel) + bias.reshape(per_channel)
        return y.astype(x.dtype)

    return batch_norm


def test_a_float32_variance_that_cancels_is_caught_and_the_two_pass_one_passes():
    assert "float32" in _caught("batch_norm", _bn_float32(two_pass=False))
    assert check_op("batch_norm", _bn_float32(two_pass=True)).examples == 200


def test_a_float32_log_sum_exp_loss_passes_on_its_logits_scale():
    def cross_entropy(logits, labels):
        if logits.shape[0] == 0:
            return float("nan")
        m = logits.max(axis=1)
        lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
        return float((lse - logits[np.arange(len(labels)), labels]).mean())

    assert check_op("cross_entropy", cross_entropy).examples == 200


def test_a_max_pool_that_ignores_nan_and_an_op_that_refuses_an_empty_batch_are_caught():
    def max_pool2d_fmax(x, kernel_size, stride=None, padding=0):
        y = R.max_pool2d(np.nan_to_num(x, nan=-np.inf), kernel_size, stride, padding)  # BUG: NaN ignored
        return y

    assert "expected nan" in _caught("max_pool2d", max_pool2d_fmax)

    def linear_no_empty(x, weight, bias=None):
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        return R.linear(x, weight, bias)

    message = _caught("linear", linear_no_empty)
    assert "raised ValueError: empty batch" in message and "np.zeros((0," in message


def test_a_candidate_that_exits_or_changes_its_mind_fails_cleanly():
    def linear_exits(x, weight, bias=None):
        raise SystemExit(0)

    assert "called sys.exit(0)" in _caught("linear", linear_exits)
    calls = [0]

    def linear_flaky(x, weight, bias=None):
        calls[0] += 1
        y = R.linear(x, weight, bias)
        return y + 1 if calls[0] == 7 else y  # wrong once

    with pytest.raises(AssertionError, match="gives different results for the same arguments"):
        check_op("linear", linear_flaky, examples=50)


def test_a_candidate_that_raises_or_writes_its_input_is_named():
    def relu_raises(x):
        return np.maximum(x, 0)[None][1]  # IndexError

    message = _caught("relu", relu_raises)
    assert "raised IndexError" in message and "test_testing_kit.py:" in message

    def relu_in_place(x):
        np.maximum(x, 0, out=x)
        return x.copy()

    assert "modified its input x" in _caught("relu", relu_in_place)


def test_check_op_argument_errors():
    with pytest.raises(ValueError, match="no checks for op 'conv3d'; known: conv2d, conv2d_backward"):
        check_op("conv3d", F.relu)
    with pytest.raises(TypeError, match="candidate must be a function"):
        check_op("relu", None)
    with pytest.raises(ValueError, match="examples must be >= 1"):
        check_op("relu", F.relu, examples=0)


# ----------------------------------------------------------------------------------------
# the strategies reach their hard cases


def _collect(strategy, flags, n=300):
    seen = set()

    @settings(max_examples=n, derandomize=True, database=None)
    @given(case=strategy)
    def run(case):
        seen.update(name for name, test in flags.items() if test(case))

    run()
    return seen


def _window_tie(c):
    kH, kW = _pair(c["kernel_size"])
    x = c["x"]
    return kH * kW > 1 and any(
        np.sum(x[n, ch, i : i + kH, j : j + kW] == x[n, ch, i : i + kH, j : j + kW].max()) > 1
        for n, ch, i, j in np.ndindex(
            x.shape[0], x.shape[1], max(0, x.shape[2] - kH + 1), max(0, x.shape[3] - kW + 1)
        )
    )


def test_the_strategies_draw_the_hard_cases():
    pool = {
        "tie in a window": _window_tie,
        "NaN": lambda c: np.isnan(c["x"]).any(),
        "empty": lambda c: c["x"].shape[0] == 0,
        "non-contiguous": lambda c: not c["x"].flags.c_contiguous,
        "16 rows": lambda c: c["x"].shape[2] > 7,
        "stride > window": lambda c: (
            c["stride"] is not None and min(_pair(c["stride"])) > max(_pair(c["kernel_size"]))
        ),
        "padding": lambda c: max(_pair(c["padding"])) > 0,
        "N = 1": lambda c: c["x"].shape[0] == 1,
    }
    assert _collect(pool2d_configs(), pool) == set(pool)
    bn = {
        "constant channel": lambda c: c["x"].shape[0] > 1 and np.ptp(c["x"][:, 0]) == 0,
        "one image": lambda c: c["x"].ndim == 4 and c["x"].shape[0] == 1,
        "2-D": lambda c: c["x"].ndim == 2,
        "eval": lambda c: not c["training"],
        "no running stats": lambda c: c["running_mean"] is None,
        "no affine": lambda c: c["weight"] is None,
        "mean 100": lambda c: c["x"].size and c["x"].mean() > 50,
        "empty": lambda c: c["x"].shape[0] == 0,
    }
    assert _collect(batch_norm_configs(), bn) == set(bn)
    act = {
        "0-D": lambda c: c["x"].ndim == 0,
        "zero": lambda c: (c["x"] == 0).any(),
        "saturating": lambda c: (np.abs(c["x"]) >= 1000).any(),
        "NaN": lambda c: np.isnan(c["x"]).any(),
        "non-contiguous": lambda c: not c["x"].flags.c_contiguous,
        "over 200 elements": lambda c: c["x"].size > 200,
    }
    assert _collect(elementwise_configs(), act) == set(act)
    ce = {
        "huge logits": lambda c: np.abs(c["logits"]).max(initial=0) >= 300,
        "one class": lambda c: c["logits"].shape[1] == 1,
        "empty": lambda c: c["logits"].shape[0] == 0,
    }
    assert _collect(cross_entropy_configs(), ce) == set(ce)
    dense = {"IN > 16": lambda c: c["x"].shape[1] > 16, "N > 8": lambda c: c["x"].shape[0] > 8}
    assert _collect(linear_configs(), dense) == set(dense)


# ----------------------------------------------------------------------------------------
# numbacnn verify


def test_verify_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_relu.py").write_text(
        "import numpy as np\n"
        "def relu(x):\n    return np.maximum(x, 0)\n"
        "def relu_backward(dy, x):\n    return dy * (x >= 0)\n"
    )
    assert main(["verify", "my_relu.py:relu", "--op", "relu", "--examples", "30"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "relu: relu passed 30 examples against numbacnn.reference.relu"
    assert main(["verify", "my_relu:relu_backward", "--op", "relu_backward", "--examples", "60"]) == 1
    out = capsys.readouterr().out
    assert "FAILED relu_backward: relu_backward is wrong on this case" in out
    assert "dx: " in out and "got" in out and "expected" in out
    example = os.path.abspath(EXAMPLE)
    assert main(["verify", f"{example}:conv2d_fixed", "--op", "conv2d", "--examples", "50"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv,code,error",
    [
        (["nofile.py:f", "--op", "relu"], 2, "'nofile.py': not found, expected a .py file"),
        (["my_relu.py:nope", "--op", "relu"], 2, "'nope' is not defined in my_relu.py (its functions: relu)"),
        (["my_relu.py:relu", "--op", "conv3d"], 2, "--op 'conv3d': no checks for it (choose from: conv2d,"),
        (["relu", "--op", "relu"], 2, "'relu': name the function as FILE.py:FUNCTION or MODULE:FUNCTION"),
        (["nomodule:relu", "--op", "relu"], 2, "no module named 'nomodule'"),
        (["broken.py:f", "--op", "relu"], 1, "importing broken.py raised SyntaxError"),
        (
            ["my_relu.py:relu", "--op", "relu", "--examples", "0"],
            2,
            "--examples: expected an integer between 1",
        ),
        (
            ["my_relu.py:relu:x", "--op", "relu"],
            2,
            "name the function as FILE.py:FUNCTION or MODULE:FUNCTION",
        ),
        (["sub:relu", "--op", "relu"], 2, "'sub' is a directory: name a .py file"),
        (["exits.py:f", "--op", "relu"], 1, "importing exits.py called sys.exit(0)"),
        (
            ["my_relu.py:relu", "--op", "relu", "--defaults-only"],
            2,
            "--defaults-only is for conv2d and the pooling",
        ),
    ],
)
def test_verify_mistakes_are_one_line(argv, code, error, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_relu.py").write_text("import numpy as np\ndef relu(x):\n    return np.maximum(x, 0)\n")
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "sub").mkdir()
    assert main(["verify", *argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("numbacnn: error: ") and error in err[0], err


def test_defaults_only_draws_the_first_kernel_a_learner_writes():
    def conv2d_stride_1_no_padding(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return R.conv2d(x, weight, bias)  # ignores stride, padding, dilation and groups

    assert check_op("conv2d", conv2d_stride_1_no_padding, defaults_only=True).examples == 200
    _caught("conv2d", conv2d_stride_1_no_padding)  # the full check draws them
    with pytest.raises(ValueError, match="defaults_only is for conv2d and the pooling ops, not relu"):
        check_op("relu", F.relu, defaults_only=True)


def test_a_backward_failure_shows_the_backward_call_and_the_forward_call():
    def sigmoid_backward_from_x(dy, y):  # BUG: treats y as x
        s = 1 / (1 + np.exp(-y))
        return (dy * s * (1 - s)).astype(y.dtype)

    message = _caught("sigmoid_backward", sigmoid_backward_from_x)
    assert "the call sigmoid_backward(dy=" in message and ", y=" in message
    assert "for the forward call sigmoid(x=" in message


def test_a_lost_nan_gets_a_hint():
    def relu_where(x):
        return np.where(x > 0, x, 0).astype(x.dtype)  # NaN > 0 is False: the NaN becomes 0

    assert "a NaN in the input stays NaN" in _caught("relu", relu_where)
