"""Hypothesis strategies for the arguments of ``numbacnn.functional``'s ops.

Each strategy draws one valid call of an op, as a ``Case``: a dict of the op's keyword
arguments (PyTorch's names: ``x``, ``weight``, ``bias``, ``stride``, ``padding``, ...), built
valid by construction (nothing is filtered, so Hypothesis never gives up) and drawn to hit
the cases where hand-written kernels go wrong:

* conv2d: N = 1; 1x1, non-square and input-sized kernels; stride larger than the kernel;
  padding wider than the kernel's reach (a border of zeros only); "same" with even kernels
  (the extra row/column on top/left, lecture "Padding"), with a stride too; dilation; groups
  and depthwise;
* pooling: ties inside a window (small integer values), a NaN in a window (it wins, as in
  PyTorch), stride larger than the window, padding up to half the window (PyTorch's limit);
* batch norm: 2-D and 4-D x, one image (N = 1), a constant channel (zero variance), a mean
  of 100 (E[x^2] - E[x]^2 cancels in float32), training and eval, weight/bias None;
* element-wise ops and the loss: 0-D to 4-D arrays, zeros (ReLU's kink), NaN (stays NaN),
  saturating values (|x| up to 1000 for sigmoid and tanh, logits of 1000 for the
  log-sum-exp).

Now and then (and never in a shrunk case unless it matters) a strategy also draws an empty
batch (N = 0, which the ops define), an input that is a non-contiguous view (``strided``),
or larger sizes (a reduction of up to 40 terms, planes of up to 16 x 16), where a blocked
loop's remainder goes wrong.

Array values are drawn from a seed, with small integers first: when Hypothesis shrinks a
failing case, it ends on a small shape filled with readable integers (like the lecture's
0..8 input), which ``Case``'s repr prints in full.

Every strategy takes ``dtypes`` (default float64 and float32).
"""

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "Case",
    "conv2d_configs",
    "pool2d_configs",
    "batch_norm_configs",
    "linear_configs",
    "elementwise_configs",
    "dropout_configs",
    "cross_entropy_configs",
    "same_pads",
    "show",
    "strided",
]

DTYPES = (np.float64, np.float32)  # float64 first: a shrunk case is float64 unless float32 matters
_SHOW = 36  # arrays up to this many elements are printed in full


