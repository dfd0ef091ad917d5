"""Draw a model's layer graph with matplotlib: ``numbacnn graph MODEL --out g.png`` and
``Graph.draw(input_shape, out)``.

One box per node, top to bottom in the scheduler's (topological) order, each with its
dotted name, layer, output shape (C x H x W, per image) and parameter count. An edge from
one node to the next is a short arrow; any other edge (a residual connection, a
downsample branch) is an arc on the right, so a ResNet's skips are visible at a glance.
Nested graphs (a ResNet's stages and blocks) are expanded down to ``depth`` levels; below
that a nested graph is one box.
"""

import numpy as np

from ._io import atomic_write
from .graph import _with_batch

__all__ = ["flat_nodes", "draw_graph"]


def flat_nodes(graph, input_shape, depth=None):
    """``graph.flat_nodes(input_shape, depth)`` (Graph.flat_nodes), with the arguments
    checked: ValueError for an input_shape that is not (C, H, W) or (N, C, H, W), or a
    depth below 1."""
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"draw: depth must be an int >= 1 (1: the top level only) or None, got {depth!r}")
    return graph.flat_nodes(_batch_shape(input_shape), depth)


def _batch_shape(input_shape):
    """(N, C, H, W) from (C, H, W) or (N, C, H, W); ValueError otherwise."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) not in (3, 4):
        raise ValueError(f"draw: input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    return _with_batch(shape)


def _label(path, layer, out_shape):
    kind = " ".join(repr(layer).split())  # one line
    kind = kind if len(kind) <= 72 else type(layer).__name__
    first = f"{path}: {kind}"
    first = first if len(first) <= 80 else first[:77] + "..."
    dims = "x".join(map(str, out_shape[1:]))
    params = layer.num_parameters()
    return f"{first}\n{dims}" + (f"   {params:,} params" if params else "")


def draw_graph(graph, input_shape, out=None, depth=None, title=None):
    """Draw ``graph`` (see the module docstring) for ``input_shape``; save it to ``out``
    (.png, .svg with its text as text, .pdf) if given. Returns the matplotlib Figure (made
    without pyplot: no backend is switched, no figure is left open). Raises ValueError for
    another suffix, a depth below 1 or an input_shape that is not (C, H, W) or (N, C, H,
    W), and the graph's own GraphError when ``input_shape`` does not fit it."""
    import os

    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if out is not None and os.path.splitext(os.fspath(out))[1].lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"draw: out must end in .png, .svg or .pdf, got {os.fspath(out)!r}")
    nodes = flat_nodes(graph, input_shape, depth)
    row = {"input": 0}
    for k, (path, _, _, _) in enumerate(nodes, start=1):
        row[path] = k
    height = 0.62 * (len(nodes) + 1) + 0.8
    fig = Figure(figsize=(7.5, height))
    ax = fig.add_subplot()
    box_w, box_h = 4.6, 0.46
    shape = _batch_shape(input_shape)
    labels = [("input", "x".join(map(str, shape[1:])))] + [
        (path, _label(path, layer, out_shape)) for path, layer, _, out_shape in nodes
    ]
    spans = []
    for path, text in labels:
        y = -row[path]
        colour = "#e8eef7" if path == "input" else "#fdf6e3"
        ax.add_patch(FancyBboxPatch((-box_w / 2, y - box_h / 2), box_w, box_h, boxstyle="round,pad=0.04",
                                    facecolor=colour, edgecolor="#555555", linewidth=0.8))  # fmt: skip
        ax.text(0, y, text, ha="center", va="center", fontsize=7.5, family="monospace")
    for path, _, inputs, _ in nodes:
        for source in inputs:
            a, b = row[source], row[path]
            if b == a + 1:  # the next box: a short arrow
                start, end, style = (0, -a - box_h / 2), (0, -b + box_h / 2), "arc3"
            else:  # a skip: an arc on the right, wider for longer spans
                spans.append(b - a)
                start, end = (box_w / 2, -a), (box_w / 2, -b)
                style = f"arc3,rad={-min(0.6, 0.25 + 0.03 * (b - a))}"
            colour = "#555555" if b == a + 1 else "#2a6fb0"
            arrow = FancyArrowPatch(start, end, connectionstyle=style, arrowstyle="-|>", mutation_scale=9,
                                    color=colour, linewidth=0.9)  # fmt: skip
            ax.add_patch(arrow)
    reach = box_w / 2 + 0.35 * max([3] + spans) ** 0.5 + 0.8
    ax.set_xlim(-box_w / 2 - 0.3, reach)
    ax.set_ylim(-len(nodes) - 0.7, 0.7)
    ax.axis("off")
    params = int(np.sum([layer.num_parameters() for _, layer, _, _ in nodes]))
    skips = "; edges that pass boxes by (skips, branches) in blue" if spans else ""
    ax.set_title(title or f"{len(nodes)} nodes, {params:,} parameters{skips}", fontsize=9)
    fig.tight_layout()
    if out is not None:  # atomically, as every file numbacnn writes (_io): a link is replaced, not followed
        suffix = os.path.splitext(os.fspath(out))[1].lower()[1:]
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG labels stay searchable text
            atomic_write(out, lambda f: fig.savefig(f, format=suffix, dpi=110))
    return fig
