"""Graph and Sequential: named nodes, ONE topological order, forward in that order,
backward in the reversed order. This is the only home of backprop order.

    g = Graph(input_name="x")
    g.add("conv1", Conv2d(3, 8, 3, padding=1))            # inputs default to the last node
    g.add("relu1", ReLU())
    g.add("conv2", Conv2d(8, 8, 3, padding=1))
    g.add("sum", Add(), inputs=["conv2", "x"])           # x fans out: residual shortcut
    g.output = "sum"                                     # default: the last node added

    y = g(x); dx = g.backward(dy)

The scheduler in three lines (micrograd spirit):
  * `order` is a topological sort of the nodes (Kahn's algorithm, ties broken by insertion
    order, so a graph written in execution order runs in exactly that order); computed once;
  * forward: for each node in `order`, y[node] = layer(*[y[i] for i in node.inputs]);
  * backward: for each node in reversed(`order`), dxs = layer.backward(grad[node]) and each
    dx is ADDED to grad[input]: a value that fans out (x above) receives the sum of the
    gradients of all its consumers. The sum is `functional.add` (out of place, because two
    dxs may be the same array: Add.backward returns (dy, dy); and backend-agnostic).

A Graph is itself a Module with one input, so blocks (e.g. a ResNet BasicBlock) are Graphs
nested in Graphs. Node names are the torch-style names of parameters: a node "layer1"
holding a Sequential whose node "0" holds a block whose node "conv1" holds a Conv2d gives
"layer1.0.conv1.weight". Parameters come out in node insertion order (torch's registration
order), which is what the models rely on for parity with torch.

Validation, every message naming the node: duplicate names and wrong input counts at
`add`; unknown inputs and cycles when the order is computed (first forward, `check`, or
`summary`); shape mismatches by shape inference in `check(input_shape)` (also run by
`summary`), reported with the dotted path of the failing node.
"""
import heapq

from numbacnn import functional as F

from numbacnn.layers import Module


class GraphError(ValueError):
    """A structural or shape error in a Graph; `path` is the dotted name of the node."""

    def __init__(self, path, detail):
        self.path, self.detail = path, detail
        super().__init__(f"node '{path}': {detail}")


