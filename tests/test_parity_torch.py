"""Parity with PyTorch: same weights -> same logits, loss, input gradient, parameter
gradients, running statistics and eval-mode logits (float32, relative error <= 1e-3).

The torch twins are written here by hand with torch.nn (torchvision is not installed):
the lecture's LeNet-5 and a line-by-line mirror of torchvision's resnet.py (BasicBlock,
Bottleneck v1.5, _make_layer, ResNet), so names, order and shapes must equal ours.
Relative error of a tensor = max|ours - torch| / max|torch|.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import numbacnn.random as nrandom  # noqa: E402
from numbacnn import functional as F  # noqa: E402
from numbacnn.models import lenet5, resnet18, resnet50  # noqa: E402

TOL = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds contention with Numba's on 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------
# torch twins
# --------------------------------------------------------------------------------------
def torch_lenet5(num_classes=10):
    """The lecture's nn.Sequential, with tanh after Conv 3 as in the lecture's table."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5),
        nn.Tanh(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Tanh(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(16, 120, kernel_size=5),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(120, 84),
        nn.Tanh(),
        nn.Linear(84, num_classes),
    )


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TorchBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, in_channels=3):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------
def rel(ours, theirs):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def copy_parameters(model, tmodel, check_names=True):
    """Assert equal parameter order and shapes (and names / state_dict keys), then copy
    our parameters into the torch model by parameters() order."""
    ours, theirs = model.parameters(), list(tmodel.parameters())
    assert [p.shape for p in ours] == [tuple(p.shape) for p in theirs]
    if check_names:
        assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
        assert list(model.state_dict()) == list(tmodel.state_dict())
    with torch.no_grad():
        for p, tp in zip(ours, theirs, strict=True):
            tp.copy_(torch.from_numpy(p.data))


def compare(model, tmodel, x, labels, backward=True):
    """One training-mode step on both models (in their current dtype), then eval-mode
    logits; return {quantity: relative error}."""
    model.train(), tmodel.train()
    model.zero_grad()
    tmodel.zero_grad()
    xt = torch.from_numpy(x.copy()).requires_grad_(backward)

    logits = model(x)  # (N, K)
    tlogits = tmodel(xt)
    errors = {"logits": rel(logits, tlogits)}
    if backward:
        loss = F.cross_entropy(logits, labels)
        dx = model.backward(F.cross_entropy_backward(logits, labels))  # (N, C, H, W)
        tloss = nn.functional.cross_entropy(tlogits, torch.from_numpy(labels))
        tloss.backward()
        errors["loss"] = abs(loss - tloss.item()) / abs(tloss.item())
        errors["dx"] = rel(dx, xt.grad)
        errors["grads"] = max(
            rel(p.grad, tp.grad) for p, tp in zip(model.parameters(), tmodel.parameters(), strict=True)
        )
    # running statistics after the training-mode forward, then eval-mode logits
    tsd = tmodel.state_dict()
    buffers = [(k, v) for k, v in model.state_dict().items() if "running" in k]
    if buffers:
        errors["running_stats"] = max(rel(v, tsd[k]) for k, v in buffers)
    model.eval(), tmodel.eval()
    with torch.no_grad():
        errors["eval_logits"] = rel(model(x), tmodel(torch.from_numpy(x)))
    return errors


def check(errors, tol=TOL):
    print({k: f"{v:.1e}" for k, v in errors.items()})
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"{worst}: relative error {errors[worst]:.2e} > {tol}"


def test_lenet5_parity():
    nrandom.seed(0)
    model, tmodel = lenet5(10), torch_lenet5(10)
    copy_parameters(model, tmodel, check_names=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 4).astype(np.int64)
    check(compare(model, tmodel, x, labels))


def test_resnet18_parity():
    nrandom.seed(1)
    model, tmodel = resnet18(num_classes=10), TorchResNet(TorchBasicBlock, [2, 2, 2, 2], num_classes=10)
    copy_parameters(model, tmodel)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    labels = np.array([3, 7], np.int64)
    check(compare(model, tmodel, x, labels))


def _flat_grads(params):
    return np.concatenate(
        [np.ravel(p.grad.detach().numpy() if hasattr(p.grad, "detach") else p.grad) for p in params]
    )


@pytest.mark.slow
def test_resnet50_parity():
    """float32: logits, loss, running statistics and eval logits within 1e-3 of torch.

    Gradients: an untrained ResNet-50 in float32 is ill-conditioned in its parameter
    gradients -- torch's OWN float32 gradients differ from its float64 ones by ~20% in the
    worst tensors (max-norm) and ~2% overall, at every batch/size we tried (2x64^2 ...
    32x32^2) -- so no two correct float32 implementations can agree to 1e-3 there. We
    therefore check (a) in float64 everything agrees with torch to 1e-6, and (b) in float32
    our gradients are as close to the float64 truth as torch's float32 gradients are
    (global relative norm, within a factor 2)."""
    nrandom.seed(2)
    model, tmodel = resnet50(num_classes=10), TorchResNet(TorchBottleneck, [3, 4, 6, 3], num_classes=10)
    copy_parameters(model, tmodel)
    t64 = TorchResNet(TorchBottleneck, [3, 4, 6, 3], num_classes=10).double()
    t64.load_state_dict(tmodel.state_dict())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 40, 40)).astype(np.float32)  # layer4: 2 x 2
    labels = np.array([1, 8], np.int64)
    errors = compare(model, tmodel, x, labels)
    grads_f32_ours, grads_f32_torch = _flat_grads(model.parameters()), _flat_grads(tmodel.parameters())
    check({k: v for k, v in errors.items() if k not in ("grads", "dx")})

    # (a) float64: everything, tightly
    model.astype(np.float64)
    model.load_state_dict(t64.state_dict())  # same starting running statistics
    check(compare(model, t64, x.astype(np.float64), labels), tol=1e-6)

    # (b) float32 gradients are as accurate as torch's float32 gradients
    truth = _flat_grads(t64.parameters())
    err_ours = np.linalg.norm(grads_f32_ours - truth) / np.linalg.norm(truth)
    err_torch = np.linalg.norm(grads_f32_torch - truth) / np.linalg.norm(truth)
    print(f"float32 gradient error vs float64 truth: numbacnn {err_ours:.1e}, torch {err_torch:.1e}")
    assert err_ours <= 2 * err_torch + 1e-6
