"""GroupNorm(+SiLU) fusion, its plugin lowering, and transpose cancellation.

The exporters write `F.group_norm` (then SiLU) as

    Reshape(x, [0, G, -1]) -> InstanceNormalization(ones, zeros) -> Reshape(Shape(x))
      -> Mul(gamma[C,1,1]) -> Add(beta[C,1,1]) [-> Sigmoid, Mul]

`fuse_groupnorm` replaces that chain with one node:

- style "ort": ONNX Runtime's CUDA contrib op `com.microsoft.GroupNorm` (NHWC only, so the
  node sits between Transpose(0,2,3,1) and Transpose(0,3,1,2); gamma/beta stay float32 as
  the kernel requires; activation=1 folds the SiLU in). `cancel_transposes` then removes the
  transposes that meet an inverse one, and turns GroupNorm -> NCHW -> flatten -> (B, HW, C)
  (the transformer input) into one Reshape of the NHWC result.
- with `skip=True`, a GroupNorm whose input is an Add becomes `com.microsoft.SkipGroupNorm`,
  which adds in the same pass that normalizes: the resnet's time embedding (`conv1(h) +
  temb[:, :, None, None]`, a broadcast (N, C) skip), the residual (`shortcut + conv2(h)`, whose
  sum the kernel also writes for the next residual), and the transformer's output residual.
  The biases of the convolutions feeding that Add move into the op's bias input, so cuDNN's
  separate bias pass over those conv outputs disappears too.
- style "plugin": the project's own `latentrt.GroupNormSiLU` (NCHW) for TensorRT.

`expand_groupnorm_plugin` maps `latentrt.GroupNormSiLU` back to standard ONNX ops for targets
without the plugin (ort-cpu).
"""

from __future__ import annotations

import numpy as np
import onnx

from latentrt.graphs._graph import (
    MS_DOMAIN,
    PLUGIN_DOMAIN,
    Graph,
    attr,
    ensure_opset,
    finish,
    probe_shapes,
    shape_table,
)

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
STYLES = ("ort", "plugin")


def _match(g: Graph, inorm: onnx.NodeProto) -> dict | None:
    """The GroupNorm chain around one InstanceNormalization node, or None."""
    r1 = g.op(inorm.input[0], "Reshape")
    if r1 is None or g.only_consumer(r1.output[0]) is not inorm:
        return None
    target = g.const(r1.input[1])
    if target is None or target.shape != (3,) or target[2] != -1:
        return None
    groups = int(target[1])
    scale, bias = g.const(inorm.input[1]), g.const(inorm.input[2])
    if scale is None or bias is None or not (np.all(scale == 1) and np.all(bias == 0)):
        return None
    x = r1.input[0]
    r2 = g.only_consumer(inorm.output[0])
    if r2 is None or r2.op_type != "Reshape":
        return None
    shp = g.op(r2.input[1], "Shape")
    if shp is None or shp.input[0] != x:
        dims = shape_table(g.model).get(x)
        back = g.const(r2.input[1])
        if back is None or dims is None or list(back) != list(dims):
            return None
    mul = g.only_consumer(r2.output[0])
    if mul is None or mul.op_type != "Mul":
        return None
    gamma = g.const(mul.input[1] if mul.input[0] == r2.output[0] else mul.input[0])
    add = g.only_consumer(mul.output[0])
    if gamma is None or add is None or add.op_type != "Add":
        return None
    beta = g.const(add.input[1] if add.input[0] == mul.output[0] else add.input[0])
    if beta is None:
        return None
    channels = gamma.size
    if gamma.shape not in ((channels, 1, 1), (channels,)) or beta.size != channels:
        return None
    if channels % groups:
        return None
    nodes = [r1, inorm, r2, mul, add]
    out, silu = add.output[0], False
    users = g.consumers.get(add.output[0], [])
    if len(users) == 2 and add.output[0] not in g.outputs:
        sig = next((u for u in users if u.op_type == "Sigmoid"), None)
        prod = next((u for u in users if u.op_type == "Mul"), None)
        if sig is not None and prod is not None and set(prod.input) == {out, sig.output[0]}:
            if g.only_consumer(sig.output[0]) is prod:
                nodes += [sig, prod]
                out, silu = prod.output[0], True
    return {
        "x": x,
        "out": out,
        "nodes": nodes,
        "groups": groups,
        "epsilon": float(attr(inorm, "epsilon", 1e-5)),
        "gamma": gamma.reshape(channels).astype(np.float32),
        "beta": beta.reshape(channels).astype(np.float32),
        "silu": silu,
        "dtype": gamma.dtype,
    }


