"""Everything issue 8 asks of a real GPU, in one run of under 8 minutes:

    python -m benchmarks.gpu_run [--out DIR] [--smoke]

1. `pytest -q tests/cuda` on the device (the simulator's tests, on real hardware);
2. `numbacnn train --device cuda` LeNet-5 on MNIST, the README's recipe (3 epochs, batch 64,
   lr 0.05, momentum 0.9): the final test accuracy (the README's CPU run: 98.75%);
3. `benchmarks/bench_cuda.py --preset all`: every kernel against PyTorch on the same card;
4. training steps, float32: a LeNet-5 SGD step at batch 64 (32x32) and a ResNet-18 step at
   batch 32 (224x224), numbacnn --device cuda against PyTorch CUDA with TF32 off and on, each
   implementation in its own process (median of timed steps after warm-up, synchronised).

Prints each part as it ends and writes DIR/gpu_run.json (default DIR: $OUT, else
gpu_run_out). Without a GPU it says so and exits 0, unless --smoke: tiny shapes under the
CUDA simulator (NUMBA_ENABLE_CUDASIM=1) to check the script itself.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = {  # model: (batch, channels, side, classes, warm-up, timed)
    "lenet5": (64, 1, 32, 10, 5, 50),
    "resnet18": (32, 3, 224, 1000, 3, 10),
}
SMOKE = {"lenet5": (2, 1, 32, 10, 1, 1)}


def _run(cmd, timeout, env=None):
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, **(env or {})))  # fmt: skip
        out, rc = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"{e.stdout or ''}{e.stderr or ''}\n(timed out after {timeout} s)", 124
    return rc, out, time.perf_counter() - t0


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def step_worker(impl, model_name, smoke, tf32):
    """Time one implementation's training step in this process; prints one JSON line."""
    import numpy as np

    batch, channels, side, classes, warm, timed = (SMOKE if smoke else STEPS)[model_name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, side, side)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    times = []
    if impl == "numbacnn":
        from numba import cuda

        from numbacnn import functional as F
        from numbacnn.models import build_model
        from numbacnn.optim import SGD

        model = build_model(model_name, num_classes=classes, in_channels=channels).to("cuda")
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
        xd, yd = cuda.to_device(x), cuda.to_device(y)
        for i in range(warm + timed):
            cuda.synchronize()
            t0 = time.perf_counter()
            logits = model(xd)
            model.zero_grad()
            model.backward(F.cross_entropy_backward(logits, yd), input_grad=False)
            opt.step()
            cuda.synchronize()
            if i >= warm:
                times.append(time.perf_counter() - t0)
    else:
        import torch
        import torch.nn as nn

        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        if model_name == "lenet5":
            layers = [nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh()]
            layers += [nn.AvgPool2d(2), nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten()]
            net = nn.Sequential(*layers, nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, classes))
        else:
            net = _torch_resnet18(classes)
        net = net.cuda()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
        for i in range(warm + timed):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt), yt).backward()
            opt.step()
            torch.cuda.synchronize()
            if i >= warm:
                times.append(time.perf_counter() - t0)
    print(json.dumps({"impl": impl, "model": model_name, "tf32": tf32, "batch": batch,
                      "ms": 1e3 * _median(times), "images_per_s": batch / _median(times)}))  # fmt: skip


def _torch_resnet18(classes):
    """torchvision's resnet18, written out (the device machine need not have torchvision)."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                      nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(cout))  # fmt: skip
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + (x if self.down is None else self.down(x)))

    layers = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_run_out")
    p.add_argument("--smoke", action="store_true", help="tiny shapes under the simulator: check the script")
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "MODEL", "TF32"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        impl, model_name, tf32 = args.worker
        step_worker(impl, model_name, args.smoke, tf32 == "on")
        return 0
    from numbacnn.device import cuda_problem

    problem = cuda_problem()
    if problem or (os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and not args.smoke):
        print(f"gpu_run: no GPU to run on ({problem or 'the CUDA simulator is on'}); nothing run")
        return 0
    os.makedirs(args.out, exist_ok=True)
    report = {"device": _device_name(), "parts": {}}
    py = sys.executable

    def part(name, cmd, timeout, env=None):
        rc, out, seconds = _run(cmd, timeout, env)
        tail = "\n".join(out.strip().splitlines()[-12:])
        print(f"== {name}: exit {rc}, {seconds:.0f} s\n{tail}\n", flush=True)
        report["parts"][name] = {"exit": rc, "seconds": round(seconds, 1), "tail": tail}
        return rc, out

    if not args.smoke:
        part("pytest tests/cuda", [py, "-m", "pytest", "-q", "-x", "tests/cuda"], 150)
        recipe = "train --model lenet5 --epochs 3 --batch-size 64 --lr 0.05 --momentum 0.9 --device cuda"
        train = [py, "-m", "numbacnn.cli", *recipe.split(), "--no-progress", "--overwrite"]
        part("LeNet-5 MNIST --device cuda", [*train, "--out", os.path.join(args.out, "lenet5")], 200)
        part("kernels vs PyTorch", [py, "benchmarks/bench_cuda.py", "--preset", "all", "--reps", "20"], 120,
             {"PYTHONPATH": ROOT})  # fmt: skip
    steps = []
    for model_name in SMOKE if args.smoke else STEPS:
        for impl, tf32 in (("numbacnn", "off"), ("torch", "off"), ("torch", "on")):
            if args.smoke and impl == "torch":
                continue
            cmd = [py, "-m", "benchmarks.gpu_run", "--worker", impl, model_name, tf32]
            cmd += ["--smoke"] if args.smoke else []
            rc, out = part(f"step {model_name} {impl} tf32 {tf32}", cmd, 600 if args.smoke else 120)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if rc == 0 and lines:
                steps.append(json.loads(lines[-1]))
    report["steps"] = steps
    for s in steps:
        print(f"{s['model']:9s} {s['impl']:9s} tf32 {'on ' if s['tf32'] else 'off'} batch {s['batch']:3d}: "
              f"{s['ms']:8.2f} ms/step, {s['images_per_s']:8.0f} img/s")  # fmt: skip
    with open(os.path.join(args.out, "gpu_run.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


def _device_name():
    try:
        from numba import cuda

        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:  # the simulator, or a driver problem
        return f"unknown ({type(e).__name__})"


if __name__ == "__main__":
    sys.exit(main())