class Case(dict):
    """The keyword arguments of one call of ``op``, a dict; ``fill`` names how the arrays
    were filled ("integers": small integers, with ties; "normal": standard normal values).
    Its repr is the call, small arrays in full and large ones as their shape and dtype."""

    def __init__(self, op, fill, **kwargs):
        super().__init__(**kwargs)
        self.op = op
        self.fill = fill

    def __repr__(self):
        return f"{self.op}(" + ", ".join(f"{k}={show(v)}" for k, v in self.items()) + ")"

    @property
    def dtype(self):
        """The dtype of the case's float arrays."""
        return next(v.dtype for v in self.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f")


def show(v):
    """repr of a value, an array of up to 36 elements in full (as code), a larger one as its
    shape and dtype; a non-contiguous array says so."""
    if isinstance(v, np.ndarray):
        view = "" if v.flags.c_contiguous else " (a non-contiguous view)"
        if v.size == 0:
            return f"np.zeros({v.shape}, dtype=np.{v.dtype})"
        if v.size <= _SHOW:
            body = " ".join(np.array2string(v, separator=", ", threshold=_SHOW).split())  # one line
            return f"np.array({body}, dtype=np.{v.dtype}){view}"
        return f"<array shape={v.shape} dtype={v.dtype}>{view}"
    return repr(v)


def strided(a):
    """`a`'s values as a non-contiguous view: every other element of a buffer along the last
    axis (a 0-D or empty `a` is returned as it is)."""
    if a.ndim == 0 or a.size == 0:
        return a
    buffer = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    buffer[..., ::2] = a
    return buffer[..., ::2]


def _now_and_then(draw, one_in=5):
    """True about once in `one_in` draws; shrinks to False, so a shrunk case has the special
    feature only when the failure needs it."""
    return draw(st.sampled_from(range(one_in))) == one_in - 1  # (integers() draws the end rarely)


def _with_nan(draw, a):
    """A copy of the float array `a` with a NaN at a drawn place (`a` itself when empty)."""
    if a.size == 0:
        return a
    a = a.copy()
    a.flat[draw(st.integers(0, a.size - 1))] = np.nan
    return a


def _maybe_strided(draw, a):
    return strided(a) if _now_and_then(draw) else a


def same_pads(kernel, dilation):
    """(before, after) of padding="same" on one axis: dilation*(kernel-1) in total, the odd
    one before (top/left), as the lecture's "Padding" slide and numbacnn (PyTorch puts it
    after)."""
    total = dilation * (kernel - 1)
    return total - total // 2, total // 2


@st.composite
def _filler(draw, ties=True, scale=1.0):
    """A function (shape, dtype) -> array: small integers in [-3, 3] (ties) or standard
    normal values times `scale`, from a drawn seed."""
    values = draw(st.sampled_from(("integers", "normal") if ties else ("normal",)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def fill(shape, dtype):
        if values == "integers":
            return np.asarray(rng.integers(-3, 4, size=shape), dtype=dtype)
        return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)

    return values, fill


def _int_or_pair(draw, lo, hi):
    """Draw an int or an (h, w) pair in [lo, hi]; return (argument as passed, (h, w))."""
    a = draw(st.integers(lo, hi))
    if draw(st.booleans()):
        return a, (a, a)
    b = draw(st.integers(lo, hi))
    return (a, b), (a, b)


@st.composite
def conv2d_configs(draw, *, dtypes=DTYPES, small=False, defaults_only=False):
    """Calls of conv2d(x, weight, bias, stride, padding, dilation, groups): a Case with keys
    x (N, C_in, H, W), weight (C_out, C_in/groups, kH, kW), bias (C_out,) or None, stride,
    padding (int, pair, "valid" or "same"), dilation, groups. ``small`` keeps every size
    tiny (finite differences and plain-Python candidates); ``defaults_only`` keeps stride,
    padding, dilation and groups at their defaults (1, 0, 1, 1: the lecture's first
    convolution, multi-channel and batched)."""
    big = not small and _now_and_then(draw)  # a reduction of up to 12 x 9 terms, larger planes
    if defaults_only:
        groups, c_in_g, c_out_g = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif big:
        groups, c_in_g, c_out_g = 1, draw(st.integers(4, 12)), draw(st.integers(1, 2))
    elif draw(st.booleans()):  # depthwise: one input channel per group
        groups = draw(st.integers(1, 3 if small else 4))
        c_in_g, c_out_g = 1, draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 2] if small else [1, 1, 2, 3]))
        c_in_g = draw(st.integers(1, 2 if small else 3))
        c_out_g = draw(st.integers(1, 2 if small else 3))
    N = 0 if _now_and_then(draw, 20) else draw(st.integers(1, 1 if small else 2))
    kH, kW = draw(st.integers(1, 3 if small else 4)), draw(st.integers(1, 3 if small else 4))
    if defaults_only:
        dilation, (dil_h, dil_w), stride, padding = 1, (1, 1), 1, 0
    else:
        dilation, (dil_h, dil_w) = _int_or_pair(draw, 1, 2 if small else 3)
        stride, _ = _int_or_pair(draw, 1, 3)
        padding = draw(
            st.one_of(
                st.integers(0, 2),
                st.tuples(st.integers(0, 2), st.integers(0, 2)),
                st.just("valid"),
                st.just("same"),
            )
        )
    if padding == "valid":
        pads_h = pads_w = (0, 0)
    elif padding == "same":
        pads_h, pads_w = same_pads(kH, dil_h), same_pads(kW, dil_w)
    else:
        pad_h, pad_w = (padding, padding) if isinstance(padding, int) else padding
        pads_h, pads_w = (pad_h, pad_h), (pad_w, pad_w)
    # the smallest input the dilated kernel fits once padded; drawing exactly that size gives
    # "kernel = (padded) input" cases, which Hypothesis then hits often
    min_h = max(1, dil_h * (kH - 1) + 1 - sum(pads_h))
    min_w = max(1, dil_w * (kW - 1) + 1 - sum(pads_w))
    extra = 2 if small else 9 if big else 5
    H = draw(st.one_of(st.just(min_h), st.integers(min_h, min_h + extra)))
    W = draw(st.one_of(st.just(min_w), st.integers(min_w, min_w + extra)))
    dtype = draw(st.sampled_from(dtypes))
    with_bias = draw(st.booleans())
    values, fill = draw(_filler())
    return Case(
        "conv2d",
        values,
        x=_maybe_strided(draw, fill((N, groups * c_in_g, H, W), dtype)),
        weight=fill((groups * c_out_g, c_in_g, kH, kW), dtype),
        bias=fill((groups * c_out_g,), dtype) if with_bias else None,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )


