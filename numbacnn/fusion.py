"""Fusion: a Graph runs a few pairs of layers as one pass over memory, with the results of the
layer-by-layer path.

A ResNet block is conv - bn - relu - conv - bn - add - relu. Run layer by layer, each ReLU
reads and writes a whole activation again, and in eval mode each batch norm is one more pass
over the conv's output. The Graph's scheduler (numbacnn.graph) therefore runs these chains
as one step:

    chain                        mode      one step computes                    functional
    BatchNorm -> ReLU            training  y = max(BN(x), 0) in BN's own loop   batch_norm_relu
                                 eval      BN, then ReLU in place
    Add -> ReLU                  both      y = max(a + b, 0)                    add_relu
    Conv2d -> BatchNorm2d        eval      one conv with the BN folded into     fuse_conv_bn_weights
      [-> ReLU]                            its weights, then ReLU in place      + conv2d (+ relu)

and their backward from the fused output: ReLU's mask is y > 0, read from the fused output
(y > 0 exactly where the layer before the ReLU gave > 0, NaN included), so the forward
never writes the pre-activation. A chain is fused only where nothing else reads its inner
values: each inner node has exactly one consumer, the next node of the chain, and is not
the graph's output. Only the exact classes above are fused (a subclass, e.g.
distributed.SyncBatchNorm, may change what forward does, so it runs on its own).

What stays as the teaching material shows it:
* every layer keeps its own forward and backward, and each fused step is the composition of
  them (tests/test_fusion.py: the same outputs, running statistics and gradients, fused or not);
* ``Graph.node_outputs`` (numbacnn explain, the lecture's feature maps) always runs layer
  by layer and returns every node's output, the pre-activations included;
* ``graph.set_fusion(False)`` turns fusion off for a graph and the graphs nested in it.

A fused BatchNorm -> ReLU's backward is the batch norm's own ``backward`` (with the ReLU's
output), so hooks on it run, as distributed.GradientExchange's that overlap the all-reduce
with the backward pass. The eval-mode fold computes its layers' gradients itself: hooks on
the conv's and the batch norm's backward do not run there (training never folds).

Eval-mode backward through a folded conv (a saliency map, say) is the gradient of the folded
conv that ran: conv2d_backward with the folded weight, then fuse_conv_bn_weights_backward
for the conv's and the batch norm's parameters. (Differentiating the layer-by-layer function
instead would mix two roundings: a later ReLU's mask comes from the fused values.)
"""

from numbacnn import functional as F
from numbacnn.layers import Add, BatchNorm1d, BatchNorm2d, Conv2d, ReLU

_BATCH_NORMS = (BatchNorm1d, BatchNorm2d)


def chains(graph):
    """The fusable chains of `graph`, structural (modes are looked at when it runs):
    [(node names, ...)] in topological order, each a tuple of 2 or 3 names."""
    order, inputs, modules = graph.order, graph._inputs, graph._modules
    readers = {name: [] for name in order}
    for name in order:
        for i in inputs[name]:
            if i in readers:
                readers[i].append(name)

    def only_reader(name, kinds):
        """The one node reading `name` if it is of an exact class in `kinds`, else None."""
        if name == graph.output or len(readers[name]) != 1:
            return None
        nxt = readers[name][0]
        return nxt if type(modules[nxt]) in kinds else None

    found, taken = [], set()
    for name in order:
        if name in taken:
            continue
        kind = type(modules[name])
        chain = None
        if kind is Conv2d:
            bn = only_reader(name, (BatchNorm2d,))
            if bn is not None:
                relu = only_reader(bn, (ReLU,))
                chain = (name, bn) if relu is None else (name, bn, relu)
        elif kind in _BATCH_NORMS or kind is Add:
            relu = only_reader(name, (ReLU,))
            chain = None if relu is None else (name, relu)
        if chain is not None:
            found.append(chain)
            taken.update(chain)
    return found


def plan(graph, chain_list):
    """The steps of one forward in the layers' current modes: a node name (run on its own)
    or a fused step object, in an order that respects the data flow."""
    modules = graph._modules
    start = {}
    for chain in chain_list:
        first, rest = modules[chain[0]], chain[1:]
        if type(first) is Conv2d:
            if modules[chain[1]].training:  # batch statistics: nothing to fold into the conv
                start[chain[0]] = [chain[0]] + (
                    [BatchNormReLU(graph, *rest)] if len(rest) == 2 else [rest[0]]
                )
            else:
                start[chain[0]] = [ConvBatchNorm(graph, *chain)]
        elif type(first) is Add:
            start[chain[0]] = [AddReLU(graph, *chain)]
        else:
            start[chain[0]] = [BatchNormReLU(graph, *chain)]
    inner = {name for chain in chain_list for name in chain[1:]}
    steps = []
    for name in graph.order:
        if name in start:
            steps.extend(start[name])
        elif name not in inner:
            steps.append(name)
    return steps


