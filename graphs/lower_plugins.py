"""Lower the `latentrt` custom ops to standard ONNX (opset 17) for targets without the plugins.

- `latentrt::GroupNormSiLU(x, gamma, beta)` becomes Reshape to (N, G, -1), InstanceNormalization
  (unit scale, zero bias), Reshape to (N, C, -1), Mul gamma / Add beta per channel, then
  Sigmoid and Mul when `activation` is 1, and a Reshape back to x's shape. Written against x's
  runtime shape, so it works for any rank and dynamic sizes, in x's dtype (CastLike).
- `latentrt::Conv3d(x, w, b)` becomes Conv whose own zero pads carry the resolved pads (causal
  zero padding is only a question of pads: (dilation_t * (kT - 1), 0) in time); `causal_time=2`
  (replicate the first frame) puts an edge-mode Pad of the time axis before the Conv.

The result has no `latentrt` opset import, IR version <= 13, and passes `onnx.checker`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from latentrt.errors import ExportError

__all__ = ["DOMAIN", "MAX_IR_VERSION", "count_plugin_nodes", "lower_plugins"]

DOMAIN = "latentrt"
MAX_IR_VERSION = 13
_MIN_OPSET = 15  # CastLike
_OPS = ("GroupNormSiLU", "Conv3d")


def count_plugin_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each `latentrt` op the model holds (subgraphs included)."""
    counts: dict[str, int] = {}
    for node in _walk(model.graph):
        if node.domain == DOMAIN:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _walk(sub)


class _Builder:
    """Fresh names and shared constants while one node is rewritten."""

    def __init__(self, prefix: str, taken: set[str]) -> None:
        self.prefix = prefix
        self.taken = taken
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def name(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}"
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, out: str | None = None, **attrs):
        out = out or self.name(hint)
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs)
        )
        return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _lower_groupnorm_silu(node: onnx.NodeProto, b: _Builder) -> None:
    a = _attrs(node)
    if set(a) - {"num_groups", "epsilon", "activation"} or "num_groups" not in a:
        raise ExportError(f"{node.name}: GroupNormSiLU attributes {sorted(a)} are not understood")
    groups, eps, act = (
        int(a["num_groups"]),
        float(a.get("epsilon", 1e-5)),
        int(a.get("activation", 1)),
    )
    if groups <= 0 or act not in (0, 1) or len(node.input) != 3:
        raise ExportError(f"{node.name}: bad GroupNormSiLU (num_groups={groups}, activation={act})")
    x, gamma, beta = node.input
    shape = b.op("Shape", [x], "shape")
    nc = b.op(
        "Slice",
        [shape, b.const("zero", np.array([0], np.int64)), b.const("two", np.array([2], np.int64))],
        "nc",
    )
    minus1 = b.const("minus1", np.array([-1], np.int64))
    grouped = b.op(
        "Reshape", [x, b.const("groups", np.array([0, groups, -1], np.int64))], "grouped"
    )
    scale = b.op("CastLike", [b.const("ones", np.ones(groups, np.float32)), x], "scale")
    shift = b.op("CastLike", [b.const("zeros", np.zeros(groups, np.float32)), x], "shift")
    normed = b.op("InstanceNormalization", [grouped, scale, shift], "normed", epsilon=eps)
    flat_shape = b.op("Concat", [nc, minus1], "flat_shape", axis=0)
    flat = b.op("Reshape", [normed, flat_shape], "flat")
    axis1 = b.const("axis1", np.array([1], np.int64))
    g = b.op("Unsqueeze", [gamma, axis1], "gamma")
    be = b.op("Unsqueeze", [beta, axis1], "beta")
    y = b.op("Add", [b.op("Mul", [flat, g], "scaled"), be], "affine")
    if act:
        y = b.op("Mul", [y, b.op("Sigmoid", [y], "sigmoid")], "silu")
    b.op("Reshape", [y, shape], "out", out=node.output[0])


