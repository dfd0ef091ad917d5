"""`numbacnn explain` (issue 10, item 5): one self-contained HTML page of a checkpoint's
network, filters, feature maps and predictions, checked in a real headless browser: Debian's
chromium (apt-get install chromium; .ci/run installs it) driven by Playwright (the `test`
extra; its own browser downloads are never used). In CI (CI=true) a missing chromium or
Playwright fails these tests; elsewhere they are skipped with the reason."""

import base64
import io
import os
import re
import shutil
import time

import numpy as np
import pytest
from conftest import needs_mnist

from numbacnn.cli import main
from numbacnn.explain import write_explain_page
from numbacnn.graph import Sequential
from numbacnn.layers import Conv2d, Flatten, Linear, ReLU
from numbacnn.models import build_model

CHROMIUM = shutil.which("chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update"]  # fmt: skip


def _playwright_missing():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: pip install -e '.[test]'"
    return None if CHROMIUM else "chromium is not installed: apt-get install chromium"


# In CI the browser must be there: a missing one fails (in the browser fixture) instead of skipping.
needs_browser = pytest.mark.skipif(
    os.environ.get("CI") != "true" and _playwright_missing() is not None, reason=str(_playwright_missing())
)


@pytest.fixture(scope="module")
def browser():
    missing = _playwright_missing()
    if missing:
        pytest.fail(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def _softmax(z):
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _wait_until(page, expression, timeout):
    """Poll a JavaScript expression (or arrow function) from here until it is true, within
    timeout ms. (Playwright's wait_for_function polls inside the page with `new Function`,
    which the page's Content-Security-Policy forbids: a page that is not ready at the first
    check then fails with an EvalError; page.evaluate is not bound by the page's policy.)"""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} ms: {expression}"
        time.sleep(0.05)


def _open(browser, path):
    """The page at file://path, fully drawn; with the console errors, page errors, failed
    requests and every request URL it made."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seen = {"errors": [], "failed": [], "requests": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("requestfailed", lambda r: seen["failed"].append(r.url))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.goto(path.as_uri())
    _wait_until(page, "document.body.dataset.shown === '0'", 30_000)
    return page, seen


def _shown(page):
    """What the page shows for its selected image: predicted class (index, name), true
    label, and the probabilities of the bars."""
    return page.evaluate(
        """() => ({
            pred: Number(document.getElementById('pred-name').dataset.class),
            predName: document.getElementById('pred-name').textContent,
            label: Number(document.getElementById('true-name').dataset.class),
            probs: [...document.querySelectorAll('#bars [data-p]')].map((b) => Number(b.dataset.p)),
        })"""
    )


def _pixels(page, node):
    """The RGB pixels of a node's feature-map canvas (H, W, 3), read back as a PNG."""
    from PIL import Image

    uri = page.evaluate("(node) => document.querySelector(`canvas[data-node='${node}']`).toDataURL()", node)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def _check_page(page, seen, path, probabilities, labels, classes, nodes, screenshot):
    """Every image through the page's thumbnails: the probabilities, predicted class and
    true label it shows are the model's own; the maps change with the image; nothing was
    requested, nothing failed; a screenshot of the last image is saved."""
    thumbs = page.locator(".thumb")
    assert thumbs.count() == len(labels)
    assert page.locator("#graph [data-graph-node]").count() == nodes + 1  # the input too
    first_map = page.locator("canvas[data-node]").first.get_attribute("data-node")
    before = _pixels(page, first_map)
    assert len(np.unique(before.reshape(-1, 3), axis=0)) > 8, "the first feature maps look blank"
    for i in range(len(labels)):
        if i:
            thumbs.nth(i).click()
            _wait_until(page, f"document.body.dataset.shown === '{i}'", 30_000)
        shown = _shown(page)
        assert abs(sum(shown["probs"]) - 1) < 1e-6
        np.testing.assert_allclose(shown["probs"], probabilities[i], atol=1e-6)
        assert shown["pred"] == int(np.argmax(probabilities[i])) and shown["label"] == int(labels[i])
        assert shown["predName"] == classes[shown["pred"]]
        if i == 1:
            after = _pixels(page, first_map)
            assert after.shape == before.shape and (after != before).any(), "the maps did not change"
    page.keyboard.press("ArrowLeft")  # the arrow keys step through the images too
    _wait_until(page, f"document.body.dataset.shown === '{len(labels) - 2}'", 30_000)
    assert page.locator(f'.thumb[data-image="{len(labels) - 2}"]').get_attribute("aria-pressed") == "true"
    page.screenshot(path=str(screenshot))
    print(f"screenshot: {screenshot}")
    assert seen["errors"] == [] and seen["failed"] == []
    assert set(seen["requests"]) <= {path.as_uri()}, "the page asked for something besides itself"
    # nothing in the file points outside it (the one URL is SVG's namespace name)
    assert set(re.findall(r"https?://[^\s\"')]+", path.read_text())) <= {"http://www.w3.org/2000/svg"}


