"""Look inside a trained LeNet-5: its first-layer filters and the feature maps of one digit.

    python examples/feature_maps.py [runs/lenet5/checkpoint.npz] [--index 0] [--out out]

Writes OUT/filters.png (conv1's 6 learned 5x5 filters) and OUT/feature_maps.png (a test
digit, the 6 conv1 output maps (28x28) and the 16 conv2 output maps (10x10)).
Train a checkpoint first: numbacnn train --model lenet5 --out runs/lenet5
"""

import argparse
import os
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from numbacnn.checkpoint import CheckpointError, load, load_model_state
from numbacnn.data import load_mnist, preprocess
from numbacnn.models import build_model

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("checkpoint", nargs="?", default="runs/lenet5/checkpoint.npz")
p.add_argument("--index", type=int, default=0, help="which test image (default 0)")
p.add_argument("--out", default="out", help="output directory (default: out)")
args = p.parse_args()

try:
    ck = load(args.checkpoint)
    model_name = ck.meta.get("config", {}).get("model", "lenet5")
    if model_name != "lenet5":
        sys.exit(f"error: {args.checkpoint} holds a {model_name}, this example draws LeNet-5")
    model = build_model("lenet5")
    load_model_state(model, ck.model_state)
except CheckpointError as e:
    sys.exit(f"error: {e}\n(train one with: numbacnn train --model lenet5 --out runs/lenet5)")
model.eval()

mnist = load_mnist()
x = preprocess(mnist["x_test"][args.index : args.index + 1], pad=2)  # (1, 1, 32, 32)
label = int(mnist["y_test"][args.index])

# Run the Sequential node by node and keep the conv outputs.
maps, h = {}, x
for name in model.order:
    h = model[name](h)
    if name in ("conv1", "conv2"):
        maps[name] = h[0]  # (C, H, W)
pred = int(np.argmax(h[0]))


def show(ax, img, title=None, cmap="gray"):
    ax.imshow(img, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


os.makedirs(args.out, exist_ok=True)

# conv1's filters: weight (6, 1, 5, 5); a diverging colour map centred on 0.
w = model["conv1"].weight.data[:, 0]
lim = float(np.abs(w).max())
fig = Figure(figsize=(9, 2))
FigureCanvasAgg(fig)
for i, ax in enumerate(fig.subplots(1, 6)):
    ax.imshow(w[i], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"filter {i}", fontsize=8)
fig.suptitle("LeNet-5 conv1: 6 learned 5x5 filters (red +, blue -)")
fig.savefig(os.path.join(args.out, "filters.png"), dpi=120)

# The digit, conv1's 6 maps and conv2's 16 maps.
fig = Figure(figsize=(12, 6))
FigureCanvasAgg(fig)
grid = fig.add_gridspec(3, 9)
show(fig.add_subplot(grid[0:2, 0]), x[0, 0], f"input (label {label},\npredicted {pred})")
for i in range(6):
    show(fig.add_subplot(grid[0, 1 + i]), maps["conv1"][i], f"conv1 #{i}", "viridis")
for i in range(16):
    show(fig.add_subplot(grid[1 + i // 8, 1 + i % 8]), maps["conv2"][i], f"conv2 #{i}", "viridis")
fig.suptitle(f"feature maps of test image {args.index}: conv1 (6 x 28x28), conv2 (16 x 10x10)")
fig.savefig(os.path.join(args.out, "feature_maps.png"), dpi=100)
print(
    f"wrote {os.path.join(args.out, 'filters.png')} and {os.path.join(args.out, 'feature_maps.png')}"
    f" (test image {args.index}: label {label}, predicted {pred})"
)
