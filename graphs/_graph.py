"""Small helpers over an ONNX ModelProto that the passes share.

`Graph` indexes a model's nodes (producer and consumers of every tensor), reads and writes
initializers as numpy arrays, makes unique names, and rebuilds the node list in topological
order after a pass has added or removed nodes. Element types are propagated by the rules of
the operators the exporters emit, so passes know which tensors are floating point even where
ONNX shape inference loses track (dynamic reshapes). Models over 2 GB are inferred and checked
through a skeleton copy whose large weights are graph inputs, so nothing is serialized whole.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_IR_VERSION = 13
MS_DOMAIN = "com.microsoft"
PLUGIN_DOMAIN = "latentrt"
FLOAT, FLOAT16, INT64, BOOL = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, 6
SKELETON_LIMIT = 1 << 20  # initializers above this many bytes become inputs in the skeleton

# Output element type rules for ops whose output type is not their first input's.
_FIXED_OUT = {
    "Shape": INT64,
    "Size": INT64,
    "NonZero": INT64,
    "ArgMax": INT64,
    "ArgMin": INT64,
    "Equal": BOOL,
    "Less": BOOL,
    "Greater": BOOL,
    "LessOrEqual": BOOL,
    "GreaterOrEqual": BOOL,
    "Not": BOOL,
    "And": BOOL,
    "Or": BOOL,
    "Xor": BOOL,
    "IsNaN": BOOL,
    "IsInf": BOOL,
}


class Graph:
    """An indexed view of `model.graph` that passes edit in place."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self._names = itertools.count()
        self.reindex()

    # --- indexing -----------------------------------------------------------------------------

    def reindex(self) -> None:
        """Recompute producer / consumer maps and the initializer table."""
        self.inits = {t.name: t for t in self.g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.g.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in self.g.output}
        self.inputs = {i.name for i in self.g.input}
        self.node_names = {n.name for n in self.g.node}

    def op(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The node producing `name` if it has type `op_type`."""
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op_type else None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading `name`, if exactly one does and it is not a graph output."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]

    # --- constants ----------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (or Constant node output), else None."""
        t = self.inits.get(name)
        if t is not None:
            return numpy_helper.to_array(t)
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant" and len(n.attribute) == 1:
            a = n.attribute[0]
            if a.name == "value":
                return numpy_helper.to_array(a.t)
        return None

    def add_init(self, array: np.ndarray, hint: str) -> str:
        """Add an initializer holding `array` under a fresh name; returns the name."""
        name = self.fresh(hint)
        t = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.g.initializer.append(t)
        self.inits[name] = self.g.initializer[-1]
        return name

    def fresh(self, hint: str) -> str:
        """A tensor or node name not used in the graph yet."""
        while True:
            name = f"{hint}__{next(self._names)}"
            taken = (self.producer, self.inits, self.inputs, self.node_names)
            if not any(name in t for t in taken):
                return name

    # --- editing ------------------------------------------------------------------------------

    def node(
        self,
        op_type: str,
        inputs: list[str],
        outputs: list[str] | None = None,
        domain: str = "",
        name: str | None = None,
        **attrs,
    ) -> onnx.NodeProto:
        """Append a new node (outputs default to fresh names) and index it."""
        name = name or self.fresh(op_type)
        outputs = outputs or [self.fresh(f"{name}_out")]
        n = helper.make_node(op_type, inputs, outputs, name=name, domain=domain or None, **attrs)
        self.g.node.append(n)
        n = self.g.node[-1]
        self.node_names.add(n.name)
        for o in n.output:
            self.producer[o] = n
        for i in n.input:
            if i:
                self.consumers[i].append(n)
        return n

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of `old` read `new`; a graph output keeps its name via Identity."""
        for n in list(self.consumers.get(old, [])):
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new
            self.consumers[new].append(n)
        self.consumers[old] = []
        if old in self.outputs:
            self.node("Identity", [new], [old])

    def remove(self, nodes: Iterable[onnx.NodeProto]) -> None:
        """Drop nodes (by identity) from the graph."""
        drop = {id(n) for n in nodes}
        keep = [n for n in self.g.node if id(n) not in drop]
        del self.g.node[:]
        self.g.node.extend(keep)
        self.reindex()

    def prune(self) -> int:
        """Remove nodes and initializers that no graph output depends on; returns nodes removed."""
        self.toposort()
        live: set[str] = set(self.outputs)
        keep: list[onnx.NodeProto] = []
        for n in reversed(self.g.node):
            if any(o in live for o in n.output if o):
                keep.append(n)
                live.update(i for i in n.input if i)
                live.update(_subgraph_inputs(n))
        removed = len(self.g.node) - len(keep)
        keep.reverse()
        del self.g.node[:]
        self.g.node.extend(keep)
        inits = [t for t in self.g.initializer if t.name in live]
        if len(inits) != len(self.g.initializer):
            del self.g.initializer[:]
            self.g.initializer.extend(inits)
        self.reindex()
        return removed

    def toposort(self) -> None:
        """Reorder nodes so each comes after the producers of its inputs (stable otherwise)."""
        nodes = list(self.g.node)
        index = {id(n): k for k, n in enumerate(nodes)}
        prod = {o: n for n in nodes for o in n.output if o}
        deps: dict[int, int] = {}
        users: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        for n in nodes:
            srcs = {id(prod[i]) for i in list(n.input) + _subgraph_inputs(n) if i in prod}
            srcs.discard(id(n))
            deps[id(n)] = len(srcs)
            for s in srcs:
                users[s].append(n)
        ready = deque(sorted((n for n in nodes if deps[id(n)] == 0), key=lambda n: index[id(n)]))
        order = []
        while ready:
            n = ready.popleft()
            order.append(n)
            for u in users[id(n)]:
                deps[id(u)] -= 1
                if deps[id(u)] == 0:
                    ready.append(u)
        if len(order) != len(nodes):
            raise ValueError("graph has a cycle after rewriting")
        copies = [onnx.NodeProto() for _ in order]
        for c, n in zip(copies, order, strict=True):
            c.CopyFrom(n)
        del self.g.node[:]
        self.g.node.extend(copies)
        self.reindex()

    # --- types --------------------------------------------------------------------------------

    def elem_types(self) -> dict[str, int]:
        """Element type of every tensor, from declarations, value_info and operator rules."""
        types: dict[str, int] = {}
        for v in itertools.chain(self.g.input, self.g.output, self.g.value_info):
            if v.type.tensor_type.elem_type:
                types[v.name] = v.type.tensor_type.elem_type
        for t in self.g.initializer:
            types[t.name] = t.data_type
        for n in self.g.node:
            out = _out_type(n, types)
            for o in n.output:
                if o and out:
                    types.setdefault(o, out)
        return types


def _out_type(n: onnx.NodeProto, types: dict[str, int]) -> int | None:
    if n.op_type in _FIXED_OUT:
        return _FIXED_OUT[n.op_type]
    if n.op_type == "Cast":
        return attr(n, "to")
    if n.op_type == "CastLike":
        return types.get(n.input[1])
    if n.op_type == "Constant":
        a = n.attribute[0]
        return a.t.data_type if a.name == "value" else (FLOAT if "float" in a.name else INT64)
    if n.op_type == "ConstantOfShape":
        v = attr(n, "value")
        return v.data_type if v is not None else FLOAT
    if n.op_type == "Where":
        return types.get(n.input[1])
    return types.get(n.input[0]) if n.input and n.input[0] else None


def _subgraph_inputs(n: onnx.NodeProto) -> list[str]:
    """Outer-scope names read by a node's subgraphs (If / Loop / Scan bodies)."""
    names: list[str] = []
    for a in n.attribute:
        for g in list(a.graphs) + ([a.g] if a.HasField("g") else []):
            for sub in g.node:
                names.extend(i for i in sub.input if i)
                names.extend(_subgraph_inputs(sub))
    return names


def attr(n: onnx.NodeProto, name: str, default=None):
    """A node attribute's value, or `default`."""
    for a in n.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(n: onnx.NodeProto, name: str, value) -> None:
    """Set (or replace) a node attribute."""
    for k, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[k]
            break
    n.attribute.append(helper.make_attribute(name, value))


def ensure_opset(model: onnx.ModelProto, domain: str, version: int = 1) -> None:
    """Declare an operator-set domain the model now uses."""
    for o in model.opset_import:
        if o.domain == domain:
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initializers are typed graph inputs (for inference/check)."""
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.producer_name = model.producer_name
    g = sk.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    for t in model.graph.initializer:
        big = t.data_location == TensorProto.EXTERNAL or (
            len(t.raw_data) > SKELETON_LIMIT if t.HasField("raw_data") else False
        )
        if big:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    return sk


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference that works for models of any size; value_info is replaced."""
    sk = _skeleton(model)
    del sk.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True)
    except Exception:  # inference errors are not fatal: the passes fall back on type rules
        return model
    del model.graph.value_info[:]
    known = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in known)
    return model


