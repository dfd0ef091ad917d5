"""Graph and Sequential: the one scheduler. Backprop order lives here and nowhere else.

The whole idea, in three lines (micrograd's `backward`):

    order = topological_sort(nodes)                                   # inputs before consumers
    for node in order:           y[node] = node.layer(*[y[i] for i in node.inputs])
    for node in reversed(order): for i, dx in zip(node.inputs, node.layer.backward(grad[node])):
                                     grad[i] += dx                    # fan-out sums its gradients

Why the code is longer than that:

* The sort is Kahn's algorithm with ties broken by insertion order (a heap of insertion
  indices), not a depth-first search: a graph written in execution order then runs in exactly
  that order, so the forward and backward are the order a reader wrote (and the order
  torch's modules run), and a cycle or an unknown input is found with the name of the node
  that closes it. The order is computed once and cached.
* `grad[i] += dx` is `functional.add`, out of place: two dxs may be the same array
  (`Add.backward` returns (dy, dy)) and the sum must run on the arrays' own backend.
* Errors name the node: duplicate names and wrong input counts at `add`; unknown inputs and
  cycles when the order is computed (first forward, `check` or `summary`); shape mismatches
  by shape inference in `check(input_shape)`, with the dotted path of the failing node;
  forward- and backward-time errors are re-raised with the node's path in front.

    g = Graph(input_name="x")
    g.add("conv1", Conv2d(3, 8, 3, padding=1))            # inputs default to the last node
    g.add("relu1", ReLU())
    g.add("conv2", Conv2d(8, 8, 3, padding=1))
    g.add("sum", Add(), inputs=["conv2", "x"])           # x fans out: residual shortcut
    y = g(x); dx = g.backward(dy)

A Graph is itself a Module with one input, so blocks (a ResNet BasicBlock) are Graphs nested
in Graphs. Node names are the torch-style names of parameters: node "layer1" holding a
Sequential whose node "0" holds a block whose node "conv1" holds a Conv2d gives
"layer1.0.conv1.weight"; parameters come out in node insertion order (torch's registration
order). The summary table is numbacnn.summary.
"""

import heapq
import inspect
import weakref

import numpy as np

from numbacnn import functional as F
from numbacnn import fusion
from numbacnn.module import Module
from numbacnn.summary import Summary, format_shape, human  # noqa: F401  (re-exported)


def takes_input_grad(module):
    """True when ``module.backward`` can skip its input gradient: it declares
    ``input_grad_optional`` and its backward (perhaps a subclass's override with the plain
    ``backward(self, dy)``) takes an ``input_grad`` argument."""
    if not getattr(module, "input_grad_optional", False):
        return False
    backward = module.backward
    if getattr(backward, "__self__", None) is module:  # bound to this module: the function's
        return _takes_input_grad(backward.__func__, 1)  # answer, one per class; self not counted
    return _takes_input_grad(backward, 0)


# (id(callable), skip) -> (weak reference to it, whether it takes input_grad): remembered per
# callable by identity (not equality), held weakly, so a replaced backward, and whatever it
# captures, is not kept alive by this table
_INPUT_GRAD = {}


