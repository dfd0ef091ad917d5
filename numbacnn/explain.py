"""One self-contained HTML page that shows what a CNN does with a few images:
``numbacnn explain --checkpoint runs/lenet5/checkpoint.npz --out explain.html`` and
``write_explain_page(model, images, labels, out)``.

The page holds, for a set of images (thumbnails to choose from; the arrow keys step through
them):

* the network as a diagram, drawn by the page's script as inline SVG from the model's flat
  node list (``Graph.flat_nodes``: one box per node with its type and output shape, skip
  connections as arcs); a node's box links to its feature maps;
* the class probabilities (softmax of the model's output), the true label beside the
  predicted class;
* the filters of the first conv layers (their weights, on a diverging colour map: blue
  negative, white 0, red positive; at most 16 filters x 16 input channels each);
* every node's feature maps (every node whose output is (N, C, H, W) with H x W > 1),
  the first 16 channels of a wider node; each map on its own scale (its min..max), maps
  wider than 64 pixels shown block-averaged.

Everything is inline: the images are small PNGs (palette mode, the colour map in the
palette) in base64 ``data:`` URIs inside one JSON document, drawn on ``<canvas>`` by the
script of ``explain_template.html``; a Content-Security-Policy forbids any request, so the
page opens from a file, offline, with no server. LeNet-5's page with 10 MNIST digits is
about 0.2 MB, resnet_cifar's about 4 MB.

Per-node outputs come from ``Graph.node_outputs`` (one forward pass; the model runs in
eval mode, as for inference).
"""

import base64
import html
import importlib.resources
import io
import json
import math
import os
from typing import NamedTuple

import numpy as np

from ._io import atomic_write
from .graph import Graph
from .report import softmax

__all__ = ["MAX_CHANNELS", "MAX_SIDE", "MAX_IMAGES", "Explained", "explain_data", "render_page",
           "write_explain_page"]  # fmt: skip

MAX_CHANNELS = 16  # channels of a node's output shown (the first ones)
MAX_SIDE = 64  # larger maps are shown block-averaged down to at most this many pixels a side
MAX_IMAGES = 100  # images a page may hold (each adds every node's maps)
_FILTER_LAYERS = 2  # conv layers whose filters are shown
_BATCH = 8  # images per forward pass while the page is built
_FEATURE_CMAP, _FILTER_CMAP = "viridis", "RdBu_r"
# Colours a feature map is drawn with: 64 steps of viridis look smooth, and the page of a
# ResNet is a third smaller than with 256 (its maps' noise compresses badly).
_MAP_LEVELS = 64


class Explained(NamedTuple):
    """What ``write_explain_page`` wrote: ``path``, its ``size`` in bytes, the
    ``probabilities`` (N, K) float64 and the ``predictions`` (N,) int64 it shows."""

    path: str
    size: int
    probabilities: np.ndarray
    predictions: np.ndarray


def _palette(name, levels=256):
    """A matplotlib colour map as a PNG palette: ``levels`` RGB triples, flattened."""
    import matplotlib

    rgb = matplotlib.colormaps[name](np.linspace(0.0, 1.0, levels))[:, :3]
    return np.round(rgb * 255).astype(np.uint8).ravel().tolist()


def _stops(name, n=9):
    """n CSS colours along a colour map, for the page's legends."""
    import matplotlib
    from matplotlib.colors import to_hex

    return [to_hex(c) for c in matplotlib.colormaps[name](np.linspace(0.0, 1.0, n))]