@st.composite
def pool2d_configs(draw, *, dtypes=DTYPES, op="max_pool2d", defaults_only=False, nan=True):
    """Calls of max_pool2d / avg_pool2d(x, kernel_size, stride, padding): a Case with keys
    x (N, C, H, W), kernel_size (int or pair), stride (None = kernel_size, int or pair) and
    padding (int or pair, at most half the window). Integer values make ties; max_pool2d's x
    may hold a NaN (unless ``nan`` is False). ``defaults_only``: stride None, padding 0."""
    kH, kW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel_size = kH if kH == kW and draw(st.booleans()) else (kH, kW)
    if defaults_only:
        stride, pad_h, pad_w, padding = None, 0, 0, 0
    else:
        stride = draw(
            st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
        )
        pad_h, pad_w = draw(st.integers(0, kH // 2)), draw(st.integers(0, kW // 2))
        padding = pad_h if pad_h == pad_w and draw(st.booleans()) else (pad_h, pad_w)
    N = 0 if _now_and_then(draw, 20) else draw(st.integers(1, 2))
    C = draw(st.integers(1, 3))
    side = 16 if _now_and_then(draw) else 7
    H = draw(st.integers(max(1, kH - 2 * pad_h), side))
    W = draw(st.integers(max(1, kW - 2 * pad_w), side))
    dtype = draw(st.sampled_from(dtypes))
    values, fill = draw(_filler())
    x = fill((N, C, H, W), dtype)
    if op == "max_pool2d" and nan and _now_and_then(draw):
        x = _with_nan(draw, x)
    x = _maybe_strided(draw, x)
    return Case(op, values, x=x, kernel_size=kernel_size, stride=stride, padding=padding)


@st.composite
def batch_norm_configs(draw, *, dtypes=DTYPES, offsets=(0.0, 0.5, 3.0, 100.0)):
    """Calls of batch_norm(x, weight, bias, running_mean, running_var, training, momentum,
    eps): x (N, C, H, W) or (N, C) with more than one value per channel, weight and bias (C,)
    or None, running statistics (C,) (None sometimes in training), training, momentum in
    [0, 1], eps. Values are centred away from 0 (the mean matters; one of ``offsets``, up to
    100, where E[x^2] - E[x]^2 cancels in float32) and one channel may be constant (zero
    variance: only eps keeps the division finite)."""
    four_d = draw(st.booleans())
    C = draw(st.integers(1, 3))
    big = _now_and_then(draw)
    empty = _now_and_then(draw, 20)
    if four_d:
        side = 8 if big else 4
        N, H, W = (
            draw(st.integers(1, 4 if big else 3)),
            draw(st.integers(1, side)),
            draw(st.integers(1, side)),
        )
        if N * H * W == 1:
            W = 2
        shape = (0 if empty else N, C, H, W)
    else:
        shape = (0 if empty else draw(st.integers(2, 40 if big else 6)), C)
    dtype = draw(st.sampled_from(dtypes))
    training = draw(st.booleans())
    values, fill = draw(_filler())
    x = fill(shape, dtype) + dtype(draw(st.sampled_from(offsets)))
    if draw(st.booleans()):  # a constant channel
        x[:, 0] = dtype(1.5)
    x = _maybe_strided(draw, x)
    affine = draw(st.booleans())
    weight = (np.abs(fill((C,), dtype)) + dtype(0.5)) if affine else None
    bias = fill((C,), dtype) if affine else None
    track = not training or draw(st.booleans())
    running_mean = fill((C,), dtype) if track else None
    running_var = (np.abs(fill((C,), dtype)) + dtype(0.5)) if track else None
    return Case(
        "batch_norm",
        values,
        x=x,
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
        training=training,
        momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.3])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
    )


