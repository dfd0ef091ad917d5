"""check_op: property-test your own implementation of one of numbacnn.functional's ops.

    from numbacnn.testing import check_op
    check_op("conv2d", my_conv2d)              # 200 Hypothesis examples; AssertionError if wrong
    check_op("max_pool2d_backward", my_pool_backward, examples=50)

A forward candidate gets the forward's arguments, drawn by the strategy of its op family
(``numbacnn.testing.strategies``), and its result is compared with ``numbacnn.reference``
(and, for conv2d, with ``scipy.signal.correlate`` too): shape, dtype (an op keeps its
input's dtype) and values within the tolerance of the op's kind
(``numbacnn.testing.tolerances``); it must not modify its inputs, except batch_norm, whose
running statistics must be updated exactly as the reference updates them.

A backward candidate (``<op>_backward``) gets the backward's arguments for a drawn forward
call and a random dy (upstream gradient, small integers or normal values), and each
gradient it returns is compared with the reference backward and, for float64 examples
without a kink (no ReLU input at 0, no tie inside a max-pool window), with float64 central
finite differences of the forward (SciPy's convolution for conv2d, the reference otherwise)
along a random direction: (L(a + h v) - L(a - h v)) / 2h = sum(dL/da * v), L = sum(y * dy).

On a failure Hypothesis shrinks the case, and check_op raises an AssertionError that shows
that smallest case (small arrays in full), the first wrong index and both values.
"""

import functools
import inspect
import traceback
from typing import NamedTuple

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky

from .. import reference
from .._checks import check_int
from . import strategies as S
from .oracles import directional_derivative, scipy_conv2d
from .tolerances import tolerances

__all__ = ["check_op", "CheckReport", "OPS", "DEFAULTS_ONLY_OPS"]

FD_STEP = 1e-6  # central-difference step h (float64)
FD_TOLERANCE = 1e-6  # |numeric - analytic| <= FD_TOLERANCE * max(|numeric|, |analytic|, G) + FD_FLOOR,
FD_FLOOR = 1e-10  # G the largest gradient norm of the op (|v| = 1): a zero gradient is judged on that scale


class _Op(NamedTuple):
    strategy: object  # (backward, defaults_only) -> a Hypothesis strategy of Cases (the forward's arguments)
    kind: str  # tolerance kind of the forward's outputs
    grad_kind: str  # tolerance kind of the gradients
    wrt: tuple  # the forward arguments whose gradients <op>_backward returns, in order
    backward_args: object  # (case, y, dy) -> the positional arguments of <op>_backward
    smooth: object = lambda case: True  # False: a kink makes finite differences meaningless


def _conv_backward_args(c, y, dy):
    return dy, c["x"], c["weight"], c["stride"], c["padding"], c["dilation"], c["groups"]


def _pool_backward_args(c, y, dy):
    return dy, c["x"], c["kernel_size"], c["stride"], c["padding"]


def _bn_backward_args(c, y, dy):
    if c["training"]:  # the batch statistics, recomputed from x
        return dy, c["x"], c["weight"], c["eps"], None, None
    return dy, c["x"], c["weight"], c["eps"], c["running_mean"], c["running_var"]


def _elementwise(op, names=("x",)):
    return lambda backward, defaults_only: S.elementwise_configs(op=op, names=names)


def _plain(strategy):
    """An op family whose strategy is the same for the forward and the backward."""
    return lambda backward, defaults_only: strategy()


def _pool(op):
    return lambda backward, defaults_only: S.pool2d_configs(
        op=op, defaults_only=defaults_only, nan=not backward
    )


def _batch_norm(backward, defaults_only):
    # a mean of 100 finds E[x^2] - E[x]^2 in a forward; a backward in float32 loses digits
    # there whatever it does, so its cases stay near 0
    return S.batch_norm_configs(offsets=(0.0, 0.5, 3.0) if backward else (0.0, 0.5, 3.0, 100.0))


def _no_ties(case):
    return case.fill != "integers"


def _away_from_zero(case):
    return not (np.abs(case["x"]) <= 10 * FD_STEP).any()