def _chain_only(g: Graph, t: str, chain: list[onnx.NodeProto]) -> bool:
    """True when every reader of `t` belongs to the GroupNorm chain (its Reshapes, or the
    Shape node only they read)."""
    ids = {id(n) for n in chain}
    for u in g.consumers.get(t, []):
        if id(u) in ids:
            continue
        if u.op_type != "Shape" or any(id(v) not in ids for v in g.consumers[u.output[0]]):
            return False
    return t not in g.outputs


def _biased_conv(g: Graph, t: str, add: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Conv producing `t` when it has a constant 1-D bias and only `add` reads `t`."""
    conv = g.op(t, "Conv")
    if conv is None or len(conv.input) < 3 or not conv.input[2] or g.only_consumer(t) is not add:
        return None
    bias = g.const(conv.input[2])
    return conv if bias is not None and bias.ndim == 1 else None


def _skip_add(g: Graph, x: str, probes: list[dict]) -> dict | None:
    """x = Add(a, b) that SkipGroupNorm can absorb: a and b both of x's 4-D shape, or one of
    them (N, C, 1, 1) unsqueezed from an (N, C) tensor. Shapes come from two probes."""
    add = g.op(x, "Add")
    if add is None or len(add.input) != 2 or add.input[0] == add.input[1]:
        return None
    if any(g.const(i) is not None for i in add.input):
        return None
    out = [p.get(x) for p in probes]
    if not probes or any(o is None or len(o) != 4 for o in out):
        return None

    def full(t: str) -> bool:
        return all(p.get(t) == o for p, o in zip(probes, out, strict=True))

    def per_channel(t: str) -> str | None:  # the (N, C) source of an (N, C, 1, 1) operand
        if not all(
            p.get(t) == [o[0], o[1], 1, 1] and o[2] * o[3] > 1
            for p, o in zip(probes, out, strict=True)
        ):
            return None
        while (u := g.op(t, "Unsqueeze")) is not None:
            t = u.input[0]
            if all(p.get(t) == o[:2] for p, o in zip(probes, out, strict=True)):
                return t
        return None

    a, b = add.input
    if not full(a):
        a, b = b, a
    if not full(a):
        return None
    skip = b if full(b) else per_channel(b)
    if skip is None:
        return None
    convs = [c for t in ((a, b) if skip == b else (a,)) if (c := _biased_conv(g, t, add))]
    return {"add": add, "x": a, "skip": skip, "broadcast": skip != b, "convs": convs}


def fuse_groupnorm(
    model: onnx.ModelProto, style: str = "ort", skip: bool = False
) -> onnx.ModelProto:
    """Replace every GroupNorm(+SiLU) chain with a fused node of `style` ("ort" or "plugin");
    with `skip` (style "ort"), fold the Add before it (and its conv biases) into SkipGroupNorm."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    g = Graph(model)
    ranks = {k: len(v) for k, v in shape_table(model).items()}
    inorms = [n for n in g.g.node if n.op_type == "InstanceNormalization"]
    probes = [probe_shapes(model, s) for s in (2, 3)] if skip and inorms else []
    drop = []
    for inorm in inorms:
        m = _match(g, inorm)
        if m is None:
            continue
        channels = m["gamma"].size
        if style == "ort":
            # the CUDA kernel wants 4-D NHWC input and an even number of channels per group
            if ranks.get(m["x"]) != 4 or (channels // m["groups"]) % 2:
                continue
            hit = _skip_add(g, m["x"], probes) if skip else None
            fused = _ort_node(g, m, hit, drop, probes)
        else:
            gamma = g.add_init(m["gamma"].astype(m["dtype"]), "gn_gamma")
            beta = g.add_init(m["beta"].astype(m["dtype"]), "gn_beta")
            fused = g.node(
                "GroupNormSiLU",
                [m["x"], gamma, beta],
                domain=PLUGIN_DOMAIN,
                num_groups=m["groups"],
                epsilon=m["epsilon"],
                activation=int(m["silu"]),
            )
        g.replace_uses(m["out"], fused.output[0])
        drop += m["nodes"]
    g.remove(drop)
    if drop:
        ensure_opset(model, MS_DOMAIN if style == "ort" else PLUGIN_DOMAIN)
    g.prune()
    g.toposort()
    return finish(model)


def _ort_node(
    g: Graph, m: dict, hit: dict | None, drop: list, probes: list[dict]
) -> onnx.NodeProto:
    """Transpose -> GroupNorm or SkipGroupNorm (NHWC) -> Transpose; returns the last one. The
    sum SkipGroupNorm writes replaces the Add's output for its other readers (and probes)."""
    attrs = dict(
        domain=MS_DOMAIN,
        activation=int(m["silu"]),
        channels_last=1,
        epsilon=m["epsilon"],
        groups=m["groups"],
    )
    gamma = g.add_init(m["gamma"], "gn_gamma")
    beta = g.add_init(m["beta"], "gn_beta")
    if hit is None:
        t_in = g.node("Transpose", [m["x"]], perm=TO_NHWC)
        gn = g.node("GroupNorm", [t_in.output[0], gamma, beta], **attrs)
        return g.node("Transpose", [gn.output[0]], perm=TO_NCHW)
    t_in = g.node("Transpose", [hit["x"]], perm=TO_NHWC)
    skip = hit["skip"]
    if not hit["broadcast"]:
        skip = g.node("Transpose", [skip], perm=TO_NHWC).output[0]
    inputs = [t_in.output[0], gamma, beta, skip]
    if hit["convs"]:
        biases = [g.const(c.input[2]) for c in hit["convs"]]
        bias = np.sum(biases, axis=0, dtype=np.float32).astype(biases[0].dtype)
        inputs.append(g.add_init(bias, "sgn_bias"))
        for c in hit["convs"]:
            del c.input[2]
    keep_sum = not _chain_only(g, m["x"], m["nodes"])
    outs = [g.fresh("sgn_y")] + ([g.fresh("sgn_sum")] if keep_sum else [])
    gn = g.node("SkipGroupNorm", inputs, outs, **attrs)
    if keep_sum:
        total = g.node("Transpose", [gn.output[1]], perm=TO_NCHW)
        g.replace_uses(m["x"], total.output[0])
        for p in probes:
            p[total.output[0]] = p[m["x"]]
    drop.append(hit["add"])
    return g.node("Transpose", [gn.output[0]], perm=TO_NCHW)


def expand_groupnorm_plugin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower every `latentrt.GroupNormSiLU` (NCHW) to standard ONNX ops, exactly as exported."""
    g = Graph(model)
    drop = []
    for n in [n for n in g.g.node if n.domain == PLUGIN_DOMAIN and n.op_type == "GroupNormSiLU"]:
        if attr(n, "layout", "NCHW") not in ("NCHW", b"NCHW"):
            raise NotImplementedError("expanding a channels-last GroupNormSiLU is not supported")
        groups = int(attr(n, "num_groups"))
        eps = float(attr(n, "epsilon", 1e-5))
        x, gamma, beta = n.input[0], g.const(n.input[1]), g.const(n.input[2])
        if gamma is None or beta is None:
            raise NotImplementedError("GroupNormSiLU with non-constant gamma/beta")
        c = gamma.size
        dtype = gamma.dtype
        shape = g.add_init(np.array([0, groups, -1], np.int64), "gn_shape")
        ones = g.add_init(np.ones(groups, dtype), "gn_ones")
        zeros = g.add_init(np.zeros(groups, dtype), "gn_zeros")
        r1 = g.node("Reshape", [x, shape])
        inorm = g.node("InstanceNormalization", [r1.output[0], ones, zeros], epsilon=eps)
        shp = g.node("Shape", [x])
        r2 = g.node("Reshape", [inorm.output[0], shp.output[0]])
        mul = g.node("Mul", [r2.output[0], g.add_init(gamma.reshape(c, 1, 1), "gn_gamma")])
        out = g.node("Add", [mul.output[0], g.add_init(beta.reshape(c, 1, 1), "gn_beta")])
        if int(attr(n, "activation", 1)):
            sig = g.node("Sigmoid", [out.output[0]])
            out = g.node("Mul", [out.output[0], sig.output[0]])
        g.replace_uses(n.output[0], out.output[0])
        drop.append(n)
    g.remove(drop)
    g.prune()
    g.toposort()
    if not any(n.domain == PLUGIN_DOMAIN for n in model.graph.node):
        keep = [o for o in model.opset_import if o.domain != PLUGIN_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return finish(model)


def _compose(p: list[int], q: list[int]) -> list[int]:
    """The permutation of Transpose(q) applied after Transpose(p)."""
    return [p[i] for i in q]


def _is_flatten2(g: Graph, reshape: onnx.NodeProto) -> bool:
    """Reshape(t, Concat(Shape(t)[0:2], [-1])): flatten(2) of a 4-D tensor, in export form."""
    cat = g.op(reshape.input[1], "Concat")
    if cat is None or len(cat.input) != 2:
        return False
    tail = g.const(cat.input[1])
    sl = g.op(cat.input[0], "Slice")
    if tail is None or list(tail.reshape(-1)) != [-1] or sl is None or len(sl.input) < 3:
        return False
    shp = g.op(sl.input[0], "Shape")
    starts, ends = g.const(sl.input[1]), g.const(sl.input[2])
    axes = g.const(sl.input[3]) if len(sl.input) > 3 and sl.input[3] else None
    return (
        shp is not None
        and shp.input[0] == reshape.input[0]
        and starts is not None
        and ends is not None
        and list(starts) == [0]
        and list(ends) == [2]
        and (axes is None or list(axes) == [0])
    )


def _nhwc_channels(g: Graph, shapes: dict, t: str) -> int | None:
    """Channel count of a 4-D NHWC tensor (from shapes, or the GroupNorm producing it)."""
    gn = g.op(t, "GroupNorm") or g.op(t, "SkipGroupNorm")
    if gn is not None and g.const(gn.input[1]) is not None:
        return int(g.const(gn.input[1]).size)
    dims = shapes.get(t)
    if dims is None or len(dims) != 4 or not isinstance(dims[3], int) or dims[3] <= 0:
        return None
    return dims[3]


def cancel_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Transpose pairs that compose to the identity, and fold the NHWC GroupNorm ->
    NCHW -> flatten(2) -> (0,2,1) sequence of transformer inputs into one Reshape."""
    g = Graph(model)
    shapes = shape_table(model)
    drop = []
    for t2 in [n for n in g.g.node if n.op_type == "Transpose"]:
        if id(t2) in {id(d) for d in drop}:
            continue
        t1 = g.op(t2.input[0], "Transpose")
        if t1 is not None:
            p, q = list(attr(t1, "perm")), list(attr(t2, "perm"))
            if _compose(p, q) == list(range(len(p))):
                g.replace_uses(t2.output[0], t1.input[0])
                drop.append(t2)
                continue
        if list(attr(t2, "perm", [])) != [0, 2, 1]:
            continue
        reshape = g.op(t2.input[0], "Reshape")
        if reshape is None or g.only_consumer(reshape.output[0]) is not t2:
            continue
        t1 = g.op(reshape.input[0], "Transpose")
        if t1 is None or list(attr(t1, "perm")) != TO_NCHW or not _is_flatten2(g, reshape):
            continue
        channels = _nhwc_channels(g, shapes, t1.input[0])
        if channels is None:
            continue
        target = g.add_init(np.array([0, -1, channels], np.int64), "nhwc_tokens")
        flat = g.node("Reshape", [t1.input[0], target])
        g.replace_uses(t2.output[0], flat.output[0])
        drop.append(t2)
    g.remove(drop)
    g.prune()
    g.toposort()
    return finish(model)