def _png(pixels, palette=None):
    """A data: URI of a PNG of uint8 pixels: (H, W) grey or palette-indexed, (H, W, 3) RGB."""
    from PIL import Image

    pixels = np.ascontiguousarray(pixels, np.uint8)
    if palette is None:
        image = Image.fromarray(pixels)
    else:  # the bytes are palette indices
        image = Image.frombytes("P", (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _levels(values, lo, hi, levels=256):
    """values scaled from [lo, hi] to 0..levels-1 (uint8); a constant (hi == lo) is 0."""
    if not hi > lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - lo) * ((levels - 1) / (hi - lo))
    return np.clip(np.round(scaled), 0, levels - 1).astype(np.uint8)


def _shrink(maps, factor):
    """Block means of ``factor`` x ``factor`` pixels over the last two axes (a ragged
    edge left out)."""
    if factor == 1:
        return maps
    h, w = maps.shape[-2] // factor, maps.shape[-1] // factor
    trimmed = maps[..., : h * factor, : w * factor]
    return trimmed.reshape(*maps.shape[:-2], h, factor, w, factor).mean(axis=(-3, -1))


def _input_pixels(x, mean, std):
    """One model input (C, H, W) as the picture it was: x * std + mean per channel, clipped
    to [0, 1] (min..max when mean and std are not known); grey for one channel, RGB for
    three, the first channel otherwise. uint8 (H, W) or (H, W, 3)."""
    x = np.asarray(x, np.float64)
    if mean is not None and std is not None:
        c = x.shape[0]
        m = np.broadcast_to(np.asarray(mean, np.float64).ravel(), (c,)).reshape(c, 1, 1)
        s = np.broadcast_to(np.asarray(std, np.float64).ravel(), (c,)).reshape(c, 1, 1)
        pixels = np.clip(x * s + m, 0.0, 1.0) * 255.0
    else:
        pixels = _levels(x, float(x.min()), float(x.max())).astype(np.float64)
    pixels = np.round(pixels).astype(np.uint8)
    return pixels.transpose(1, 2, 0) if x.shape[0] == 3 else pixels[0]


def _first_convs(nodes, count):
    """The first ``count`` Conv2d nodes of a flat node list: [(path, layer)]."""
    from .layers import Conv2d

    return [(path, layer) for path, layer, _, _ in nodes if isinstance(layer, Conv2d)][:count]


def _filter_entry(path, layer, input_names=None):
    """A conv layer's weights (C_out, C_in/groups, kH, kW), at most MAX_CHANNELS filters
    of MAX_CHANNELS input channels, as one palette PNG: row o holds filter o's kernels side
    by side (one per input channel), on RdBu_r from -lim to +lim, lim = max |w| shown."""
    w = np.asarray(layer.weight.data, np.float64)
    c_out, c_in, kh, kw = w.shape
    shown = w[:MAX_CHANNELS, :MAX_CHANNELS]
    lim = float(np.abs(shown).max())
    rows, cols = shown.shape[:2]
    grid = _levels(shown, -lim, lim) if lim > 0 else np.full(shown.shape, 128, np.uint8)
    sprite = grid.transpose(0, 2, 1, 3).reshape(rows * kh, cols * kw)
    return {
        "path": path,
        "layer": " ".join(repr(layer).split()),
        "shape": [c_out, c_in, kh, kw],
        "rows": rows,
        "cols": cols,
        "tile": [kh, kw],
        "lim": lim,
        "ranges": [[[float(k.min()), float(k.max())] for k in row] for row in shown],
        "inputNames": input_names,
        "sprite": _png(sprite, _palette(_FILTER_CMAP)),
    }


def explain_data(model, images, labels=None, *, class_names=None, mean=None, std=None, depth=None,
                 title=None, about=None, indices=None):  # fmt: skip
    """The page's content as a JSON-ready dict (see the module docstring), and the
    probabilities (N, K) float64 it shows.

    model: a numbacnn Graph (a zoo model), run in eval mode (its mode is restored after).
    images: (N, C, H, W) float32, the model's inputs (normalised as in training), 1 <= N
    <= MAX_IMAGES. labels: (N,) ints or None. class_names: K names (default "0".."K-1").
    mean, std: per-channel normalisation of the inputs (to show the images as they were;
    None: each image shown min..max). depth: levels of nesting expanded (as
    ``Graph.flat_nodes``; None: all). title: the page's heading; about: [(name, value)]
    facts shown under it; indices: each image's number in its dataset (default 0..N-1).
    Raises TypeError for a model that is not a Graph, ValueError for images, labels or
    class names that do not fit (the model's own errors name the node)."""
    if not isinstance(model, Graph):
        raise TypeError(f"explain: model must be a numbacnn Graph or Sequential, got {type(model).__name__}")
    x = np.asarray(images)
    if x.ndim != 4 or x.dtype != np.float32:
        raise ValueError(f"explain: images must be float32 (N, C, H, W), got {x.dtype} {x.shape}")
    n = x.shape[0]
    if not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"explain: between 1 and {MAX_IMAGES} images, got {n}")
    if labels is not None:
        labels = np.asarray(labels).ravel()
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError(f"explain: labels must be {n} integers, got {labels.dtype} {labels.shape}")
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n:
        raise ValueError(f"explain: {len(indices)} indices for {n} images")
    nodes = model.flat_nodes(x.shape, depth)  # GraphError naming the node when x does not fit
    out_shape = nodes[-1][3]
    if len(out_shape) != 2:
        raise ValueError(f"explain: the model's output must be (N, K) logits, got shape {out_shape}")
    k = out_shape[1]
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"explain: {len(names)} class names for a model with {k} outputs")
    if labels is not None and ((labels < 0) | (labels >= k)).any():
        raise ValueError(f"explain: labels must be in 0..{k - 1}, got {labels.min()}..{labels.max()}")

    # The nodes shown: maps (N, C, H, W) with more than one pixel; the rest are listed.
    maps, flat = [], []
    for path, layer, _, shape in nodes:
        c, h, w = (shape[1:] + (1, 1, 1))[:3] if len(shape) == 4 else (0, 0, 0)
        if len(shape) == 4 and h * w > 1:
            factor = min(math.ceil(max(h, w) / MAX_SIDE), min(h, w))  # a block fits in the map
            entry = {"path": path, "layer": " ".join(repr(layer).split()), "kind": type(layer).__name__,
                     "shape": [c, h, w], "shown": min(c, MAX_CHANNELS), "factor": factor,
                     "tile": [h // factor, w // factor], "maps": [], "ranges": []}  # fmt: skip
            maps.append(entry)
        else:
            flat.append({"path": path, "kind": type(layer).__name__, "shape": list(shape[1:])})
    palette = _palette(_FEATURE_CMAP, _MAP_LEVELS)
    logits = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, _BATCH):
            outputs = model.node_outputs(x[start : start + _BATCH], depth)
            logits.append(np.asarray(outputs[nodes[-1][0]], np.float64))
            for entry in maps:
                shown = np.asarray(outputs[entry["path"]][:, : entry["shown"]], np.float64)
                shown = _shrink(shown, entry["factor"])
                for one in shown:  # (shown, h, w): one sprite, the maps side by side
                    ranges = [[float(m.min()), float(m.max())] for m in one]
                    tiles = [_levels(m, lo, hi, _MAP_LEVELS) for m, (lo, hi) in zip(one, ranges, strict=True)]
                    entry["maps"].append(_png(np.concatenate(tiles, axis=1), palette))
                    entry["ranges"].append(ranges)
            del outputs
    finally:
        model.train(was_training)
    probabilities = softmax(np.concatenate(logits))
    predictions = probabilities.argmax(axis=1)
    shown_images = []
    for i in range(n):
        shown_images.append({
            "index": indices[i],
            "label": None if labels is None else int(labels[i]),
            "pred": int(predictions[i]),
            "probs": [float(p) for p in probabilities[i]],
            "input": _input_pixels(x[i], mean, std),
        })  # fmt: skip
    for image in shown_images:
        image["input"] = _png(image["input"])
    rgb = ["R", "G", "B"] if x.shape[1] == 3 else None  # the first conv's input channels, by name
    data = {
        "title": title or "numbacnn explain",
        "about": [[str(a), str(b)] for a, b in (about or [])],
        "classes": names,
        "inputShape": list(x.shape[1:]),
        "maxChannels": MAX_CHANNELS,
        "maxSide": MAX_SIDE,
        "featureColours": _stops(_FEATURE_CMAP),
        "filterColours": _stops(_FILTER_CMAP),
        "images": shown_images,
        "nodes": maps,
        "flat": flat,
        "filters": [  # the first conv layers at every depth (a collapsed block still has its own)
            _filter_entry(path, layer, rgb if i == 0 and layer.weight.data.shape[1] == 3 else None)
            for i, (path, layer) in enumerate(_first_convs(model.flat_nodes(x.shape), _FILTER_LAYERS))
        ],
        "graph": [{"path": "input", "kind": "input", "layer": "the image", "inputs": [],
                   "shape": list(x.shape[1:]), "params": 0}]
        + [{"path": path, "kind": type(layer).__name__, "layer": " ".join(repr(layer).split()),
            "inputs": list(inputs), "shape": list(shape[1:]), "params": int(layer.num_parameters())}
           for path, layer, inputs, shape in nodes],
    }  # fmt: skip
    return data, probabilities


def _template():
    return importlib.resources.files("numbacnn").joinpath("explain_template.html").read_text("utf-8")


def render_page(data):
    """The HTML of the page: the template with ``data`` (explain_data's dict) as JSON in a
    script element (every "<" escaped, so no text in it can close the element)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    page = _template()
    for marker, value in (("{{TITLE}}", html.escape(data["title"])), ("{{DATA_JSON}}", payload)):
        if page.count(marker) != 1:
            raise RuntimeError(f"explain_template.html must hold {marker} once")
        page = page.replace(marker, value)
    return page


def write_explain_page(model, images, labels=None, out="explain.html", *, class_names=None, mean=None,
                       std=None, depth=None, title=None, about=None, indices=None):  # fmt: skip
    """Write the explain page (see the module docstring) of ``model`` on ``images`` to
    ``out``, atomically (a temp file beside it renamed over it; its folder is created).

    The arguments are explain_data's (images: (N, C, H, W) float32 model inputs; labels:
    (N,) ints or None; mean, std: per-channel input normalisation, to show the images as
    they were; depth: levels of nesting expanded, None: all). Returns ``Explained(path,
    size, probabilities, predictions)``: the probabilities (N, K) and predicted classes
    the page shows. Raises explain_data's errors, and OSError when ``out`` cannot be
    written (nothing is left behind then)."""
    data, probabilities = explain_data(model, images, labels, class_names=class_names, mean=mean, std=std,
                                       depth=depth, title=title, about=about, indices=indices)  # fmt: skip
    page = render_page(data).encode("utf-8")
    atomic_write(out, lambda f: f.write(page))
    return Explained(os.fspath(out), len(page), probabilities, probabilities.argmax(axis=1))