def probe_shapes(model: onnx.ModelProto, scale: int) -> dict[str, list[int]]:
    """Concrete dims of every tensor with the inputs' symbolic dims pinned to distinct multiples
    of 64 (`scale` picks the set). Symbolic inference gives every conv output fresh symbols, so
    it cannot show that two activations have the same shape; two probes that agree can."""
    sk = _skeleton(model)
    del sk.graph.value_info[:]
    dims = [d for v in sk.graph.input for d in v.type.tensor_type.shape.dim]
    names = sorted({d.dim_param for d in dims if d.dim_param})
    values = {n: 64 * (scale + k) for k, n in enumerate(names)}
    for d in dims:
        if d.dim_param:
            d.dim_value = values[d.dim_param]
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True)
    except Exception:  # no probe, no shape-dependent rewrite
        return {}
    return {k: v for k, v in shape_table(inferred).items() if all(isinstance(d, int) for d in v)}


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker over the model (through its skeleton when the weights are large)."""
    onnx.checker.check_model(_skeleton(model))


def finish(model: onnx.ModelProto) -> onnx.ModelProto:
    """Common epilogue of a pass: IR version capped for ONNX Runtime, shapes re-inferred."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return infer_shapes(model)


def shape_table(model: onnx.ModelProto) -> dict[str, list]:
    """Dims of every tensor with a known shape (ints, strings for symbols, None if unknown)."""
    g = model.graph
    table: dict[str, list] = {t.name: list(t.dims) for t in g.initializer}
    for v in itertools.chain(g.value_info, g.output, g.input):
        if v.type.tensor_type.HasField("shape"):
            table[v.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in v.type.tensor_type.shape.dim
            ]
    return table


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Histogram of op types (domain-qualified for non-standard domains)."""
    out: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        out[f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type] += 1
    return dict(out)
