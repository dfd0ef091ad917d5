"""`numbacnn graph MODEL` and Graph.draw: the layer DAG drawn with matplotlib (issue 10,
item 3)."""

import pytest
from PIL import Image

from numbacnn.cli import main
from numbacnn.drawing import flat_nodes
from numbacnn.models import build_model


def test_resnet_cifar_flattened_with_its_skips():
    """Expanded fully, resnet_cifar's 9 blocks each join their input back in an Add: 7 identity
    skips, and the two stride-2 blocks route theirs through a downsample branch drawn after
    bn2, so each gives 2 arcs (into the branch, and bn2 over it into the Add): 11 arcs; at
    depth 2 the blocks are boxes and nothing skips."""
    nodes = flat_nodes(build_model("resnet_cifar"), (1, 32, 32))
    position = {"input": -1, **{path: k for k, (path, _, _, _) in enumerate(nodes)}}
    skips = [
        (src, path) for path, _, inputs, _ in nodes for src in inputs if position[path] != position[src] + 1
    ]
    adds = [(path, inputs) for path, layer, inputs, _ in nodes if type(layer).__name__ == "Add"]
    assert len(adds) == 9 and all(len(inputs) == 2 for _, inputs in adds)
    assert len(skips) == 11 and ("layer1.2.relu2", "layer2.0.downsample.0") in skips
    assert ("layer2.0.bn2", "layer2.0.add") in skips and ("layer1.0.relu2", "layer1.1.add") in skips
    assert nodes[-1][0] == "fc" and nodes[-1][3] == (1, 10)
    blocks = flat_nodes(build_model("resnet_cifar"), (1, 32, 32), depth=2)
    assert [p for p, *_ in blocks][3:6] == ["layer1.0", "layer1.1", "layer1.2"] and len(blocks) == 15


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_numbacnn_graph_writes_a_picture(tmp_path, capsys, suffix):
    out = tmp_path / f"g.{suffix}"
    assert main(["graph", "resnet_cifar", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out} (resnet_cifar, input 1x32x32)\n"
    if suffix == "png":
        width, height = Image.open(out).size
        assert width > 600 and height > 60 * 73  # one row per node, tall and readable
    else:
        assert "layer3.2.add: Add()" in out.read_text()


def test_numbacnn_graph_mistakes_are_one_line(tmp_path, capsys):
    assert main(["graph", "lenet5", "--out", str(tmp_path / "g.txt")]) == 2
    assert main(["graph", "lenet5", "--input-shape", "1", "8", "8", "--out", str(tmp_path / "g.png")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].endswith("the picture is written as .png, .svg or .pdf")
    assert errors[1].startswith("numbacnn: error: lenet5 does not accept input shape (1, 8, 8)")


def test_draw_checks_its_arguments_and_leaves_matplotlib_alone(tmp_path):
    """An empty Sequential is a pass-through (as in forward); bad shapes, suffixes and depths
    are named; no pyplot figure is left open and the backend is not switched; --out's
    directory is created, a directory given as --out is one line."""
    import matplotlib
    import matplotlib.pyplot as plt

    from numbacnn.graph import Sequential
    from numbacnn.layers import Conv2d, Flatten, Linear

    backend, figures = matplotlib.get_backend(), len(plt.get_fignums())
    net = Sequential(
        ("stem", Conv2d(1, 2, 3)), ("empty", Sequential()), ("flat", Flatten()), ("fc", Linear(392, 3))
    )
    net.draw((1, 16, 16), tmp_path / "e.png")
    assert [p for p, *_ in flat_nodes(net, (1, 16, 16))] == ["stem", "flat", "fc"]
    for args, kwargs, words in [
        (((16, 16),), {}, "input_shape must be"),
        (((1, 16, 16),), {"out": tmp_path / "a.jpg"}, "out must end in .png, .svg or .pdf"),
        (((1, 16, 16),), {"depth": 0}, "depth must be an int >= 1"),
    ]:
        with pytest.raises(ValueError, match=words):
            net.draw(*args, **kwargs)
    assert matplotlib.get_backend() == backend and len(plt.get_fignums()) == figures
    assert main(["graph", "lenet5", "--out", str(tmp_path / "new" / "dir" / "g.png")]) == 0
    assert (tmp_path / "new" / "dir" / "g.png").exists()
    assert main(["graph", "lenet5", "--out", str(tmp_path / "new")]) == 2