def _lower_conv3d(node: onnx.NodeProto, b: _Builder, shapes: dict[str, tuple[int, ...]]) -> None:
    a = _attrs(node)
    if set(a) - {"pads", "strides", "dilations", "causal_time"}:
        raise ExportError(f"{node.name}: Conv3d attributes {sorted(a)} are not understood")
    pads = [int(v) for v in a.get("pads", [0] * 6)]
    strides = [int(v) for v in a.get("strides", [1, 1, 1])]
    dilations = [int(v) for v in a.get("dilations", [1, 1, 1])]
    causal = int(a.get("causal_time", 0))
    if len(pads) != 6 or len(strides) != 3 or len(dilations) != 3 or min(pads) < 0:
        raise ExportError(f"{node.name}: bad Conv3d pads {pads}, strides {strides}, dilations")
    if causal not in (0, 1, 2):
        raise ExportError(f"{node.name}: causal_time must be 0, 1 or 2, got {causal}")
    x, w = node.input[0], node.input[1]
    if causal:
        wshape = shapes.get(w)
        if wshape is None or len(wshape) != 5:
            raise ExportError(f"{node.name}: causal Conv3d needs a weight of known 5-D shape")
        front = dilations[0] * (wshape[2] - 1)
        if (pads[0], pads[3]) not in ((0, 0), (front, 0)):
            raise ExportError(
                f"{node.name}: causal_time pads time by ({front}, 0), pads give "
                f"({pads[0]}, {pads[3]})"
            )
        pads[0], pads[3] = front, 0
        if causal == 2 and front:
            spec = np.zeros(10, np.int64)
            spec[2] = front
            x = b.op("Pad", [x, b.const("time_pads", spec)], "edge_padded", mode="edge")
            pads[0] = 0
    inputs = [x, w] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
    b.op("Conv", inputs, "out", out=node.output[0], pads=pads, strides=strides, dilations=dilations)


def _known_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of initializers, Constant outputs and fully known value_infos/inputs."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
    for vi in (*graph.input, *graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(vi.name, tuple(d.dim_value for d in dims))
    return shapes


def _lower_graph(graph: onnx.GraphProto, taken: set[str], outer: dict) -> int:
    shapes = {**outer, **_known_shapes(graph)}
    new_nodes: list[onnx.NodeProto] = []
    lowered = 0
    for i, node in enumerate(graph.node):
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                lowered += _lower_graph(sub, taken, shapes)
        if node.domain != DOMAIN:
            new_nodes.append(node)
            continue
        if node.op_type not in _OPS:
            raise ExportError(f"no lowering for {DOMAIN}::{node.op_type} (node {node.name!r})")
        b = _Builder(node.name or f"{node.op_type}_{i}", taken)
        if node.op_type == "Conv3d":
            _lower_conv3d(node, b, shapes)
        else:
            _lower_groupnorm_silu(node, b)
        new_nodes.extend(b.nodes)
        graph.initializer.extend(b.inits)
        lowered += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return lowered


def lower_plugins(model: onnx.ModelProto, check: bool = True) -> onnx.ModelProto:
    """A copy of `model` with every `latentrt` node replaced by standard ONNX ops (see module doc)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opsets = {o.domain or "ai.onnx": o.version for o in out.opset_import}
    if opsets.get("ai.onnx", 0) < _MIN_OPSET:
        raise ExportError(
            f"lowering needs opset >= {_MIN_OPSET}, model has {opsets.get('ai.onnx')}"
        )
    taken = {n for node in _walk(out.graph) for n in (*node.input, *node.output, node.name)}
    taken |= {t.name for t in out.graph.initializer} | {i.name for i in out.graph.input}
    _lower_graph(out.graph, taken, {})
    kept = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    out.ir_version = min(out.ir_version, MAX_IR_VERSION)
    if check:
        try:
            onnx.checker.check_model(out, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"lowered model is not valid ONNX: {e}") from e
    return out