class Graph(Module):
    """A directed acyclic graph of named layers with one input and one output."""

    def __init__(self, input_name="x"):
        super().__init__()
        self.input_name = input_name
        self._inputs = {}       # node name -> tuple of input names (layers live in _modules)
        self._output = None
        self._order = None      # cached topological order

    # ---- building -----------------------------------------------------------------------
    def add(self, name, layer, inputs=None):
        """Add node `name` computing layer(*inputs). `inputs` defaults to [last node added]
        (or the graph input for the first node). Inputs may name nodes added later; they
        are resolved when the order is computed. Returns self."""
        if not isinstance(name, str) or not name or "." in name:
            raise GraphError(str(name), "node names must be non-empty strings without '.'")
        if name == self.input_name:
            raise GraphError(name, f"the name is the graph input's name ('{self.input_name}')")
        if name in self._inputs:
            raise GraphError(name, "duplicate node name")
        if not isinstance(layer, Module):
            raise GraphError(name, f"layer must be a numbacnn Module, got {type(layer).__name__}")
        for other, existing in self._modules.items():
            if existing is layer:
                raise GraphError(name, f"this layer instance is already node '{other}' (a layer caches "
                                       f"its inputs, so use one instance per node)")
        if inputs is None:
            inputs = [self.last_node if self._inputs else self.input_name]
        elif isinstance(inputs, str):
            inputs = [inputs]
        inputs = tuple(inputs)
        if len(inputs) != layer.num_inputs:
            raise GraphError(name, f"{layer!r} takes {layer.num_inputs} input(s), got {len(inputs)}: {list(inputs)}")
        self._inputs[name] = inputs
        self._modules[name] = layer
        self._order = None
        return self

    @property
    def last_node(self):
        return next(reversed(self._inputs)) if self._inputs else None

    @property
    def output(self):
        """The output node's name (default: the last node added)."""
        return self._output if self._output is not None else self.last_node

    @output.setter
    def output(self, name):
        self._output = name
        self._order = None

    def __getitem__(self, name):
        return self._modules[name]

    def __len__(self):
        return len(self._inputs)

    def nodes(self):
        """[(name, layer, inputs)] in insertion order."""
        return [(n, self._modules[n], self._inputs[n]) for n in self._inputs]

    # ---- the scheduler --------------------------------------------------------------------
    @property
    def order(self):
        """The topological order of the nodes (computed once, then cached)."""
        if self._order is None:
            self._order = self._topological_order()
        return self._order

    def _topological_order(self):
        """Kahn's algorithm; among ready nodes, the earliest inserted runs first."""
        if not self._inputs:
            raise GraphError(self.input_name, "the graph has no nodes")
        if self.output not in self._inputs:
            raise GraphError(str(self.output), "the output is not a node of the graph")
        index = {name: i for i, name in enumerate(self._inputs)}
        consumers = {name: [] for name in self._inputs}
        missing = {}  # node -> number of inputs not yet computed
        for name, inputs in self._inputs.items():
            for i in inputs:
                if i != self.input_name and i not in self._inputs:
                    raise GraphError(name, f"unknown input '{i}' (nodes: {list(self._inputs)}, "
                                           f"graph input: '{self.input_name}')")
            node_inputs = [i for i in inputs if i != self.input_name]
            missing[name] = len(node_inputs)
            for i in node_inputs:
                consumers[i].append(name)
        ready = [index[n] for n in self._inputs if missing[n] == 0]
        heapq.heapify(ready)
        names = list(self._inputs)
        order = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for c in consumers[name]:
                missing[c] -= 1
                if missing[c] == 0:
                    heapq.heappush(ready, index[c])
        if len(order) < len(names):
            loop = self._cycle_path(set(names) - set(order))
            raise GraphError(loop[0], "cycle: " + " -> ".join(loop))
        return order

    def _cycle_path(self, stuck):
        """Follow inputs inside the stuck set until a node repeats: that loop is a cycle."""
        node, seen = sorted(stuck, key=list(self._inputs).index)[0], []
        while node not in seen:
            seen.append(node)
            node = next(i for i in self._inputs[node] if i in stuck)
        loop = seen[seen.index(node):] + [node]
        return list(reversed(loop))  # in data-flow direction

    def forward(self, x):
        """Run every node in topological order; return the output node's value."""
        self._ran_forward = True
        values = {self.input_name: x}
        for name in self.order:
            layer = self._modules[name]
            try:
                values[name] = layer(*[values[i] for i in self._inputs[name]])
            except (ValueError, TypeError) as e:
                raise _with_node(e, name, layer) from e
        return values[self.output]

    def backward(self, dy):
        """Reverse order; gradients of a value consumed by several nodes are summed."""
        if not getattr(self, "_ran_forward", False):
            raise GraphError(str(self.output), "backward() called before forward(): run y = model(x) "
                                               "first (each layer keeps what its backward needs)")
        grads = {self.output: dy}
        for name in reversed(self.order):
            if name not in grads:
                continue  # the output does not depend on this node
            layer = self._modules[name]
            try:
                dxs = layer.backward(grads.pop(name))
            except (ValueError, TypeError) as e:
                raise _with_node(e, name, layer) from e
            if layer.num_inputs == 1:
                dxs = (dxs,)
            for i, dx in zip(self._inputs[name], dxs):
                grads[i] = F.add(grads[i], dx) if i in grads else dx  # out of place: dxs may alias
        if self.input_name not in grads:
            raise GraphError(str(self.output), f"the output does not depend on the graph input '{self.input_name}'")
        return grads[self.input_name]

    # ---- shape inference and summary --------------------------------------------------------
    def check(self, input_shape):
        """Shape inference from `input_shape` (batch axis included; a 3-tuple (C, H, W) gets
        N = 1). Returns {name: output shape} in order; raises GraphError naming the node
        (dotted path for nested graphs) on unknown inputs, cycles and shape mismatches."""
        shapes = {self.input_name: _with_batch(input_shape)}
        for name in self.order:
            layer = self._modules[name]
            try:
                shapes[name] = tuple(layer.output_shape(*[shapes[i] for i in self._inputs[name]]))
            except GraphError as e:
                raise GraphError(f"{name}.{e.path}", e.detail) from None
            except (ValueError, TypeError) as e:
                raise GraphError(name, str(e)) from None
        return {n: shapes[n] for n in self.order}

    def output_shape(self, input_shape):
        return self.check(input_shape)[self.output]

    def macs(self, input_shape):
        shapes = self.check(input_shape)
        shapes[self.input_name] = _with_batch(input_shape)
        return sum(self._modules[n].macs(*[shapes[i] for i in self._inputs[n]]) for n in self.order)

    def summary(self, input_shape, max_depth=None, print_table=True):
        """Print and return the layer table: one row per node (nested graphs expanded into
        dotted names, down to `max_depth` levels if given): name, layer, output shape (per
        sample, H x W x C as in the lecture), #params, MACs, then totals.

        MACs = multiply-accumulates of conv and linear layers for the given batch (use
        N = 1 for per-image numbers); the lecture's "FLOP" column counts the same thing."""
        input_shape = _with_batch(input_shape)
        rows = []
        self._summary_rows(input_shape, "", 1, max_depth, rows)
        table = Summary(input_shape, rows)
        if print_table:
            print(table)
        return table

    def _summary_rows(self, input_shape, prefix, depth, max_depth, rows):
        shapes = self.check(input_shape)
        shapes[self.input_name] = input_shape
        for name in self.order:
            layer = self._modules[name]
            in_shapes = [shapes[i] for i in self._inputs[name]]
            path = prefix + name
            if isinstance(layer, Graph) and (max_depth is None or depth < max_depth):
                layer._summary_rows(in_shapes[0], path + ".", depth + 1, max_depth, rows)
            else:
                rows.append(dict(name=path, layer=repr(layer), output_shape=shapes[name],
                                 params=layer.num_parameters(), macs=layer.macs(*in_shapes)))

    def extra_repr(self):
        return f"{len(self._inputs)} nodes"


