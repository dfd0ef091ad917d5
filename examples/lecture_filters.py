"""The lecture's hand-made convolution kernels, applied with numbacnn's conv2d.

Three classic 3x3 filters from the lecture are run over matplotlib's sample photo of
Grace Hopper with ``numbacnn.functional.conv2d(..., padding="same")``:

    edge detection        sharpen               Gaussian blur
    [[-1, -1, -1],        [[ 0, -1,  0],        1/16 [[1, 2, 1],
     [-1,  8, -1],         [-1,  5, -1],              [2, 4, 2],
     [-1, -1, -1]]         [ 0, -1,  0]]              [1, 2, 1]]

Top row: the colour photo, filtered per channel with a *depthwise* convolution
(``groups=3``: weight (3, 1, 3, 3), each RGB channel convolved with its own copy of the
kernel). Middle row: the grayscale photo, (1, 1, H, W) with weight (1, 1, 3, 3).
Bottom row: a zoom into the grayscale results, where a 3x3 blur/sharpen is visible.
The edge kernel sums to 0 (flat regions -> 0, so we show |response|); sharpen and blur
sum to 1 (flat regions unchanged). "same" zero-pads one pixel, so the edge filter also
lights up the image border.

    python examples/lecture_filters.py --out out/lecture_filters.png
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.cbook as cbook  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from numbacnn.functional import conv2d  # noqa: E402

KERNELS = {
    "edge detection": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float32),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32),
    "Gaussian blur": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16,
}


#: Region shown in the zoom row (rows, cols of the 600x512 photo): eyes and glasses.
ZOOM = (slice(140, 240), slice(150, 290))


def load_photo():
    """Grace Hopper as float32 RGB in [0, 1], (H, W, 3)."""
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = plt.imread(path)  # (H, W, 3) uint8
    return img.astype(np.float32) / 255.0


def to_gray(rgb):
    """(H, W, 3) -> (H, W) luminance (ITU-R BT.601 weights)."""
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def filter_gray(gray, kernel):
    """gray (H, W), kernel (3, 3) -> (H, W) via conv2d on (1, 1, H, W)."""
    x = gray[None, None]  # (1, 1, H, W)
    w = kernel[None, None]  # (C_out=1, C_in=1, 3, 3)
    return conv2d(x, w, padding="same")[0, 0]


def filter_rgb(rgb, kernel):
    """rgb (H, W, 3), kernel (3, 3) -> (H, W, 3): depthwise conv, groups=3."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])  # (1, 3, H, W)
    w = np.ascontiguousarray(np.broadcast_to(kernel, (3, 1, 3, 3)))  # (C_out=3, C_in/groups=1, 3, 3)
    y = conv2d(x, w, padding="same", groups=3)  # (1, 3, H, W)
    return y[0].transpose(1, 2, 0)


def for_display(name, img):
    """Map a filter response to [0, 1] for imshow."""
    if name == "edge detection":
        img = np.abs(img)
        img = img / max(float(np.percentile(img, 99.5)), 1e-6)
    return np.clip(img, 0.0, 1.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("out", "lecture_filters.png"), help="output PNG path")
    args = ap.parse_args(argv)

    rgb = load_photo()  # (H, W, 3)
    gray = to_gray(rgb)  # (H, W)
    gray_kw = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    results = {
        "colour": [rgb] + [filter_rgb(rgb, k) for k in KERNELS.values()],  # (H, W, 3) each
        "gray": [gray] + [filter_gray(gray, k) for k in KERNELS.values()],  # (H, W) each
    }
    names = ["original"] + list(KERNELS)
    # rows: colour (depthwise), grayscale, and a zoom into the grayscale results where
    # the 3x3 blur/sharpen are visible at screen resolution
    rows = [
        ("colour, groups=3", results["colour"], {}),
        ("grayscale", results["gray"], gray_kw),
        ("grayscale, zoom", [im[ZOOM] for im in results["gray"]], dict(gray_kw, interpolation="nearest")),
    ]

    fig, axes = plt.subplots(
        len(rows), len(names), figsize=(3.6 * len(names), 3.9 * len(rows)), layout="constrained"
    )
    for r, (label, images, kw) in enumerate(rows):
        for c, (name, img) in enumerate(zip(names, images, strict=True)):
            shown = img if c == 0 else for_display(name, img)
            axes[r, c].imshow(shown, **kw)
            suffix = " |response|" if name == "edge detection" else ""
            axes[r, c].set_title(f"{name}{suffix}\n({label})", fontsize=10)
            axes[r, c].set_axis_off()
    fig.suptitle('Lecture kernels via numbacnn.functional.conv2d(x, w, padding="same")')

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
