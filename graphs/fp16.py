"""fp16 conversion that keeps fp32 where the numerics need it.

Every floating-point tensor becomes float16 except:

- nodes whose op is in `keep_ops` (default: normalization statistics of InstanceNormalization,
  Softmax, and the transcendental / reduction ops of embeddings), or whose name a
  `keep_nodes` predicate selects (e.g. a VAE block that overflows in fp16);
- every node upstream of Sin/Cos: the sinusoidal timestep embedding multiplies t (up to
  1000) by frequencies, which fp16 would round by up to 0.5 before the sine;
- inputs that contrib kernels require in fp32 (GroupNorm's gamma/beta) and Resize's scales.

Casts are inserted at the fp16/fp32 boundaries (one per tensor and type); initializers are
converted (clipped to the fp16 range) or duplicated when both precisions read them. With
`keep_io_types` (the default) graph inputs and outputs keep their fp32 declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from latentrt.graphs._graph import FLOAT, FLOAT16, Graph, attr, finish, infer_shapes, set_attr

DEFAULT_KEEP_OPS = frozenset(
    {
        "InstanceNormalization",
        "Softmax",
        "Sin",
        "Cos",
        "Exp",
        "Log",
        "Pow",
        "ReduceMean",
        "ReduceSum",
        "CumSum",
        "Range",
    }
)
PRECISE_ANCESTORS = frozenset({"Sin", "Cos"})
# (op, input slot) pairs that stay fp32 whatever the node's precision.
FP32_INPUTS = {"GroupNorm": {1, 2}, "SkipGroupNorm": {1, 2}, "Resize": {1, 2}, "Upsample": {1}}
# (op, output slot) pairs that are fp32 statistics even in fp16 nodes.
FP32_OUTPUTS = {"LayerNormalization": {1, 2}, "SkipLayerNormalization": {1, 2}}
FP16_MAX = float(np.finfo(np.float16).max)


def _ancestors(g: Graph, roots: Iterable[onnx.NodeProto]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        for i in n.input:
            p = g.producer.get(i)
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return seen


def convert_fp16(
    model: onnx.ModelProto,
    keep_ops: Iterable[str] = DEFAULT_KEEP_OPS,
    keep_nodes: Callable[[str], bool] | None = None,
    keep_io_types: bool = True,
) -> onnx.ModelProto:
    """Convert `model` to float16 in place (see the module docstring for what stays fp32)."""
    infer_shapes(model)
    g = Graph(model)
    types = g.elem_types()
    keep_ops = frozenset(keep_ops)
    fp32 = {id(n) for n in g.g.node if n.op_type in keep_ops}
    if keep_nodes is not None:
        fp32 |= {id(n) for n in g.g.node if keep_nodes(n.name)}
    fp32 |= _ancestors(g, [n for n in g.g.node if n.op_type in PRECISE_ANCESTORS])

    new_type = {
        i.name: (FLOAT16 if not keep_io_types and types.get(i.name) == FLOAT else types.get(i.name))
        for i in g.g.input
    }
    for i in g.g.input:
        if new_type[i.name] == FLOAT16:
            i.type.tensor_type.elem_type = FLOAT16
    casts: dict[tuple[str, int], str] = {}
    variants: dict[tuple[str, int], str] = {}
    floats = (FLOAT, FLOAT16)

    def source(t: str, want: int) -> str:
        if t in g.inits:
            have = g.inits[t].data_type
            if have == want or have not in floats:
                return t
            key = (t, want)
            if key not in variants:
                a = numpy_helper.to_array(g.inits[t])
                if want == FLOAT16:
                    a = np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)
                else:
                    a = a.astype(np.float32)
                variants[key] = g.add_init(a, f"{t}_{'fp16' if want == FLOAT16 else 'fp32'}")
            return variants[key]
        have = new_type.get(t, types.get(t))
        if have == want or have not in floats:
            return t
        key = (t, want)
        if key not in casts:
            casts[key] = g.node("Cast", [t], [g.fresh(f"{t}_cast")], to=want).output[0]
        return casts[key]

    for n in list(g.g.node):
        half = id(n) not in fp32
        want = FLOAT16 if half else FLOAT
        if n.op_type == "Cast":
            if half and attr(n, "to") == FLOAT:
                set_attr(n, "to", FLOAT16)
        else:
            keep_in = FP32_INPUTS.get(n.op_type, set())
            for k, t in enumerate(n.input):
                if not t:
                    continue
                if types.get(t) in floats or new_type.get(t) in floats:
                    n.input[k] = source(t, FLOAT if k in keep_in else want)
        if n.op_type == "ConstantOfShape" and half:
            v = attr(n, "value")
            if v is not None and v.data_type == FLOAT:
                half_value = numpy_helper.to_array(v).astype(np.float16)
                set_attr(n, "value", numpy_helper.from_array(half_value))
        keep_out = FP32_OUTPUTS.get(n.op_type, set())
        for k, o in enumerate(n.output):
            if n.op_type == "Cast":
                new_type[o] = attr(n, "to")
            elif o and types.get(o) in floats:
                new_type[o] = FLOAT if (k in keep_out or not half) else FLOAT16
    g.reindex()
    for out in g.g.output:
        have = new_type.get(out.name, types.get(out.name))
        declared = out.type.tensor_type.elem_type
        if declared not in floats or have == declared:
            continue
        if keep_io_types:
            inner = g.fresh(f"{out.name}_inner")
            prod = g.producer[out.name]
            prod.output[list(prod.output).index(out.name)] = inner
            for u in g.consumers.get(out.name, []):
                u.input[list(u.input).index(out.name)] = inner
            g.node("Cast", [inner], [out.name], to=declared)
        else:
            out.type.tensor_type.elem_type = have
    del g.g.value_info[:]
    g.prune()
    g.toposort()
    return finish(model)