@st.composite
def linear_configs(draw, *, dtypes=DTYPES):
    """Calls of linear(x, weight, bias): x (N, IN), weight (OUT, IN), bias (OUT,) or None;
    now and then IN up to 40, OUT up to 12 and N up to 10 (past a blocked loop's block)."""
    big = _now_and_then(draw)
    N = 0 if _now_and_then(draw, 20) else draw(st.integers(1, 10 if big else 4))
    IN, OUT = draw(st.integers(1, 40 if big else 6)), draw(st.integers(1, 12 if big else 5))
    dtype = draw(st.sampled_from(dtypes))
    values, fill = draw(_filler())
    with_bias = draw(st.booleans())
    return Case(
        "linear",
        values,
        x=_maybe_strided(draw, fill((N, IN), dtype)),
        weight=fill((OUT, IN), dtype),
        bias=fill((OUT,), dtype) if with_bias else None,
    )


_SHAPES = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)
_BIG_SHAPES = st.lists(st.integers(6, 10), min_size=3, max_size=4).map(tuple)  # 216 to 10^4 elements


@st.composite
def elementwise_configs(draw, *, dtypes=DTYPES, op="relu", names=("x",)):
    """Calls of an element-wise op (relu, tanh, sigmoid: names ("x",); add: ("a", "b")):
    one array per name, all of one drawn shape (0-D to 4-D) and dtype. Integer values put
    zeros at ReLU's kink; "saturating" values reach +-50 and +-1000 (exp overflows there);
    now and then an array holds a NaN, is a non-contiguous view, or has up to 10^4 elements."""
    shape = draw(_BIG_SHAPES if _now_and_then(draw) else _SHAPES)
    dtype = draw(st.sampled_from(dtypes))
    values, fill = draw(_filler())
    saturating = values == "normal" and draw(st.booleans())
    arrays = {}
    for name in names:
        a = fill(shape, dtype)
        if saturating:
            big = np.asarray(draw(st.sampled_from([50.0, 1000.0])), dtype)
            a = np.where(np.abs(a) > 1.0, np.sign(a) * big, a).astype(dtype)
        if _now_and_then(draw, 10):
            a = _with_nan(draw, a)
        arrays[name] = _maybe_strided(draw, a)
    return Case(op, "saturating" if saturating else values, **arrays)


@st.composite
def dropout_configs(draw, *, dtypes=DTYPES):
    """Calls of dropout(x, p, training, seed, offset): x of 0-D to 4-D, p in [0, 1] (0 and 1
    included), training, a seed and an offset (x's place in a larger batch)."""
    shape = draw(_SHAPES)
    dtype = draw(st.sampled_from(dtypes))
    values, fill = draw(_filler(ties=False))
    return Case(
        "dropout",
        values,
        x=fill(shape, dtype),
        p=draw(st.sampled_from([0.5, 0.0, 1.0, 0.25, 0.9])),
        training=draw(st.booleans()),
        seed=draw(st.integers(0, 2**40)),
        offset=draw(st.sampled_from([0, 7, 2**31 + 5])),
    )


@st.composite
def cross_entropy_configs(draw, *, dtypes=DTYPES):
    """Calls of cross_entropy(logits, labels): logits (N, K) with N >= 1 and K >= 1, some
    rows scaled to +-1000 (a naive exp overflows), labels (N,) int64 in [0, K); now and then
    N = 0 (the loss is NaN, as PyTorch's mean of nothing) or up to 10 rows of 20 classes."""
    big = _now_and_then(draw)
    N = 0 if _now_and_then(draw, 20) else draw(st.integers(1, 10 if big else 5))
    K = draw(st.integers(1, 20 if big else 6))
    dtype = draw(st.sampled_from(dtypes))
    values, fill = draw(_filler())
    logits = fill((N, K), dtype)
    if N and draw(st.booleans()):
        logits[0] = logits[0] * dtype(1000.0 / 3.0)
    labels = np.asarray(draw(st.lists(st.integers(0, K - 1), min_size=N, max_size=N)), dtype=np.int64)
    return Case("cross_entropy", values, logits=logits, labels=labels)