def _takes_input_grad(fn, skip):
    """Whether callable `fn` takes an ``input_grad`` argument after its first `skip` parameters
    (1: the self of a method bound to its module), remembered per callable (inspect.signature
    cost about 50 us per backward step of a LeNet-5); one that cannot be weakly referenced is
    asked each time."""
    key = (id(fn), skip)
    hit = _INPUT_GRAD.get(key)
    if hit is not None and hit[0]() is fn:
        return hit[1]
    try:
        answer = "input_grad" in list(inspect.signature(fn).parameters)[skip:]
    except (TypeError, ValueError):
        answer = False
    try:
        ref = weakref.ref(fn, lambda _, key=key: _INPUT_GRAD.pop(key, None))
    except TypeError:
        return answer
    _INPUT_GRAD[key] = (ref, answer)
    return answer


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
        self._inputs = {}  # node name -> tuple of input names (layers live in _modules)
        self._output = None
        self._order = None  # cached topological order
        self._fusion = None  # (order, layers, fusable chains, {layer modes: steps}), see _steps
        self._steps_run = None  # the steps of the last forward, walked back by backward

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
                raise GraphError(
                    name,
                    f"this layer instance is already node '{other}' (a layer caches "
                    f"its inputs, so use one instance per node)",
                )
        if inputs is None:
            inputs = [self.last_node if self._inputs else self.input_name]
        elif isinstance(inputs, str):
            inputs = [inputs]
        inputs = tuple(inputs)
        if len(inputs) != layer.num_inputs:
            raise GraphError(
                name, f"{layer!r} takes {layer.num_inputs} input(s), got {len(inputs)}: {list(inputs)}"
            )
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

    def __getitem__(self, key):
        """A node's layer by name (``g["conv1"]``) or by position in insertion order
        (``g[0]``, ``g[-1]``), as torch's ModuleDict / Sequential. KeyError / IndexError
        name the nodes."""
        if isinstance(key, str):
            if key not in self._modules:
                raise KeyError(f"no node {key!r} in this graph (nodes: {list(self._inputs)})")
            return self._modules[key]
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            names = list(self._inputs)
            if not -len(names) <= key < len(names):
                raise IndexError(f"node index {key} out of range for a graph of {len(names)} nodes")
            return self._modules[names[key]]
        raise TypeError(f"graph indices are node names or ints, got {type(key).__name__}")

    def __len__(self):
        return len(self._inputs)

    def __iter__(self):
        """The layers, in insertion order (as iterating a torch.nn.Sequential)."""
        return iter([self._modules[name] for name in self._inputs])

    def __contains__(self, item):
        """A node name (``"conv1" in g``) or a layer instance (``layer in g``)."""
        if isinstance(item, str):
            return item in self._inputs
        return any(layer is item for layer in self)

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
                    raise GraphError(
                        name,
                        f"unknown input '{i}' (nodes: {list(self._inputs)}, "
                        f"graph input: '{self.input_name}')",
                    )
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
        loop = seen[seen.index(node) :] + [node]
        return list(reversed(loop))  # in data-flow direction

    fusion = True  # run BN -> ReLU, Add -> ReLU, eval Conv -> BN [-> ReLU] fused: set_fusion

    def set_fusion(self, enabled=True):
        """Run the fusable chains of this graph and of the graphs nested in it as one step
        each (True, the default) or layer by layer (False); see numbacnn.fusion. The
        results are the same either way. Returns self."""
        enabled = bool(enabled)
        for _, module in self.named_modules():
            if isinstance(module, Graph):
                module.fusion = enabled
        return self

    def _steps(self):
        """This forward's steps: node names, and fused steps (numbacnn.fusion) where the
        layers' current modes allow. The chains are found again whenever the order or a
        node's layer changed (a layer replaced, e.g. by distributed.convert_sync_batchnorm)."""
        order = self.order
        if not self.fusion:
            return order
        cache = self._fusion
        layers = tuple(self._modules.values())
        if cache is None or cache[0] is not order or cache[1] != layers:
            cache = self._fusion = (order, layers, fusion.chains(self), {})
        chains = cache[2]
        if not chains:
            return order
        modes = tuple(self._modules[chain[1]].training for chain in chains)
        steps = cache[3].get(modes)
        if steps is None:
            steps = cache[3][modes] = fusion.plan(self, chains)
        return steps

    def forward(self, x):
        """Run every node in topological order (fused chains as one step); return the output
        node's value."""
        self._ran_forward = True
        values = {self.input_name: x}
        steps = self._steps_run = self._steps()
        for step in steps:
            if type(step) is str:
                values[step] = self._run_node(step, values)
            else:
                values[step.output] = self._run_fused(step, values)
        return values[self.output]

    def _run_fused(self, step, values):
        """A fused step's output; an error is re-raised naming the node it arose in."""
        try:
            return step.forward(*[values[i] for i in step.inputs])
        except (ValueError, TypeError) as e:
            raise _with_node(e, step.at, self._modules[step.at]) from e

    def _run_node(self, name, values, path=None):
        """Node `name`'s output from the `values` of its inputs; a ValueError or TypeError is
        re-raised naming the node (by `path`, default its name) in front."""
        layer = self._modules[name]
        try:
            return layer(*[values[i] for i in self._inputs[name]])
        except (ValueError, TypeError) as e:
            raise _with_node(e, path or name, layer) from e

    input_grad_optional = True

    def backward(self, dy, input_grad=True):
        """Reverse order; gradients of a value consumed by several nodes are summed. Returns
        the gradient of the graph's input, or None with input_grad=False: then a layer that
        reads only the input and can skip its input gradient (Conv2d, a nested Graph:
        ``input_grad_optional``) does not compute it (a training step's first conv).

        The backward reads what the forward returned: Tanh, Sigmoid and the fused ReLUs
        (numbacnn.fusion) take their gradient from their own output, so change the output
        of ``forward`` in place only after ``backward`` (PyTorch refuses such a backward;
        numbacnn cannot see the change)."""
        if not getattr(self, "_ran_forward", False):
            raise GraphError(
                str(self.output),
                "backward() called before forward(): run y = model(x) "
                "first (each layer keeps what its backward needs)",
            )
        grads = {self.output: dy}
        for step in reversed(self._steps_run or self.order):
            fused = type(step) is not str  # a fused step (numbacnn.fusion) or a node's name
            output = step.output if fused else step
            if output not in grads:
                continue  # the output does not depend on this step
            inputs = step.inputs if fused else self._inputs[step]
            run = step.backward if fused else self._modules[step].backward
            skip = not input_grad and inputs == (self.input_name,)
            skip = skip and (fused or takes_input_grad(self._modules[step]))
            try:
                dxs = run(grads.pop(output), input_grad=False) if skip else run(grads.pop(output))
            except (ValueError, TypeError) as e:
                node = step.at if fused else step  # a fused step names the node it failed in
                raise _with_node(e, node, self._modules[node]) from e
            if skip:
                continue
            if len(inputs) == 1:
                dxs = (dxs,)
            for i, dx in zip(inputs, dxs, strict=True):
                grads[i] = F.add(grads[i], dx) if i in grads else dx  # out of place: dxs may alias
        if not input_grad:
            return None
        if self.input_name not in grads:
            raise GraphError(
                str(self.output), f"the output does not depend on the graph input '{self.input_name}'"
            )
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
        shapes, rows = {"input": input_shape}, []
        for path, layer, inputs, out_shape in self.flat_nodes(input_shape, max_depth):
            shapes[path] = out_shape
            macs = layer.macs(*[shapes[i] for i in inputs])
            params = layer.num_parameters()
            rows.append(dict(name=path, layer=repr(layer), output_shape=out_shape, params=params, macs=macs))
        table = Summary(input_shape, rows)
        if print_table:
            print(table)
        return table

    def flat_nodes(self, input_shape, depth=None):
        """The graph as a flat list of nodes, nested graphs expanded down to ``depth`` levels
        (None: all; 1: this graph's own nodes): [(dotted path, layer, input paths, output
        shape)] in topological order, the graph's input being the path "input"; an empty
        nested graph passes its input through. Used by summary and draw. input_shape:
        (N, C, H, W) or (C, H, W); GraphError naming the node when it does not fit."""
        nodes = []

        def walk(g, prefix, source, level, in_shape):
            if not len(g):  # an empty Sequential passes its input through
                return source
            shapes = {g.input_name: in_shape, **g.check(in_shape)}
            where = {g.input_name: source}  # node name -> the flat path that holds its value
            for name in g.order:
                layer, inputs = g._modules[name], g._inputs[name]
                path = prefix + name
                if isinstance(layer, Graph) and (depth is None or level < depth):
                    where[name] = walk(layer, path + ".", where[inputs[0]], level + 1, shapes[inputs[0]])
                else:
                    nodes.append((path, layer, [where[i] for i in inputs], shapes[name]))
                    where[name] = path
            return where[g.output]

        walk(self, "", "input", 1, _with_batch(input_shape))
        return nodes

    def node_outputs(self, x, depth=None):
        """Run the forward pass on ``x`` and keep every node's output: {dotted path: array}
        with the paths and order of ``flat_nodes`` (nested graphs expanded down to ``depth``
        levels; None: all), the input first under the path "input". The layers run one by
        one, in the mode they are in (call ``eval()`` first for inference), so the output
        node's value is the one ``forward(x)`` returns, bit for bit with fusion off and in
        training mode, and to rounding in eval mode, where forward folds each batch norm
        into the conv before it (numbacnn.fusion). x: (N, C, H, W) (or whatever the first layer takes);
        an error is re-raised as forward's, with the dotted path of the node in front."""
        outputs = {"input": x}

        def walk(g, prefix, source, level):
            if not len(g):  # an empty Sequential passes its input through
                return source
            g._ran_forward = True  # as g.forward would: each layer keeps what its backward needs
            g._steps_run = None  # layer by layer: backward walks g.order
            values = {g.input_name: source}
            for name in g.order:
                layer, inputs = g._modules[name], g._inputs[name]
                if isinstance(layer, Graph) and (depth is None or level < depth):
                    values[name] = walk(layer, prefix + name + ".", values[inputs[0]], level + 1)
                    continue
                values[name] = outputs[prefix + name] = g._run_node(name, values, prefix + name)
            return values[g.output]

        walk(self, "", x, 1)
        return outputs

    def draw(self, input_shape, out=None, depth=None, title=None):
        """Draw this graph with matplotlib (numbacnn.drawing.draw_graph): one box per node
        (name, layer, output shape per image, parameters), skip connections as arcs, nested
        graphs expanded down to ``depth`` levels (None: all). input_shape: (C, H, W) or
        (N, C, H, W). Saves to ``out`` (.png, .svg, .pdf) if given; returns the Figure."""
        from .drawing import draw_graph

        return draw_graph(self, input_shape, out, depth, title)

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

    # An empty Sequential passes its input through, as torch.nn.Sequential() does (a slice
    # like seq[5:] of a shorter one is empty).
    def forward(self, x):
        return x if not len(self) else super().forward(x)

    def backward(self, dy, input_grad=True):
        if not len(self):
            return dy if input_grad else None
        return super().backward(dy, input_grad)

    def check(self, input_shape):
        return {} if not len(self) else super().check(input_shape)

    def output_shape(self, input_shape):
        return _with_batch(input_shape) if not len(self) else super().output_shape(input_shape)

    def __getitem__(self, key):
        """As torch.nn.Sequential: ``seq[i]`` (negative too) is a layer, ``seq[a:b]`` a new
        Sequential of those layers under their names; ``seq["name"]`` a layer by name."""
        if isinstance(key, slice):
            names = list(self._inputs)[key]
            return Sequential(*[(name, self._modules[name]) for name in names])
        return super().__getitem__(key)


def _with_batch(shape):
    shape = tuple(int(d) for d in shape)
    return (1,) + shape if len(shape) == 3 else shape


def _with_node(e, name, layer):
    """Re-raise a forward- or backward-time error with the dotted path of the node and the
    type of the innermost layer that failed in front of the message (a nested graph adds
    its node's name to the path, e.g. node 'layer4.1.bn2' (BatchNorm2d))."""
    path = f"{name}.{e.node_path}" if hasattr(e, "node_path") else name
    detail = getattr(e, "node_detail", str(e))
    layer_type = getattr(e, "node_type", type(layer).__name__)
    cls = ValueError if isinstance(e, ValueError) else TypeError
    new = cls(f"node '{path}' ({layer_type}): {detail}")
    new.node_path, new.node_detail, new.node_type = path, detail, layer_type
    return new