class _Fused:
    """A fused step: `inputs` (the first node's inputs), `output` (the last node's name), and
    `at`, the node a forward- or backward-time error is reported under."""

    def __init__(self, graph, names):
        self.names = names
        self.inputs = graph._inputs[names[0]]
        self.output = names[-1]
        self.layers = [graph._modules[n] for n in names]
        self.at = names[0]

    def __repr__(self):
        return f"{type(self).__name__}({' -> '.join(self.names)})"


class BatchNormReLU(_Fused):
    """BatchNorm -> ReLU: functional.batch_norm_relu and batch_norm_relu_backward."""

    def __init__(self, graph, bn, relu):
        super().__init__(graph, (bn, relu))
        self.bn, self.relu = self.layers

    def forward(self, x):
        self.at = self.names[0]
        y = self.bn._forward(x, relu=True)
        self.relu._x = y  # ReLU's own backward would read the same mask from y
        return y

    def backward(self, dy, input_grad=True):
        self.at = self.names[1]  # dy is the ReLU's output gradient: its node is named
        # the layer's own backward (hooks on it, such as distributed.GradientExchange's, run)
        return self.bn.backward(dy, relu_output=self.relu._x)


class AddReLU(_Fused):
    """Add -> ReLU: functional.add_relu; both inputs get relu_backward(dy, y)."""

    def __init__(self, graph, add, relu):
        super().__init__(graph, (add, relu))
        self.relu = self.layers[1]

    def forward(self, a, b):
        self.at = self.names[0]
        y = F.add_relu(a, b)
        self.relu._x = y
        return y

    def backward(self, dy, input_grad=True):
        self.at = self.names[1]
        dx = F.relu_backward(dy, self.relu._x)
        return dx, dx


class ConvBatchNorm(_Fused):
    """Eval mode, Conv2d -> BatchNorm2d [-> ReLU]: one conv2d with the batch norm folded into
    its weight and bias (functional.fuse_conv_bn_weights, refolded at every call, so a
    changed weight or running statistic is always used), then ReLU in place."""

    def __init__(self, graph, conv, bn, relu=None):
        super().__init__(graph, (conv, bn) if relu is None else (conv, bn, relu))
        self.conv, self.bn = self.layers[:2]
        self.relu = self.layers[2] if relu is not None else None

    def forward(self, x):
        conv, bn = self.conv, self.bn
        self.at = self.names[0]
        if bn.num_features != conv.out_channels:  # BN's own message, with the shape it got
            shape = conv.output_shape(x.shape)
            self.at = self.names[1]
            bn.output_shape(shape)
        self.at = self.names[1]
        b = conv.bias.data if conv.bias is not None else None
        w, b = F.fuse_conv_bn_weights(conv.weight.data, b, bn.running_mean, bn.running_var, bn.eps,
                                      bn.weight.data, bn.bias.data)  # fmt: skip
        self.at = self.names[0]
        y = F.conv2d(x, w, b, **conv._args())
        if self.relu is not None:
            y = F.relu(y, inplace=True)
            self.relu._x = y
        self._x, self._w, self._y = x, w, y
        return y

    def backward(self, dy, input_grad=True):
        """The gradient of the folded conv that ran (ReLU's mask from its output), and the
        chain rule through the folding for the conv's and the batch norm's parameters."""
        conv, bn = self.conv, self.bn
        self.at = self.names[-1]
        if self.relu is not None:
            dy = F.relu_backward(dy, self._y)
        self.at = self.names[0]
        dx, dw, db = F.conv2d_backward(
            dy, self._x, self._w, **conv._args(), output_mask=(input_grad, True, True)
        )
        self.at = self.names[1]
        b = conv.bias.data if conv.bias is not None else None
        dconv_w, dconv_b, dgamma, dbeta = F.fuse_conv_bn_weights_backward(
            dw, db, conv.weight.data, b, bn.running_mean, bn.running_var, bn.eps, bn.weight.data
        )
        conv.weight.accumulate_grad(dconv_w)
        if conv.bias is not None:
            conv.bias.accumulate_grad(dconv_b)
        bn.weight.accumulate_grad(dgamma)
        bn.bias.accumulate_grad(dbeta)
        return dx