@needs_mnist
@needs_browser
def test_lenet5_page_in_chromium(mnist_run, browser, tmp_path, capsys):
    """The real LeNet-5 checkpoint (2 epochs on MNIST): the page of its first 10 test digits,
    each prediction the model's own (numbacnn.load, MNIST padded and normalised here)."""
    import numbacnn
    from numbacnn.data import load_mnist, preprocess

    checkpoint, out = mnist_run / "checkpoint.npz", tmp_path / "pages" / "explain.html"  # a new folder
    assert main(["explain", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out} (lenet5: test images 0..9 of mnist, ")
    assert os.path.getsize(out) < 1_000_000  # about 0.2 MB
    model = numbacnn.load(str(checkpoint))
    model.eval()
    mnist = load_mnist()
    probabilities = _softmax(model(preprocess(mnist["x_test"][:10], pad=2)).astype(np.float64))
    page, seen = _open(browser, out)
    assert page.locator("canvas[data-node]").count() == 6  # conv1 .. pool2; conv3 on is 1x1 or flat
    assert page.locator("canvas[data-filters]").count() == 2  # conv1 and conv2
    assert "conv3 (120×1×1)" in page.locator("#maps-note").text_content()
    page.locator('#graph [data-graph-node="pool2"]').click()  # a node's box links to its maps
    _wait_until(
        page,
        "() => { const box = document.querySelector('[data-node-card=\"pool2\"]').getBoundingClientRect();"
        " return box.top > 90 && box.bottom <= innerHeight; }",  # in view, below the sticky thumbnails
        timeout=10_000,
    )
    _check_page(page, seen, out, probabilities, mnist["y_test"][:10], [str(d) for d in range(10)], 12,
                tmp_path / "lenet5.png")  # fmt: skip


@needs_browser
def test_resnet_cifar_page_in_chromium(browser, tmp_path, capsys):
    """A resnet_cifar trained one step on small RGB images of three named classes (an npz):
    colour inputs, class names, a test split smaller than the 10 images asked for, channels
    past the first 16 left out (and said so), skip connections in the diagram."""
    from numbacnn.recipe import load_inputs, open_dataset

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.integers(0, 60, (60, 3, 32, 32), dtype=np.uint8)
    for k in range(3):  # a bright square in the red, green or blue channel: a picture per class
        x[y == k, k, 8:24, 8:24] += np.uint8(150)
    np.savez(tmp_path / "shapes.npz", x=x, y=y, classes=np.array(["red", "green", "blue"]))
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet_cifar", "--dataset", f"npz:{tmp_path / 'shapes.npz'}",
                 "--epochs", "1", "--batch-size", "16", "--limit-train", "16", "--no-progress",
                 "--out", str(run)]) == 0  # fmt: skip
    out = tmp_path / "resnet.html"
    assert main(["explain", "--checkpoint", str(run / "checkpoint.npz"), "--out", str(out)]) == 0
    source = open_dataset(f"npz:{tmp_path / 'shapes.npz'}", training=False)
    import numbacnn
    from numbacnn.bridges.weights import read_metadata

    _, _, images, labels = load_inputs(source, read_metadata(str(run / "checkpoint.npz"))["preprocess"], 0)
    n = len(labels)
    assert 1 < n < 10 and f"test images 0..{n - 1} of npz:" in capsys.readouterr().out
    model = numbacnn.load(str(run / "checkpoint.npz"))
    model.eval()
    probabilities = _softmax(model(images).astype(np.float64))
    page, seen = _open(browser, out)
    assert page.locator("#bars .name").all_text_contents() == ["red", "green", "blue"]
    assert page.locator("canvas[data-node]").count() == 70
    assert page.locator("#graph path.edge.skip").count() == 11  # 9 blocks, 2 with a downsample branch
    assert page.locator("[data-node-card='layer3.0.conv1'] .warn").text_content() == "first 16 of 64 channels"
    _check_page(page, seen, out, probabilities, labels, ["red", "green", "blue"], 73,
                tmp_path / "resnet_cifar.png")  # fmt: skip
    assert '"inputNames":["R","G","B"]' in out.read_text()  # conv1's kernels named by colour

    # the data moved: --dataset names it; data that no longer fits is one line; the page never
    # overwrites anything but a page
    os.replace(tmp_path / "shapes.npz", tmp_path / "moved.npz")
    ck = str(run / "checkpoint.npz")
    assert (
        main(["explain", "--checkpoint", ck, "--dataset", f"npz:{tmp_path / 'moved.npz'}", "--out", str(out)])
        == 0
    )
    np.savez(tmp_path / "small.npz", x=x[:, :, :28, :28], y=y, classes=np.array(["red", "green", "blue"]))
    before = (run / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    for argv, message in [
        (["--dataset", f"npz:{tmp_path / 'small.npz'}"], "has 28x28 images; "),
        (["--out", ck], "the page is written as .html (nothing else is overwritten)"),
        (["--out", ""], "argument --out: expected a path, got an empty one"),
    ]:
        assert main(["explain", "--checkpoint", ck, *argv]) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert (run / "checkpoint.npz").read_bytes() == before


def test_node_outputs_are_the_forward_pass_node_by_node():
    """Graph.node_outputs: flat_nodes' paths, in order, after the input; the last is forward's
    output (bit for bit layer by layer; to rounding when forward folds the eval-mode batch
    norms into the convs); depth 2 keeps the blocks whole."""
    model = build_model("resnet_cifar")
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    outputs = model.node_outputs(x)
    assert list(outputs) == ["input"] + [path for path, *_ in model.flat_nodes(x.shape)]
    np.testing.assert_allclose(outputs["fc"], model(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(outputs["fc"], model.set_fusion(False)(x))
    assert outputs["layer2.0.downsample.1"].shape == (2, 32, 16, 16)
    blocks = model.node_outputs(x, depth=2)
    assert list(blocks)[4:7] == ["layer1.0", "layer1.1", "layer1.2"]
    np.testing.assert_array_equal(blocks["layer1.2"], outputs["layer1.2.relu2"])


def test_write_explain_page_api(tmp_path):
    """The Python API on a model of one's own: names, no labels, atomic write into a new
    folder; bad arguments are named."""
    model = Sequential(("conv", Conv2d(2, 20, 3)), ("relu", ReLU()), ("flatten", Flatten()),
                       ("fc", Linear(20 * 6 * 6, 3)))  # fmt: skip
    x = np.random.default_rng(1).random((3, 2, 8, 8), dtype=np.float32)
    out = tmp_path / "new" / "page.html"
    shown = write_explain_page(model, x, None, out, class_names=["a", "b", "c"], title="mine")
    assert shown.path == str(out) and shown.size == os.path.getsize(out)
    np.testing.assert_allclose(shown.probabilities.sum(axis=1), 1)
    assert list(shown.predictions) == list(np.argmax(model(x), axis=1)) and model.training
    text = out.read_text()
    assert "<title>mine</title>" in text and '"shown":16' in text and os.listdir(out.parent) == ["page.html"]
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        write_explain_page(model, x, None, out, class_names=["a", "b"])
    with pytest.raises(ValueError, match="images must be float32"):
        write_explain_page(model, x.astype(np.float64), None, out)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        write_explain_page(model, x, [0, 1, 3], out)


def test_explain_mistakes_are_one_line(tmp_path, capsys):
    """A missing checkpoint, an --out that is a folder, --images 0 and a weights file are
    option mistakes (exit 2); a file that is not a checkpoint is a bad checkpoint (exit 1)."""
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a checkpoint")
    (tmp_path / "weights.safetensors").write_bytes(b"{}")
    cases = [
        (["--checkpoint", str(tmp_path / "missing.npz")], 2, "argument --checkpoint: "),
        (["--checkpoint", str(junk), "--out", str(tmp_path)], 2, f"--out {str(tmp_path)!r} is a directory"),
        (["--checkpoint", str(junk), "--images", "0"], 2, "argument --images: expected an integer between 1"),
        (["--checkpoint", str(tmp_path / "weights.safetensors")], 2, "is not a checkpoint.npz"),
        (["--checkpoint", str(junk), "--out", str(tmp_path / "p.html")], 1, "bad checkpoint: "),
    ]
    for argv, code, message in cases:
        assert main(["explain", *argv]) == code, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("numbacnn: error: ") and message in err[0], (argv, err)
    assert not (tmp_path / "p.html").exists()


@needs_mnist
def test_outputs_replace_a_link_never_the_file_it_names(mnist_run, tmp_path, capsys):
    """explain, graph and bench write atomically (numbacnn._io): an --out that is a symlink to
    a checkpoint is replaced by the page, the checkpoint is kept; a FIFO is refused before
    any work (one line, exit 2)."""
    ck = mnist_run / "checkpoint.npz"
    before = ck.read_bytes()
    for name in ("page.html", "graph.png"):
        os.symlink(ck, tmp_path / name)
    assert main(["explain", "--checkpoint", str(ck), "--out", str(tmp_path / "page.html")]) == 0
    assert main(["graph", "lenet5", "--out", str(tmp_path / "graph.png")]) == 0
    assert ck.read_bytes() == before
    assert not os.path.islink(tmp_path / "page.html") and not os.path.islink(tmp_path / "graph.png")
    assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    os.mkfifo(tmp_path / "fifo.png")
    os.mkfifo(tmp_path / "fifo.html")
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "bench.json")
    for argv in (
        ["graph", "lenet5", "--out", str(tmp_path / "fifo.png")],
        ["explain", "--checkpoint", str(ck), "--out", str(tmp_path / "fifo.html")],
        ["bench", "--quick", "--out", str(tmp_path / "b")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "exists and is not a file (numbacnn writes only files)" in err[0], err
