"""What a trained model does: class probabilities for image files, the confusion matrix and
per-class accuracy of a test set (``numbacnn predict`` and ``numbacnn evaluate``).

    predict_files(model, files, preprocess, top_k) -> [(file, [(class index, probability)])]
    evaluate_predictions(model, x, y, num_classes) -> Evaluation(loss, accuracy, matrix, per_class)
    write_confusion(out_dir, evaluation, classes, extra) -> (png path, json path)

The confusion matrix counts test images by (true class, predicted class): row i, column j
is how many images of class i the model called j (scikit-learn's and torchmetrics'
convention); its diagonal over its row sums is the per-class accuracy (the recall).
"""

import json
import os
from typing import NamedTuple

import numpy as np

from . import functional as F
from . import kernels
from ._io import atomic_write
from .data.images import read_image
from .data.sources import normalize

__all__ = ["predict_files", "evaluate_predictions", "write_confusion", "per_class_dict",
           "Evaluation"]  # fmt: skip


def softmax(logits):
    """Row-wise softmax of logits (N, K), stable (max subtracted)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z.astype(np.float64))
    return e / e.sum(axis=1, keepdims=True)


def predict_files(model, files, preprocess, top_k=3):
    """The ``top_k`` most probable classes of each image file, as [(file, [(class index,
    probability), ...])], most probable first. ``preprocess``: a weights file's (read by
    numbacnn.bridges.weights.read_metadata). Each image is read with Pillow, converted
    to the checkpoint's channels, resized to its size (bilinear) when it differs, padded
    and normalised as the training images were. DataError names an unreadable file."""
    c, size = preprocess["channels"], tuple(preprocess["size"])
    was_training = model.training
    model.eval()
    try:
        out = []
        for f in files:
            x = normalize(
                read_image(f, c, size)[None], preprocess["pad"], preprocess["mean"], preprocess["std"]
            )
            p = softmax(model(x))[0]  # (K,)
            best = np.argsort(-p, kind="stable")[:top_k]
            out.append((f, [(int(k), float(p[k])) for k in best]))
    finally:
        model.train(was_training)
    return out


class Evaluation(NamedTuple):
    loss: float  # mean cross-entropy
    accuracy: float  # 0-1
    matrix: np.ndarray  # (K, K) int64: row = true class, column = predicted class
    per_class: np.ndarray  # (K,) accuracy of each true class (NaN for a class with no images)


def evaluate_predictions(model, x, y, num_classes, batch_size=1000):
    """Eval-mode loss, accuracy and confusion matrix of ``model`` on images x (N, C, H, W)
    and labels y (N,), in batches of ``batch_size``, on the model's device (the logits come
    back to the host per batch). Restores the model's mode."""
    was_training = model.training
    model.eval()
    be = kernels.get(model.device)  # a model on "cuda": each batch up, its logits back
    total, preds = 0.0, []
    try:
        for i in range(0, len(y), batch_size):
            xb = x[i : i + batch_size]
            logits = be.to_host(model(be.ascontiguous(xb)))
            total += float(F.cross_entropy(logits, y[i : i + batch_size])) * len(logits)
            preds.append(np.argmax(logits, axis=1))
    finally:
        model.train(was_training)
    pred = np.concatenate(preds)
    matrix = np.bincount(y * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, -1)
    rows = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(matrix) / rows
    return Evaluation(total / len(y), float(np.mean(pred == y)), matrix.astype(np.int64), per_class)


def per_class_dict(classes, per_class):
    """{class name: accuracy or None (a class with no test images)}, JSON-able."""
    return {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, per_class, strict=True)}


def write_confusion(out_dir, evaluation, classes, extra=None):
    """OUT/confusion.png (the matrix as a heat map, counts in the cells) and
    OUT/confusion.json (``classes``, ``matrix`` rows = true class, ``per_class_accuracy``,
    and ``extra``), both written atomically. Returns their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m, k = evaluation.matrix, len(classes)
    json_path, png_path = os.path.join(out_dir, "confusion.json"), os.path.join(out_dir, "confusion.png")
    per_class = {
        c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, evaluation.per_class, strict=True)
    }
    doc = dict(extra or {}, classes=list(classes), matrix=m.tolist(), per_class_accuracy=per_class,
               rows="true class", columns="predicted class")  # fmt: skip
    atomic_write(json_path, lambda f: f.write((json.dumps(doc, indent=2) + "\n").encode("utf-8")))

    side = min(2.0 + 0.45 * k, 24.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ticks = np.arange(k)
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if k > 10 else 0)
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix: accuracy {100 * evaluation.accuracy:.2f}% on {int(m.sum())} images")
    if k <= 30:  # counts fit in the cells
        for i in range(k):
            for j in range(k):
                dark = m[i, j] > 0.6 * m.max()
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png"))
    return png_path, json_path
