"""Bias and skip fusions of the UNet transformer blocks into ONNX Runtime contrib ops.

- `fuse_skip_layernorm`: residual Add (and the projection bias Add before it) followed by
  LayerNormalization -> `com.microsoft.SkipLayerNormalization`, whose fourth output is the
  residual sum the next block adds to (CPU and CUDA kernels).
- `fuse_bias_split_gelu`: the GEGLU feed-forward, Add(bias) -> chunk(2) -> value * gelu(gate)
  with erf GELU, -> `com.microsoft.BiasSplitGelu` (CUDA only; its kernel takes hidden sizes
  2560, 5120 and 10240, which are SD/SDXL's 320/640/1280-channel levels).
"""

from __future__ import annotations

import math

import onnx

from latentrt.graphs._graph import MS_DOMAIN, Graph, attr, ensure_opset, finish

SPLIT_GELU_SIZES = (2560, 5120, 10240)


def _other(n: onnx.NodeProto, t: str) -> str:
    return n.input[1] if n.input[0] == t else n.input[0]


def _bias_add(g: Graph, t: str) -> tuple[str, str] | None:
    """(matmul output, 1-D bias) when `t` = Add(bias, MatMul(...)) read only once."""
    add = g.op(t, "Add")
    if add is None or g.only_consumer(t) is None:
        return None
    for a, b in (add.input, add.input[::-1]):
        c = g.const(b)
        if c is not None and c.ndim == 1 and g.op(a, "MatMul") is not None:
            return a, b
    return None


