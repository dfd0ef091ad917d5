"""numbacnn.optim against torch.optim.SGD and torch's LR schedulers."""

import math

import numpy as np
import pytest

from numbacnn.optim import SGD, ConstantLR, CosineLR, StepLR, build_schedule

torch = pytest.importorskip("torch")


class P:
    """Minimal Parameter: .data and .grad."""

    def __init__(self, data):
        self.data = data
        self.grad = np.zeros_like(data)


SHAPES = [(4, 3, 3, 3), (4,), (10, 7)]


def _run_both(dtype, steps=5, **hyper):
    rng = np.random.default_rng(123)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]

    ours = [P(a.copy()) for a in init]
    opt = SGD(ours, **hyper)
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    topt = torch.optim.SGD(theirs, **hyper)
    for step in range(steps):
        opt.zero_grad()
        topt.zero_grad()
        for p, t, g in zip(ours, theirs, grads[step], strict=True):
            p.grad[...] = g
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    return ours, theirs, opt, topt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "hyper",
    [
        dict(lr=0.1),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
        dict(lr=0.01, momentum=0.8, weight_decay=1e-2, nesterov=True),
        dict(lr=0.1, weight_decay=1e-3),
    ],
)
def test_sgd_matches_torch(dtype, hyper):
    ours, theirs, opt, topt = _run_both(dtype, **hyper)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    for p, t in zip(ours, theirs, strict=True):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, t.detach().numpy(), **tol)
    if hyper.get("momentum"):
        for i, t in enumerate(theirs):
            np.testing.assert_allclose(opt.buffers[i], topt.state[t]["momentum_buffer"].numpy(), **tol)


def test_sgd_updates_in_place_and_skips_none_grad():
    a = P(np.ones(3, np.float32))
    b = P(np.ones(2, np.float32))
    b.grad = None
    data_a = a.data
    opt = SGD([a, b], lr=0.5, momentum=0.9)
    a.grad[...] = 2.0
    opt.step()
    assert a.data is data_a
    np.testing.assert_array_equal(a.data, np.zeros(3, np.float32))
    np.testing.assert_array_equal(b.data, np.ones(2, np.float32))
    opt.zero_grad()
    np.testing.assert_array_equal(a.grad, 0)


def test_sgd_state_dict_roundtrip_continues_identically():
    ours, _, opt, _ = _run_both(np.float32, steps=3, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    state = opt.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    assert set(k for k in state if k.startswith("momentum_buffer.")) == {
        f"momentum_buffer.{i}" for i in range(len(SHAPES))
    }

    clone = [P(p.data.copy()) for p in ours]
    opt2 = SGD(clone, lr=1.0)  # hyper-parameters come back from the state
    opt2.load_state_dict(state)
    assert (opt2.lr, opt2.momentum, opt2.weight_decay, opt2.nesterov) == (0.05, 0.9, 1e-3, True)
    rng = np.random.default_rng(7)
    for _ in range(2):
        for p, q in zip(ours, clone, strict=True):
            g = rng.standard_normal(p.data.shape).astype(np.float32)
            p.grad[...] = g
            q.grad[...] = g
        opt.step()
        opt2.step()
    for p, q in zip(ours, clone, strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_sgd_load_state_dict_rejects_wrong_shapes():
    opt = SGD([P(np.zeros((2, 3), np.float32))], lr=0.1, momentum=0.9)
    state = opt.state_dict()
    state["momentum_buffer.0"] = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"momentum_buffer.0.*\(3, 2\).*\(2, 3\)"):
        opt.load_state_dict(state)


def test_sgd_argument_errors():
    with pytest.raises(ValueError, match="lr"):
        SGD([P(np.zeros(2))], lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD([P(np.zeros(2))], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)


def _torch_lrs(make_sched, epochs, base_lr=0.1):
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=base_lr)
    sched = make_sched(topt)
    lrs = []
    for _ in range(epochs):
        lrs.append(topt.param_groups[0]["lr"])
        topt.step()
        sched.step()
    return lrs


def _our_lrs(make_sched, epochs, base_lr=0.1):
    opt = SGD([P(np.zeros(1))], lr=base_lr)
    sched = make_sched(opt)
    lrs = []
    for e in range(epochs):
        lrs.append(opt.lr)
        assert opt.lr == sched.lr_at(e)
        sched.step()
    return lrs


@pytest.mark.parametrize("step_size,gamma", [(1, 0.5), (3, 0.1), (2, 0.9)])
def test_step_lr_matches_torch(step_size, gamma):
    ours = _our_lrs(lambda o: StepLR(o, step_size, gamma), 10)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), 10)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@pytest.mark.parametrize("T_max,eta_min", [(10, 0.0), (5, 1e-3), (7, 0.01)])
def test_cosine_lr_matches_torch(T_max, eta_min):
    ours = _our_lrs(lambda o: CosineLR(o, T_max, eta_min), T_max + 1)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max, eta_min), T_max + 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-14)


