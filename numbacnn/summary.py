"""The layer table of `Graph.summary` (`numbacnn summary MODEL` prints it): one row per node
with its output shape per sample (H x W x C, as the lecture writes it), its parameter count
and its multiply-accumulates, then the totals. It reproduces the lecture's complexity tables
(AlexNet, VGG): the lecture's "FLOP" column counts MACs.
"""

__all__ = ["Summary", "format_shape", "human"]


class Summary:
    """The table returned by Graph.summary: `rows` (dicts with name, layer, output_shape,
    params, macs), `total_params`, `total_macs`, and the printed `text`."""

    def __init__(self, input_shape, rows):
        self.input_shape, self.rows = tuple(input_shape), rows
        self.total_params = sum(r["params"] for r in rows)
        self.total_macs = sum(r["macs"] for r in rows)
        self.text = self._format()

    def row(self, name):
        return next(r for r in self.rows if r["name"] == name)

    def _format(self):
        head = ("name", "layer", "output (H x W x C)", "#params", "MACs")
        body = [("input", "", format_shape(self.input_shape), "", "")]
        body += [
            (r["name"], r["layer"], format_shape(r["output_shape"]), f"{r['params']:,}", f"{r['macs']:,}")
            for r in self.rows
        ]
        total = ("total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}")
        widths = [max(len(line[k]) for line in [head, total] + body) for k in range(5)]

        def fmt(line):
            return "  ".join(
                c.ljust(w) if k < 3 else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths, strict=True))
            )

        rule = "-" * len(fmt(head))
        lines = [fmt(head), rule] + [fmt(b) for b in body] + [rule, fmt(total)]
        lines.append(
            f"params: {human(self.total_params)}   MACs: {human(self.total_macs)} "
            f"(batch {self.input_shape[0]}; the lecture's 'FLOP' column counts MACs)"
        )
        return "\n".join(lines)

    def __str__(self):
        return self.text

    __repr__ = __str__


def format_shape(shape):
    """Per-sample shape as the lecture writes it: (N, C, H, W) -> "H x W x C", (N, F) -> "F"."""
    shape = tuple(shape)[1:]
    if len(shape) == 3:
        c, h, w = shape
        shape = (h, w, c)
    return " x ".join(str(d) for d in shape)


def human(n):
    """46_787_978 -> '46.8M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
