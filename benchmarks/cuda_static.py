"""Static evidence for the CUDA kernels, without a GPU: compile every kernel to PTX and SASS
and report what the hardware would run.

    python -m benchmarks.cuda_static [--json FILE] [--cc 80 90]

For every kernel of numbacnn.kernels.cuda (numbacnn/kernels/cuda/signatures.py), float32 and
float64, and each compute capability (sm_80, sm_90): Numba lowers it to NVVM IR and NVVM to
PTX (numba.cuda; NVRTC from the nvidia-cuda-nvrtc wheel), `ptxas -v` assembles it (CUDA
toolkit: $CUDA_HOME/bin or PATH) and `nvdisasm` (nvidia-cuda-nvdisasm wheel) disassembles
it. The table gives registers per thread, spill bytes, static shared memory, the occupancy
at the kernel's launch size (resident warps / 64, from the register, thread and shared
memory limits of one SM), and for the implicit-GEMM conv kernels the SASS instructions per
FMA of the innermost loop that holds FMAs (FFMA for float32, DFMA for float64).

Then the launches of every ResNet-50 conv (batch 64, 224 x 224): forward, input gradient
and weight gradient, with their blocks.

Exit status 1 on a compile error, float64 arithmetic in the PTX of a float32 kernel meant
to have none (signatures.F32_PURE), any spill, a float32 conv GEMM inner loop above
MAX_SASS_PER_FFMA instructions per FFMA, or a ResNet-50 conv launch below MIN_BLOCKS blocks
(two per SM of an H100). --json writes the rows as a list of objects (keys `kernel`, `dtype`,
`cc`, `registers`, `spill_bytes`, `shared_bytes`, `occupancy`, `sass_per_ffma`; then
`layer`, `kernel`, `blocks` per launch).
"""

import argparse
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np

MAX_SASS_PER_FFMA = 4.0
MIN_BLOCKS = 264  # two blocks per SM of an H100 (132 SMs)
# One SM, sm_80 and sm_90: 64K 32-bit registers (allocated per warp in units of 256), 2048
# threads, 32 blocks, 64 warps; shared memory per SM available to blocks, 1 KB reserved each.
SM = {80: dict(smem=167936, threads=2048), 90: dict(smem=233472, threads=2048)}


def _tool(name, wheel_glob):
    """A CUDA tool: $CUDA_HOME/bin, PATH, or the nvidia wheel's bin directory."""
    home = os.environ.get("CUDA_HOME")
    if home and os.path.exists(os.path.join(home, "bin", name)):
        return os.path.join(home, "bin", name)
    if shutil.which(name):
        return shutil.which(name)
    found = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], wheel_glob))
    return found[0] if found else None


def _ptxas_info(text):
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    return dict(
        registers=int(regs.group(1)) if regs else 0,
        spill_bytes=(int(stores.group(1)) if stores else 0) + (int(loads.group(1)) if loads else 0),
        shared_bytes=int(smem.group(1)) if smem else 0,
    )


def occupancy(registers, shared_bytes, threads, cc):
    """Resident warps / 64 on one SM for blocks of `threads` threads."""
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (65536 // regs_per_warp) // warps
    by_threads = SM[cc]["threads"] // (warps * 32)
    by_smem = SM[cc]["smem"] // (shared_bytes + 1024) if shared_bytes else 32
    blocks = min(by_regs, by_threads, by_smem, 32)
    return round(min(blocks * warps, 64) / 64, 3)


_F64_OP = re.compile(r"\b(?:add|sub|mul|fma|div)(?:\.rn)?\.f64\b")
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)")


def sass_per_fma(sass, fma="FFMA"):
    """Instructions per `fma` in the innermost loop (a backward branch's span) that holds one,
    from nvdisasm's text; None when no loop holds one."""
    insns, labels = [], {}
    for line in sass.splitlines():
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = len(insns)
            continue
        m = _INSN.search(line)
        if m:
            insns.append((m.group(3), line))
    best = None
    for end, (op, line) in enumerate(insns):
        if op != "BRA":
            continue
        target = _BRANCH.search(line)
        if not target or target.group(1) not in labels or labels[target.group(1)] > end:
            continue
        body = insns[labels[target.group(1)] : end + 1]
        n_fma = sum(1 for o, _ in body if o.split(".")[0] == fma)
        if n_fma and (best is None or len(body) < best[0]):
            best = (len(body), n_fma)
    return None if best is None else round(best[0] / best[1], 2)