def test_schedule_state_roundtrip_and_builder():
    opt = SGD([P(np.zeros(1))], lr=0.2)
    sched = build_schedule("cosine", opt, epochs=6)
    assert isinstance(sched, CosineLR) and sched.T_max == 6
    for _ in range(4):
        sched.step()
    lr4 = opt.lr
    assert math.isclose(lr4, 0.1 * (1 + math.cos(math.pi * 4 / 6)))
    opt2 = SGD([P(np.zeros(1))], lr=123.0)
    sched2 = build_schedule("cosine", opt2, epochs=6)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.lr == lr4 and sched2.epoch == 4
    assert isinstance(build_schedule("none", opt, 3), ConstantLR)
    s = build_schedule("step", SGD([P(np.zeros(1))], lr=1.0), epochs=9)
    assert isinstance(s, StepLR) and s.step_size == 3
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule("linear", opt, 3)


# --------------------------------------------------------------------------- Adam family
ADAPTIVE = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=3e-3, betas=(0.5, 0.9), weight_decay=0.3)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, eps=1e-6, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, centered=True)),
    ("RMSprop", dict(lr=1e-3, momentum=0.5, centered=False, weight_decay=0.02)),
]


def _adaptive_pair(name, dtype, hyper, steps, split=None):
    """``steps`` steps of numbacnn's and torch's optimizer ``name`` from the same weights and
    gradients; with ``split``, numbacnn's optimizer is rebuilt from its state_dict after
    ``split`` steps (a resumed run), on fresh Parameters holding the same weights."""
    import numbacnn.optim as optim

    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    ours = [P(a.copy()) for a in init]
    opt = getattr(optim, name)(ours, **hyper)
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    topt = getattr(torch.optim, name)(theirs, **hyper)
    for step in range(steps):
        if step == split:
            state = {k: v.copy() for k, v in opt.state_dict().items()}
            ours = [P(p.data.copy()) for p in ours]
            opt = getattr(optim, name)(ours, lr=123.0)  # hyper-parameters come back from the state
            opt.load_state_dict(state)
        for p, t, g in zip(ours, theirs, grads[step], strict=True):
            p.grad[...] = g
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    return ours, theirs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,hyper", ADAPTIVE)
def test_adaptive_optimizers_match_torch(name, hyper, dtype):
    """20 steps of Adam / AdamW / RMSprop equal torch.optim's within 1e-6 (float64: 1e-12)."""
    ours, theirs = _adaptive_pair(name, dtype, hyper, steps=20)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for p, t in zip(ours, theirs, strict=True):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=0, atol=tol)


@pytest.mark.parametrize("name,hyper", [ADAPTIVE[1], ADAPTIVE[3], ADAPTIVE[6]])
def test_adaptive_state_dict_resumes_exactly(name, hyper):
    """Stopping after 7 steps, rebuilding from state_dict() and going on is the same run."""
    ours, theirs = _adaptive_pair(name, np.float64, hyper, steps=15, split=7)
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=0, atol=1e-12)


def test_adaptive_skips_parameters_without_grad_and_checks_state():
    from numbacnn.optim import Adam

    a, b = P(np.ones(3)), P(np.ones(2))
    a.grad[...] = 1.0
    b.grad = None
    opt = Adam([a, b], lr=0.1)
    opt.step()
    assert np.all(a.data < 1) and np.all(b.data == 1)
    state = opt.state_dict()
    assert set(state) >= {"lr", "beta1", "beta2", "eps", "step.0", "exp_avg.0", "exp_avg_sq.0"}
    assert "step.1" not in state
    bad = dict(state, **{"exp_avg.0": np.zeros(4)})
    with pytest.raises(ValueError, match="exp_avg.0"):
        Adam([a, b]).load_state_dict(bad)
    with pytest.raises(ValueError, match="part of its state"):
        Adam([a, b]).load_state_dict({k: v for k, v in state.items() if k != "exp_avg_sq.0"})
    for bad_args, match in [
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(betas=0.9), "betas"),
        (dict(eps=0.0), "eps"),
        (dict(lr=-1.0), "lr"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            Adam([a], **bad_args)


def test_build_optimizer():
    from numbacnn.optim import SGD, Adam, AdamW, RMSprop, build_optimizer

    params = [P(np.zeros(2))]
    assert isinstance(build_optimizer("sgd", params, 0.1, momentum=0.9), SGD)
    adam = build_optimizer("adam", params, 0.1, betas=(0.8, 0.9), eps=1e-6)
    assert isinstance(adam, Adam) and adam.betas == (0.8, 0.9) and adam.eps == 1e-6
    assert type(build_optimizer("adamw", params, 0.1)) is AdamW
    assert isinstance(build_optimizer("rmsprop", params, 0.1, momentum=0.5), RMSprop)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        build_optimizer("lion", params, 0.1)