def fuse_skip_layernorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add(x, Add(bias, MatMul)) -> LayerNormalization(last axis) into SkipLayerNormalization."""
    g = Graph(model)
    drop = []
    for ln in [n for n in g.g.node if n.op_type == "LayerNormalization"]:
        if attr(ln, "axis", -1) != -1 or len(ln.input) < 3 or not ln.input[2]:
            continue
        if len([o for o in ln.output if o]) != 1:
            continue
        add = g.op(ln.input[0], "Add")
        if add is None or any(g.const(i) is not None for i in add.input):
            continue
        gamma, beta = g.const(ln.input[1]), g.const(ln.input[2])
        if gamma is None or beta is None or gamma.ndim != 1:
            continue
        inputs = [add.input[0], add.input[1], ln.input[1], ln.input[2]]
        removed = [ln]
        for k in (1, 0):
            hit = _bias_add(g, add.input[k])
            if hit is not None and g.const(hit[1]).shape == gamma.shape:
                inputs[0], inputs[1] = hit[0], add.input[1 - k]
                inputs.append(hit[1])
                removed.append(g.producer[add.input[k]])
                break
        sum_users = [u for u in g.consumers[add.output[0]] if u is not ln]
        keep_sum = bool(sum_users) or add.output[0] in g.outputs
        outs = [ln.output[0], "", "", g.fresh("skip_sum") if keep_sum else ""]
        while outs and not outs[-1]:
            outs.pop()
        node = g.node(
            "SkipLayerNormalization",
            inputs,
            outs,
            domain=MS_DOMAIN,
            epsilon=float(attr(ln, "epsilon", 1e-5)),
        )
        removed.append(add)
        if keep_sum:
            g.replace_uses(add.output[0], node.output[3])
        drop += removed
    g.remove(drop)
    if drop:
        ensure_opset(model, MS_DOMAIN)
    g.prune()
    g.toposort()
    return finish(model)


def _gelu_input(g: Graph, t: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """x when `t` is the exported erf GELU x * (erf(x / sqrt 2) + 1) * 0.5 (any operand order)."""
    half = g.op(t, "Mul")
    if half is None:
        return None
    c = g.const(half.input[1])
    inner = half.input[0]
    if c is None:
        c, inner = g.const(half.input[0]), half.input[1]
    if c is None or c.size != 1 or float(c) != 0.5:
        return None
    prod = g.op(inner, "Mul")
    if prod is None:
        return None
    for x, s in (prod.input, prod.input[::-1]):
        add = g.op(s, "Add")
        if add is None:
            continue
        one = g.const(add.input[1]) if g.op(add.input[0], "Erf") else g.const(add.input[0])
        erf = g.op(add.input[0], "Erf") or g.op(add.input[1], "Erf")
        if erf is None or one is None or float(one) != 1.0:
            continue
        div = g.op(erf.input[0], "Div")
        if div is None or div.input[0] != x:
            continue
        root2 = g.const(div.input[1])
        if root2 is None or abs(float(root2) - math.sqrt(2.0)) > 1e-3:  # fp16 rounds it
            continue
        return x, [half, prod, add, erf, div]
    return None


def _last_axis_slice(g: Graph, n: onnx.NodeProto | None) -> bool:
    if n is None or n.op_type != "Slice" or len(n.input) < 4:
        return False
    axes = g.const(n.input[3])
    steps = g.const(n.input[4]) if len(n.input) > 4 and n.input[4] else None
    return (
        axes is not None
        and axes.size == 1
        and int(axes[0]) in (-1, 2)
        and (steps is None or int(steps[0]) == 1)
    )


def _from_shape_of(g: Graph, t: str, source: str, depth: int = 6) -> bool:
    """Whether `t` is computed (through a few arithmetic nodes) from Shape(source)."""
    n = g.producer.get(t)
    if n is None or depth == 0:
        return False
    if n.op_type == "Shape":
        return n.input[0] == source
    return any(_from_shape_of(g, i, source, depth - 1) for i in n.input if i)


def _is_chunk2(g: Graph, left: onnx.NodeProto, right: onnx.NodeProto, width: int) -> bool:
    """left/right are x[..., :width/2] and x[..., width/2:] (constant or export-dynamic form)."""
    if not (_last_axis_slice(g, left) and _last_axis_slice(g, right)):
        return False
    start = g.const(left.input[1])
    if start is None or int(start[0]) != 0:
        return False
    ends, starts2, ends2 = (g.const(x) for x in (left.input[2], right.input[1], right.input[2]))
    if ends is not None and starts2 is not None and ends2 is not None:
        return int(ends[0]) == width // 2 == int(starts2[0]) and int(ends2[0]) >= width
    return right.input[1] == left.input[2] and _from_shape_of(g, left.input[2], left.input[0])


def fuse_bias_split_gelu(
    model: onnx.ModelProto, sizes: tuple[int, ...] = SPLIT_GELU_SIZES
) -> onnx.ModelProto:
    """GEGLU (Add bias, chunk, value * gelu(gate)) -> BiasSplitGelu where the width allows."""
    g = Graph(model)
    drop = []
    for mul in [n for n in g.g.node if n.op_type == "Mul"]:
        for left, right in (mul.input, mul.input[::-1]):
            gelu = _gelu_input(g, right)
            if gelu is None:
                continue
            gate, gelu_nodes = gelu
            sl, sr = g.op(left, "Slice"), g.op(gate, "Slice")
            if sl is None or sr is None or sl.input[0] != sr.input[0]:
                continue
            h = sl.input[0]
            users = [u for u in g.consumers[h] if u.op_type != "Shape"]
            hit = g.op(h, "Add") if len(users) == 2 else None
            if hit is None:
                continue
            bias = next((i for i in hit.input if g.const(i) is not None), None)
            mm = next((i for i in hit.input if g.op(i, "MatMul") is not None), None)
            if bias is None or mm is None or g.const(bias).ndim != 1:
                continue
            width = g.const(bias).size
            if width not in sizes or not _is_chunk2(g, sl, sr, width):
                continue
            hit = (mm, bias)
            node = g.node("BiasSplitGelu", [hit[0], hit[1]], domain=MS_DOMAIN)
            g.replace_uses(mul.output[0], node.output[0])
            drop += [mul, sl, sr, g.producer[sl.input[0]], *gelu_nodes]
            break
    g.remove(drop)
    if drop:
        ensure_opset(model, MS_DOMAIN)
    g.prune()
    g.toposort()
    return finish(model)
