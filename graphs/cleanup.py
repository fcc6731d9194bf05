"""Cleanup: Constant nodes to initializers, Identity and no-op Cast removal, constant folding
(shape arithmetic included, wherever the dims involved are static), dead-node removal, and
shape inference. `fix_shapes` pins symbolic input dims (batch, height, ...) so that a graph for
one fixed shape folds all of its shape computations away, which CUDA-graph capture needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from latentrt.graphs._graph import Graph, attr, finish, infer_shapes, shape_table

FOLD_MAX_ELEMENTS = 1 << 16  # never materialize folded tensors larger than this (unless smaller)
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def cleanup(model: onnx.ModelProto, max_rounds: int = 4) -> onnx.ModelProto:
    """Simplify `model` in place without changing what it computes; returns it."""
    g = Graph(model)
    _constants_to_initializers(g)
    for _ in range(max_rounds):
        changed = _remove_identities(g)
        infer_shapes(model)
        g.reindex()
        changed += _remove_noop_casts(g)
        changed += _fold(g)
        changed += g.prune()
        if not changed:
            break
    g.toposort()
    return finish(model)


def fix_shapes(model: onnx.ModelProto, dims: Mapping[str, int]) -> onnx.ModelProto:
    """Replace symbolic dims named in `dims` (e.g. {"batch": 2, "height": 64}) and fold."""
    for v in list(model.graph.input) + list(model.graph.output):
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                d.dim_value = int(dims[d.dim_param])
    del model.graph.value_info[:]
    return cleanup(model)


def _constants_to_initializers(g: Graph) -> None:
    drop = []
    for n in g.g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.output[0] not in g.outputs:
            value = g.const(n.output[0])
            if value is None:
                continue
            t = numpy_helper.from_array(np.asarray(value), n.output[0])
            g.g.initializer.append(t)
            drop.append(n)
    g.remove(drop)


def _remove_identities(g: Graph) -> int:
    drop = []
    for n in list(g.g.node):
        if n.op_type != "Identity" or n.output[0] in g.outputs:
            continue
        g.replace_uses(n.output[0], n.input[0])
        drop.append(n)
    g.remove(drop)
    return len(drop)


def _remove_noop_casts(g: Graph) -> int:
    types = g.elem_types()
    drop = []
    for n in g.g.node:
        if n.op_type == "Cast" and n.output[0] not in g.outputs:
            if types.get(n.input[0]) == attr(n, "to"):
                g.replace_uses(n.output[0], n.input[0])
                drop.append(n)
    g.remove(drop)
    return len(drop)


def _shape_value(shapes: dict, n: onnx.NodeProto) -> np.ndarray | None:
    """A Shape node's value when the dims it returns are static."""
    dims = shapes.get(n.input[0])
    if dims is None:
        return None
    start, end = attr(n, "start", 0), attr(n, "end", None)
    dims = dims[start:end] if end is not None else dims[start:]
    if any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in dims):
        return None
    return np.array(dims, dtype=np.int64)


def _partial_shape_pick(g: Graph, shapes: dict, n: onnx.NodeProto) -> np.ndarray | None:
    """Gather / Slice of a Shape whose picked dims are static, though others are not."""
    src = g.op(n.input[0], "Shape")
    if src is None or attr(src, "start") is not None or attr(src, "end") is not None:
        return None
    dims = shapes.get(src.input[0])
    if dims is None:
        return None
    idx = np.arange(len(dims))
    if n.op_type == "Gather":
        i = g.const(n.input[1])
        if i is None:
            return None
        picked = idx[np.asarray(i)]
    else:
        vals = [g.const(x) if x else None for x in n.input[1:]]
        if any(v is None for v in vals[:2]) or any(
            x and v is None for x, v in zip(n.input[3:], vals[2:], strict=False)
        ):
            return None
        starts, ends = vals[0], vals[1]
        axes = vals[2] if len(vals) > 2 and vals[2] is not None else None
        steps = vals[3] if len(vals) > 3 and vals[3] is not None else None
        if (axes is not None and list(axes) != [0]) or len(starts) != 1:
            return None
        step = int(steps[0]) if steps is not None else 1
        picked = idx[slice(int(starts[0]), int(min(ends[0], 2**62)), step)]
    values = [dims[k] for k in np.atleast_1d(picked)]
    if any(not isinstance(d, int) or d <= 0 for d in values):
        return None
    return np.array(values, dtype=np.int64).reshape(np.shape(picked))


def _eval(g: Graph, n: onnx.NodeProto, arrays: list[np.ndarray]) -> list[np.ndarray]:
    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for name, a in zip(n.input, arrays, strict=True)
        if name
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for o in n.output if o]
    m = helper.make_model(
        helper.make_graph([n], "fold", inputs, outputs), opset_imports=list(g.model.opset_import)
    )
    m.ir_version = g.model.ir_version
    feeds = {name: a for name, a in zip(n.input, arrays, strict=True) if name}
    return ReferenceEvaluator(m).run(None, feeds)


def _fold(g: Graph) -> int:
    """Evaluate nodes whose inputs are all known; returns how many were folded."""
    folded = 0
    drop = []
    shapes = shape_table(g.model)
    for n in list(g.g.node):
        if n.domain not in ("", "ai.onnx") or n.op_type in _NO_FOLD or not n.output:
            continue
        if any(o in g.outputs for o in n.output):
            continue
        values: list[np.ndarray] | None = None
        if n.op_type == "Shape":
            v = _shape_value(shapes, n)
            values = None if v is None else [v]
        elif n.op_type in ("Gather", "Slice") and g.op(n.input[0], "Shape") is not None:
            v = _partial_shape_pick(g, shapes, n)
            values = None if v is None else [v]
        if values is None:
            if not n.input or any(i and i not in g.inits for i in n.input):
                continue
            sizes = [int(np.prod(g.inits[i].dims)) for i in n.input if i]
            if max(sizes, default=0) > FOLD_MAX_ELEMENTS * 64:
                continue
            arrays = [g.const(i) if i else None for i in n.input]
            try:
                values = _eval(g, n, arrays)
            except Exception:  # an op the reference evaluator lacks: leave it to the runtime
                continue
            limit = max(FOLD_MAX_ELEMENTS, sum(sizes))
            if any(np.asarray(v).size > limit for v in values):
                continue
        for o, v in zip(n.output, values, strict=False):
            if o:
                g.g.initializer.append(numpy_helper.from_array(np.asarray(v), o))
        drop.append(n)
        folded += 1
        g.inits = {t.name: t for t in g.g.initializer}
    g.remove(drop)
    return folded