class Sequential(Graph):
    """The linear case: Sequential(layer0, layer1, ...) names the nodes "0", "1", ...
    (as torch.nn.Sequential); Sequential(("conv1", layer), ("relu1", layer), ...) or
    Sequential(dict) uses the given names."""

    def __init__(self, *layers):
        super().__init__(input_name="input")
        if len(layers) == 1 and isinstance(layers[0], dict):
            layers = tuple(layers[0].items())
        for i, item in enumerate(layers):
            if isinstance(item, tuple):
                self.add(*item)
            else:
                self.add(str(i), item)

    def append(self, layer, name=None):
        return self.add(str(len(self)) if name is None else name, layer)


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
        body += [(r["name"], r["layer"], format_shape(r["output_shape"]),
                  f"{r['params']:,}", f"{r['macs']:,}") for r in self.rows]
        total = ("total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}")
        widths = [max(len(line[k]) for line in [head, total] + body) for k in range(5)]

        def fmt(line):
            return "  ".join(c.ljust(w) if k < 3 else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths)))

        rule = "-" * len(fmt(head))
        lines = [fmt(head), rule] + [fmt(b) for b in body] + [rule, fmt(total)]
        lines.append(f"params: {human(self.total_params)}   MACs: {human(self.total_macs)} "
                     f"(batch {self.input_shape[0]}; the lecture's 'FLOP' column counts MACs)")
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


def _with_batch(shape):
    shape = tuple(int(d) for d in shape)
    return (1,) + shape if len(shape) == 3 else shape


def _with_node(e, name, layer):
    """Re-raise a forward- or backward-time error with the node's path in front of the message."""
    path = f"{name}.{e.node_path}" if hasattr(e, "node_path") else name
    detail = getattr(e, "node_detail", str(e))
    cls = ValueError if isinstance(e, ValueError) else TypeError
    new = cls(f"node '{path}' ({type(layer).__name__}): {detail}")
    new.node_path, new.node_detail = path, detail
    return new
