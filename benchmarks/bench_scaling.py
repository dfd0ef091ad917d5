"""Data-parallel scaling, measured here and modelled for a cluster (docs/scaling.md).

    env -u OPENBLAS_CORETYPE mpiexec -n 2 python benchmarks/bench_scaling.py allreduce
    env -u OPENBLAS_CORETYPE NUMBA_NUM_THREADS=1 python benchmarks/bench_scaling.py step lenet5 64 32
    env -u OPENBLAS_CORETYPE mpiexec -n 2 python benchmarks/bench_scaling.py step lenet5 64 32
    python benchmarks/bench_scaling.py model ALPHA_US BETA_NS_PER_BYTE LENET5_S RESNET50_S
        # the predictions; LENET5_S, RESNET50_S: one core's seconds per image, e.g.
    python benchmarks/bench_scaling.py model 5 0.08 0.000142 1.873

allreduce: the best time of one MPI Allreduce (SUM, in place) of n float32 values, for n from
1k to 32M, then a least-squares fit of the ring all-reduce's alpha-beta model

    T(n bytes, p ranks) = 2 (p - 1) alpha + 2 (p - 1) / p * n * beta

step: the best time of one data-parallel SGD step (forward, backward, gradient exchange,
update) of MODEL on a global batch of BATCH images of SIDE x SIDE, on however many ranks
mpiexec started (one Numba thread per rank: numbacnn.distributed), through the same code as
``numbacnn train``; it also times the exchange alone (GradientExchange on zero gradients).

model: the step efficiency T_compute / (T_compute + T_allreduce) of LeNet-5 and ResNet-50
at 8 and 64 nodes of a 100 Gb/s network, with this machine's measured per-image compute
time as the node's speed (and 100x that, for a faster node), no overlap assumed.
"""

import argparse

import numpy as np
from _timing import best_time


def allreduce():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        raise SystemExit(
            "bench_scaling.py allreduce: run it under mpiexec -n 2 (or more): one rank has no one to sum with"
        )
    rows = []
    for k in range(10, 26, 1):
        n = 1 << k
        a = np.ones(n, np.float32)

        def run(a=a):
            comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)

        comm.Barrier()
        t = best_time(run, min_reps=5, max_reps=50, min_time=0.2)
        rows.append((n * 4, comm.allreduce(t, op=MPI.MAX)))
    if comm.rank == 0:
        p = comm.size
        nbytes = np.array([r[0] for r in rows], float)
        times = np.array([r[1] for r in rows])
        # least squares on T = 2(p-1) alpha + 2(p-1)/p n beta, weighted by 1/T (relative error)
        design = np.stack([2 * (p - 1) * np.ones_like(nbytes), 2 * (p - 1) / p * nbytes], 1) / times[:, None]
        (alpha, beta), *_ = np.linalg.lstsq(design, np.ones_like(times), rcond=None)
        print(f"Allreduce, {p} ranks, float32 SUM in place (best of >= 5)")
        print(f"{'bytes':>12} {'measured':>12} {'model':>12}")
        for b, t in rows:
            model = 2 * (p - 1) * alpha + 2 * (p - 1) / p * b * beta
            print(f"{int(b):>12} {t * 1e3:>10.3f} ms {model * 1e3:>10.3f} ms")
        gbs = 1 / beta / 1e9
        print(f"fit: alpha = {alpha * 1e6:.2f} us, beta = {beta * 1e9:.4f} ns/byte ({gbs:.1f} GB/s)")


def step(name, batch, side):
    import numbacnn.functional as F
    import numbacnn.random as nrandom
    from numbacnn import distributed
    from numbacnn.models import build_model
    from numbacnn.optim import SGD

    world = distributed.world()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, side, side)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    nrandom.seed(0)
    model = build_model(name, num_classes=10, in_channels=1)
    world.broadcast(model)
    exchange = distributed.GradientExchange(world).attach(model)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    lo, hi = world.shard(batch)

    def one_step():
        logits = model(x[lo:hi])
        d = F.cross_entropy_backward(logits, y[lo:hi]) * np.float32((hi - lo) / batch)
        model.zero_grad()
        exchange.start()
        model.backward(d)
        exchange.finish()
        optimizer.step()

    def exchange_only():
        exchange.start()
        exchange.finish()

    reps = 3 if name.startswith("resnet") else 10
    t_step = best_time(one_step, min_reps=reps, warmup=2)
    t_exchange = best_time(exchange_only, min_reps=reps, warmup=1)
    if world.size > 1:
        t_step = world.comm.allreduce(t_step, op=distributed.World._mpi().MAX)
        t_exchange = world.comm.allreduce(t_exchange, op=distributed.World._mpi().MAX)
    if world.is_root:
        n = sum(p.data.size for p in model.parameters())
        print(f"{name} batch {batch} {side}x{side}, {world.size} rank(s), {len(exchange.buckets)} bucket(s) "
              f"of {n} parameters: step {t_step * 1e3:.1f} ms ({batch / t_step:.0f} img/s), exchange "
              f"alone {t_exchange * 1e3:.2f} ms")  # fmt: skip


def model(alpha, beta, t_image=None):
    """Predicted efficiency; alpha in s, beta in s/byte; t_image: {model: seconds per image}."""
    models = {"lenet5": (61706, 64), "resnet50": (25557032, 32)}  # parameters, images per node per step
    t_image = t_image or {}
    gbit = 8 / beta / 1e9  # Gb/s
    net = f"ring all-reduce on a {gbit:.0f} Gb/s network"
    print(f"{net}: alpha {alpha * 1e6:.1f} us, beta {beta * 1e9:.3f} ns/byte")
    print(f"{'model':>9} {'nodes':>5} {'allreduce':>11} {'compute':>10} {'efficiency':>10} {'100x node':>10}")
    for name, (params, local) in models.items():
        for p in (8, 64):
            t_ar = 2 * (p - 1) * alpha + 2 * (p - 1) / p * params * 4 * beta
            t_c = t_image[name] * local
            eff, eff100 = t_c / (t_c + t_ar), (t_c / 100) / (t_c / 100 + t_ar)
            times = f"{t_ar * 1e3:>8.2f} ms {t_c * 1e3:>7.0f} ms"
            print(f"{name:>9} {p:>5} {times} {100 * eff:>9.1f}% {100 * eff100:>9.1f}%")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("allreduce", help="time Allreduce sizes and fit alpha, beta (under mpiexec -n 2)")
    s = sub.add_parser("step", help="time one data-parallel SGD step (under mpiexec -n K, or alone)")
    s.add_argument("model")
    s.add_argument("batch", type=int, help="global batch")
    s.add_argument("side", type=int, help="image side, pixels")
    m = sub.add_parser("model", help="predict the step efficiency at 8 and 64 nodes")
    m.add_argument("alpha_us", type=float, help="latency per message, microseconds")
    m.add_argument("beta_ns_per_byte", type=float, help="seconds per byte, nanoseconds (100 Gb/s: 0.08)")
    m.add_argument("lenet5_s", type=float, help="one core's seconds per LeNet-5 image (training)")
    m.add_argument("resnet50_s", type=float, help="one core's seconds per ResNet-50 224x224 image (training)")
    args = parser.parse_args()
    if args.what == "allreduce":
        allreduce()
    elif args.what == "step":
        step(args.model, args.batch, args.side)
    else:
        model(
            args.alpha_us * 1e-6,
            args.beta_ns_per_byte * 1e-9,
            {"lenet5": args.lenet5_s, "resnet50": args.resnet50_s},
        )