def compile_all(ccs, tmp, ptxas, nvdisasm, shard=(0, 1)):
    """Rows of (kernel, dtype, cc) and a list of failures; shard (k, K): every K-th kernel
    from the k-th (a worker's share)."""
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba.cuda.compiler import _compile_pyfunc_with_fixup

    if not cuda.is_available():  # device functions ask the current GPU for its compute capability
        dispatcher.get_current_device = lambda: type("NoGPU", (), {"compute_capability": (8, 0)})()

    from numbacnn.kernels.cuda.signatures import CONV_GEMM, F32_PURE, kernels

    rows, failures = [], []
    for dtype in ("float32", "float64"):
        for k in kernels(np.dtype(dtype))[shard[0] :: shard[1]]:
            try:
                # typed and lowered once (as a kernel: the entry point ptxas needs), then NVVM per cc
                lib, _ = _compile_pyfunc_with_fixup(
                    k.dispatcher.py_func,
                    k.argtypes,
                    device=False,
                    cc=(8, 0),
                    abi="numba",
                    launch_bounds=k.dispatcher.targetoptions.get("launch_bounds"),
                )
            except Exception as e:
                failures.append(f"{k.name} {dtype}: {type(e).__name__}: {e}")
                continue
            for cc in ccs:
                base = os.path.join(tmp, f"{k.name}_{dtype}_{cc}")
                try:
                    (ptx,) = lib.get_asm_strs(cc=(cc // 10, cc % 10))
                    with open(base + ".ptx", "w") as f:
                        f.write(ptx)
                    cmd = [ptxas, "-v", f"-arch=sm_{cc}", base + ".ptx", "-o", base + ".cubin"]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                except Exception as e:
                    failures.append(f"{k.name} {dtype} sm_{cc}: {getattr(e, 'stderr', '') or e}")
                    continue
                info = _ptxas_info(out.stderr + out.stdout)
                if dtype == "float32" and k.name in F32_PURE and _F64_OP.search(ptx):
                    op = _F64_OP.search(ptx).group(0)
                    failures.append(
                        f"{k.name} float32 sm_{cc}: float64 arithmetic in its PTX ({op}): promoted"
                    )
                row = dict(kernel=k.name, dtype=dtype, cc=cc, **info,
                           occupancy=occupancy(info["registers"], info["shared_bytes"], k.threads, cc),
                           sass_per_ffma=None)  # fmt: skip
                if k.name in CONV_GEMM and nvdisasm:
                    sass = subprocess.run([nvdisasm, "-c", base + ".cubin"], capture_output=True, text=True,
                                          check=True).stdout  # fmt: skip
                    row["sass_per_ffma"] = sass_per_fma(sass, "FFMA" if dtype == "float32" else "DFMA")
                rows.append(row)
    return rows, failures


def _row_text(r):
    spf = "-" if r["sass_per_ffma"] is None else f"{r['sass_per_ffma']:.2f}"
    return (f"{r['kernel']:22s} {r['dtype']:8s} sm_{r['cc']}  {r['registers']:4d} {r['spill_bytes']:6d} "
            f"{r['shared_bytes']:7d} {r['occupancy']:6.3f} {spf:>8s}")  # fmt: skip


def resnet50_launches(batch=64, side=224):
    """One row per ResNet-50 conv launch: layer, kernel (forward, input, weight), blocks."""
    from numbacnn.kernels.cuda.conv import gemm
    from numbacnn.layers import Conv2d
    from numbacnn.models import resnet50

    model = resnet50(num_classes=1000, in_channels=3)
    inputs, original = {}, Conv2d.output_shape

    def record(self, input_shape):
        inputs[id(self)] = tuple(input_shape)
        return original(self, input_shape)

    Conv2d.output_shape = record
    try:
        model.output_shape((batch, 3, side, side))
    finally:
        Conv2d.output_shape = original
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, Conv2d):
            x_shape = inputs[id(m)]
            launches = gemm.grids(x_shape, m.weight.shape, m.output_shape(x_shape), m.groups)
            for product, (grid, splits) in launches.items():
                if product == "input" and name == "conv1":
                    continue  # the first layer needs no input gradient
                rows.append(dict(layer=name, kernel=f"conv_gemm_{product}", blocks=int(np.prod(grid)),
                                 splits=splits))  # fmt: skip
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cuda_static", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--cc", nargs="+", type=int, default=[80, 90], choices=sorted(SM), help="(default: 80 90)")
    args = p.parse_args(argv)
    from numba import config

    if config.ENABLE_CUDASIM:
        p.error("unset NUMBA_ENABLE_CUDASIM: the simulator compiles nothing")
    ptxas = _tool("ptxas", "nvidia/cu*/bin/ptxas")
    nvdisasm = _tool("nvdisasm", "nvidia/cu*/bin/nvdisasm")
    if ptxas is None:
        p.error("ptxas not found: install the CUDA toolkit (set CUDA_HOME) or put ptxas on PATH")
    if nvdisasm is None:
        p.error("nvdisasm not found: pip install nvidia-cuda-nvdisasm")
    print(f"ptxas {ptxas}\nnvdisasm {nvdisasm}")
    print(f"{'kernel':22s} {'dtype':8s} cc      regs  spill    smem  occup SASS/FMA")
    with tempfile.TemporaryDirectory() as tmp:
        # two processes, each compiling every other kernel (Numba's typing and NVVM use one core)
        with concurrent.futures.ProcessPoolExecutor(2) as pool:
            jobs = [pool.submit(compile_all, args.cc, tmp, ptxas, nvdisasm, (k, 2)) for k in range(2)]
            rows, failures = [], []
            for job in jobs:
                r, f = job.result()
                rows += r
                failures += f
        for row in rows:
            print(_row_text(row))
    launches = resnet50_launches()
    print(f"\nResNet-50 conv launches, batch 64, 224x224 ({len(launches)}): fewest blocks per kernel")
    for kernel in ("conv_gemm_forward", "conv_gemm_input", "conv_gemm_weight"):
        mine = [r for r in launches if r["kernel"] == kernel]
        low = min(mine, key=lambda r: r["blocks"])
        print(f"  {kernel:18s} {low['blocks']:6d} blocks ({low['layer']}; splits {low['splits']})")
    problems = list(failures)
    problems += [f"{r['kernel']} {r['dtype']} sm_{r['cc']}: {r['spill_bytes']} spill bytes" for r in rows
                 if r["spill_bytes"]]  # fmt: skip
    problems += [f"{r['kernel']} float32 sm_{r['cc']}: {r['sass_per_ffma']} SASS instructions per FFMA "
                 f"(at most {MAX_SASS_PER_FFMA})" for r in rows
                 if r["dtype"] == "float32" and r["sass_per_ffma"] is not None
                 and r["sass_per_ffma"] > MAX_SASS_PER_FFMA]  # fmt: skip
    problems += [f"ResNet-50 {r['layer']} {r['kernel']}: {r['blocks']} blocks (at least {MIN_BLOCKS})"
                 for r in launches if r["blocks"] < MIN_BLOCKS]  # fmt: skip
    from numbacnn.kernels.cuda.signatures import CONV_GEMM

    missing = [
        name for name in CONV_GEMM if not any(r["kernel"] == name and r["sass_per_ffma"] for r in rows)
    ]
    problems += [f"{name}: no inner loop with an FFMA found in its SASS" for name in missing]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                rows + [{k: r[k] for k in ("layer", "kernel", "blocks")} for r in launches], f, indent=1
            )
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    print(f"\n{len(rows)} compiled kernels, {len(launches)} launches: " + ("OK" if not problems else
          f"{len(problems)} problem(s)"))  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