OPS = {
    "conv2d": _Op(
        lambda backward, defaults_only: S.conv2d_configs(defaults_only=defaults_only),
        "conv",
        "conv",
        ("x", "weight", "bias"),
        _conv_backward_args,
    ),
    "max_pool2d": _Op(_pool("max_pool2d"), "exact", "short_sum", ("x",), _pool_backward_args, _no_ties),
    "avg_pool2d": _Op(_pool("avg_pool2d"), "short_sum", "short_sum", ("x",), _pool_backward_args),
    "batch_norm": _Op(_batch_norm, "reduction", "reduction", ("x", "weight", "bias"), _bn_backward_args),
    "linear": _Op(
        _plain(S.linear_configs),
        "short_sum",
        "short_sum",
        ("x", "weight", "bias"),
        lambda c, y, dy: (dy, c["x"], c["weight"]),
    ),
    "relu": _Op(
        _elementwise("relu"), "exact", "exact", ("x",), lambda c, y, dy: (dy, c["x"]), _away_from_zero
    ),
    "tanh": _Op(_elementwise("tanh"), "elementwise", "elementwise", ("x",), lambda c, y, dy: (dy, y)),
    "sigmoid": _Op(_elementwise("sigmoid"), "elementwise", "elementwise", ("x",), lambda c, y, dy: (dy, y)),
    "add": _Op(_elementwise("add", ("a", "b")), "elementwise", "exact", ("a", "b"), lambda c, y, dy: (dy,)),
    "dropout": _Op(
        _plain(S.dropout_configs), "elementwise", "elementwise", ("x",), lambda c, y, dy: (dy, y[1], c["p"])
    ),
    "cross_entropy": _Op(
        _plain(S.cross_entropy_configs),
        "short_sum",
        "short_sum",
        ("logits",),
        lambda c, y, dy: (c["logits"], c["labels"]),
    ),
}
DEFAULTS_ONLY_OPS = ("conv2d", "max_pool2d", "avg_pool2d")  # the ops check_op(defaults_only=True) takes
# the value a None argument stands for, for finite differences along it
_NEUTRAL = {"weight": 1.0, "bias": 0.0}


class CheckReport(NamedTuple):
    """What check_op ran: the ``op``, the ``candidate``'s name, the ``examples`` it passed,
    how many of them were also checked by ``finite_differences`` (backward ops), and the
    oracles it was compared ``against``."""

    op: str
    candidate: str
    examples: int
    finite_differences: int
    against: tuple

    def __str__(self):
        fd = ""
        if self.op.endswith("_backward"):
            fd = f", {self.finite_differences} of them also against float64 finite differences"
        against = " and ".join(self.against)
        return f"{self.op}: {self.candidate} passed {self.examples} examples against {against}{fd}"


def _lookup(op):
    name = getattr(op, "__name__", op)
    if not isinstance(name, str):
        raise TypeError(f"check_op: op must be the name of a numbacnn.functional op, got {type(op).__name__}")
    forward = name[: -len("_backward")] if name.endswith("_backward") else name
    if forward not in OPS:
        known = ", ".join(f"{n}, {n}_backward" for n in OPS)
        raise ValueError(f"check_op: no checks for op {name!r}; known: {known}")
    return name, forward, OPS[forward]


@functools.cache
def _params(fn_name):
    """The parameter names of reference.<fn_name>, in order."""
    return list(inspect.signature(getattr(reference, fn_name)).parameters)


def _call_args(fn_name, case):
    """The case's values in the order of reference.<fn_name>'s parameters, up to the first
    one the case leaves at its default (relu's inplace)."""
    args = []
    for p in _params(fn_name):
        if p not in case:
            break
        args.append(case[p])
    return args


def _finite(case):
    """True when no float array of the case holds a NaN or an infinity."""
    arrays = [v for v in case.values() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    return all(np.isfinite(v).all() for v in arrays)


def _copy(v):
    """A copy of an array with its layout (a non-contiguous view stays one), else v."""
    if not isinstance(v, np.ndarray):
        return v
    return v.copy() if v.flags.c_contiguous else S.strided(v.copy())


def _copied(case):
    return S.Case(case.op, case.fill, **{k: _copy(v) for k, v in case.items()})


def _where(exc):
    """'file:line' of the innermost frame of an exception's traceback outside numbacnn.testing."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "numbacnn/testing" not in f.filename and not f.filename.startswith("<frozen")
    ]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _close(g, e, rtol, atol):
    """|g - e| <= atol + rtol |e| elementwise, equal infinities and NaN against NaN passing."""
    with np.errstate(invalid="ignore"):
        return (np.abs(g - e) <= atol + rtol * np.abs(e)) | (g == e) | (np.isnan(g) & np.isnan(e))


def _mismatch(what, got, expected, dtype, kind, scale=None):
    """A sentence on how `got` differs from `expected`, or None when it does not. `scale`
    (a scalar's) replaces max(1, |expected|) in atol: the loss is judged on its logits' scale."""
    if expected is None:
        return None if got is None else f"{what}: got {type(got).__name__}, expected None"
    if np.ndim(expected) == 0 and not isinstance(expected, np.ndarray):  # a Python float (the loss)
        if isinstance(got, np.ndarray) and got.ndim == 0:
            got = got.item()
        if not isinstance(got, (float, int, np.floating)):
            return f"{what}: got {type(got).__name__}, expected a float"
        rtol, atol = tolerances(dtype, kind, expected)
        atol = atol if scale is None else rtol * max(1.0, scale)
        if _close(float(got), expected, rtol, atol):
            return None
        return f"{what}: got {float(got)!r}, expected {expected!r} (rtol {rtol:.0e}, atol {atol:.1e})"
    if isinstance(got, np.generic) and expected.ndim == 0:
        got = np.asarray(got)  # NumPy's ufuncs turn a 0-D array into a scalar: the same thing
    if not isinstance(got, np.ndarray):
        return f"{what}: got {type(got).__name__}, expected a NumPy array of shape {expected.shape}"
    if got.shape != expected.shape:
        return f"{what}: shape {got.shape}, expected {expected.shape}"
    if got.dtype != expected.dtype:
        return (
            f"{what}: dtype {got.dtype}, expected {expected.dtype} (an op's outputs keep the dtype of its "
            f"float inputs)"
        )
    g, e = got.astype(np.float64), expected.astype(np.float64)
    rtol, atol = tolerances(dtype, kind, e)  # "exact": (0, 0)
    ok = _close(g, e, rtol, atol)
    if ok.all():
        return None
    bad = np.argwhere(~ok)
    index = tuple(int(i) for i in bad[0])
    hint = ""
    if np.isnan(e[index]):
        hint = " (a NaN in the input stays NaN, and wins a max-pool window: numbacnn's rule, as PyTorch's)"
    elif g[index] != 0 and abs(g[index]) < 1e-300:
        hint = " (a value this tiny is often memory np.empty left uninitialised)"
    return (
        f"{what}: {len(bad)} of {e.size} elements differ; the first at index {index}: got "
        f"{got[index].item()!r}, expected {expected[index].item()!r} (rtol {rtol:.0e}, atol {atol:.1e}){hint}"
    )


def _forward_outputs(forward, result):
    """A forward's result as {output name: value}."""
    if forward == "dropout":
        if not (isinstance(result, tuple) and len(result) == 2):
            return {"a tuple (y, mask)": result}
        return {"y": result[0], "mask": result[1]}
    return {"loss" if forward == "cross_entropy" else "y": result}


def _gradient_outputs(spec, result):
    names = tuple("d" + w for w in spec.wrt)
    if len(names) == 1:
        return {names[0]: result}
    if not (isinstance(result, tuple) and len(result) == len(names)):
        return {"a tuple (" + ", ".join(names) + ")": result}
    return dict(zip(names, result, strict=True))


def _dy(case, shape, dtype):
    rng = np.random.default_rng(1)
    if case.fill == "integers":
        return rng.integers(-3, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _loss_along(forward, case, name, dy):
    """a -> L = sum(forward(case with `name` = a) * dy) (the loss itself for cross_entropy),
    in float64, through SciPy for conv2d and the reference otherwise."""

    def L(a):
        c = _copied(case)
        c[name] = a
        if forward == "conv2d":
            return np.sum(scipy_conv2d(*_call_args("conv2d", c)) * dy)
        out = getattr(reference, forward)(*_call_args(forward, c))
        if forward == "cross_entropy":
            return out
        return np.sum((out[0] if forward == "dropout" else out) * dy)

    return L


def _check_one(name, forward, spec, candidate, case, counts):
    """Run the candidate on one case; return (a description of what is wrong or None, the
    backward's call as a Case or None)."""
    dtype = case.dtype
    ref_case = _copied(case)
    y_ref = getattr(reference, forward)(*_call_args(forward, ref_case))
    if name == forward:  # a forward candidate
        args = _call_args(forward, _copied(case))
        expected = _forward_outputs(forward, y_ref)
        if forward == "conv2d":
            expected_scipy = scipy_conv2d(*args).astype(dtype)
        if forward == "batch_norm":  # updated in place
            expected.update(running_mean=ref_case["running_mean"], running_var=ref_case["running_var"])
        kind = {"mask": "exact"}
        dy = None
    else:
        dy = (
            None
            if forward == "cross_entropy"
            else _dy(case, np.shape(y_ref[0] if forward == "dropout" else y_ref), dtype)
        )
        args = [_copy(a) for a in spec.backward_args(case, y_ref, dy)]
        expected = _gradient_outputs(spec, getattr(reference, name)(*[_copy(a) for a in args]))
        kind = {}
    given_args = [_copy(a) for a in args]
    call = None  # a backward's own call, shown beside the forward's
    if name != forward:
        call = S.Case(name, case.fill, **dict(zip(_params(name)[: len(given_args)], given_args, strict=True)))
    try:
        result = candidate(*args)
    except SystemExit as exc:  # exit() in the candidate: a failure, not the end of the check
        return f"called sys.exit({exc.code!r}){_where(exc)}", call
    except Exception as exc:  # the candidate's own error, shown with the case
        text = str(exc) if len(str(exc)) <= 400 else str(exc)[:400] + " ..."
        return f"raised {type(exc).__name__}: {text}{_where(exc)}", call
    if name == forward:
        got = _forward_outputs(forward, result)
        if forward == "batch_norm":
            got.update(running_mean=args[3], running_var=args[4])
    else:
        got = _gradient_outputs(spec, result)
    for out, value in expected.items():
        if out not in got:
            return f"returned {type(result).__name__} {result!r:.60}, expected {', '.join(expected)}", call
        scale = float(np.abs(case["logits"]).max(initial=0.0)) if out == "loss" else None
        out_kind = kind.get(out, spec.kind if name == forward else spec.grad_kind)
        problem = _mismatch(out, got[out], value, dtype, out_kind, scale)
        if problem:
            return f"{problem} (vs numbacnn.reference.{name})", call
    if forward == "conv2d" and name == forward:
        problem = _mismatch("y", got["y"], expected_scipy, dtype, "conv")
        if problem:
            return f"{problem} (vs scipy.signal.correlate)", call
    for i, (a, before) in enumerate(zip(args, given_args, strict=True)):
        changed = isinstance(a, np.ndarray) and not np.array_equal(a, before, equal_nan=True)
        if changed and not (forward == "batch_norm" and name == forward and i in (3, 4)):
            return f"modified its input {_params(name)[i]} (an op must not write to its arguments)", call
    if name != forward and dtype == np.float64 and _finite(case) and spec.smooth(case):
        counts["fd"] += 1
        rng = np.random.default_rng(2)
        G = max(float(np.linalg.norm(expected["d" + w])) for w in spec.wrt)
        for w in spec.wrt:
            a = case[w] if case[w] is not None else np.full(expected["d" + w].shape, _NEUTRAL[w])
            v = rng.standard_normal(a.shape)
            v /= max(np.linalg.norm(v), 1e-300)
            numeric = directional_derivative(
                _loss_along(forward, case, w, dy), a.astype(np.float64), v, FD_STEP
            )
            analytic = float(np.sum(np.asarray(got["d" + w], dtype=np.float64) * v))
            if abs(numeric - analytic) > FD_TOLERANCE * max(abs(numeric), abs(analytic), G) + FD_FLOOR:
                return (
                    f"d{w} disagrees with float64 central finite differences of the forward along a random "
                    f"direction v: sum(d{w} * v) = {analytic!r}, the difference quotient {numeric!r}"
                ), call
    counts["examples"] += 1
    return None, call


def check_op(op, candidate, *, examples=200, seed=None, defaults_only=False):
    """Property-test ``candidate``, your implementation of ``numbacnn.functional.<op>``.

    op: the name (or the function) of a forward op (conv2d, max_pool2d, avg_pool2d,
    batch_norm, linear, relu, tanh, sigmoid, add, dropout, cross_entropy) or of its
    ``<op>_backward``; candidate: a function with that op's signature (its arguments in the
    same order; see numbacnn.functional) returning what it returns (arrays of the input's
    dtype); examples: how many cases Hypothesis draws (a positive int); seed: None for the
    same examples every run (derandomised), or an int for another reproducible set;
    defaults_only: conv2d and the pooling ops (forward or backward) only, their stride,
    padding, dilation and groups left at the defaults (a first kernel, before padding and
    stride: the guide's chapter 1).

    Returns a CheckReport (its str() is one line) when every example passes. Raises
    AssertionError naming the smallest failing case Hypothesis found, what differs (the
    first wrong index and both values) and the oracle; ValueError for an unknown op or a bad
    ``examples`` or a ``defaults_only`` for another op, TypeError for a candidate that is not
    callable.
    """
    name, forward, spec = _lookup(op)
    if not callable(candidate):
        raise TypeError(f"check_op: candidate must be a function, got {type(candidate).__name__}")
    examples = check_int("check_op", "examples", examples, minimum=1)
    if defaults_only and forward not in DEFAULTS_ONLY_OPS:
        raise ValueError(f"check_op: defaults_only is for conv2d and the pooling ops, not {name}")
    label = getattr(candidate, "__qualname__", None) or f"a {type(candidate).__name__}"
    counts = {"examples": 0, "fd": 0}
    # NaN inputs check a forward's NaN rules (NaN stays, NaN wins a max-pool window); a
    # gradient's convention at NaN is an accident of PyTorch's code, not asked of a candidate
    strategy = spec.strategy(name != forward, defaults_only)
    if name != forward:
        strategy = strategy.filter(_finite)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        print_blob=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    )
    @given(case=strategy)
    def run(case):
        problem, call = _check_one(name, forward, spec, candidate, case, counts)
        if problem:
            raise AssertionError(
                f"{name}: {label} is wrong on this case (the smallest one Hypothesis found):\n"
                + (
                    f"  the call {case!r}\n"
                    if call is None
                    else f"  the call {call!r}\n  for the forward call {case!r}\n"
                )
                + f"  {problem}"
            )

    if seed is not None:
        run = hypothesis_seed(check_int("check_op", "seed", seed))(run)
    try:
        run()
    except AssertionError as exc:
        raise AssertionError(str(exc)) from None
    except Flaky as exc:  # failed on a case, then passed on the same case
        first = next((str(e) for e in getattr(exc, "exceptions", ()) if isinstance(e, AssertionError)), "")
        raise AssertionError(
            f"{name}: {label} gives different results for the same arguments: it failed once and passed "
            "when Hypothesis called it again (global state, an array left uninitialised by np.empty, or "
            f"threads racing?){first and chr(10) + first}"
        ) from None
    against = [f"numbacnn.reference.{name}"]
    if name == "conv2d":
        against.append("scipy.signal.correlate")
    return CheckReport(name, label, counts["examples"], counts["fd"], tuple(against))
