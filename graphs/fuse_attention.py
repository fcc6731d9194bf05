"""Attention fusion into ONNX Runtime's `com.microsoft.MultiHeadAttention` (self and cross).

`F.scaled_dot_product_attention` is exported as MatMul(q*s, k^T*s) -> Softmax -> MatMul(., v)
with s = sqrt(1/sqrt(head_dim)) computed from the shape. Two layouts occur here:

- multi-head (UNet transformers): q/k/v are projections (B, N, H*d) reshaped to (B, N, H, d) and
  transposed to (B, H, N, d) (k to (B, H, d, S)); the result is transposed back and flattened;
- single-head (VAE mid-block): (B, 1, N, C) projections, k transposed (0, 1, 3, 2), and the
  head axis dropped again with Gather(axis=1, 0).

Each becomes one MultiHeadAttention(q, k, v; num_heads) on (B, N, H*d) tensors. With
`pack=True` the separate bias-free projections are packed into one MatMul: self-attention
q/k/v into a (B, N, H, 3, d) tensor, cross-attention k/v into (B, S, H, 2, d). ORT's CUDA
kernel then unpacks them again before attending (AddBiasUnpack), which cost more than the
packed GEMM saved on an H100 (BENCHMARKS.md), so no recipe packs now. MultiHeadAttention's
CPU kernel takes only the unpacked form.
"""

from __future__ import annotations

import numpy as np
import onnx

from latentrt.graphs._graph import MS_DOMAIN, Graph, attr, ensure_opset, finish


def _perm(n: onnx.NodeProto | None) -> list[int] | None:
    return None if n is None else list(attr(n, "perm", []))


def _strip_scale(g: Graph, t: str) -> tuple[str, str | None]:
    """(tensor before an optional Mul by a scalar, the scalar's name)."""
    mul = g.op(t, "Mul")
    if mul is None or g.only_consumer(t) is None:
        return t, None
    for a, b in (mul.input, mul.input[::-1]):
        c = g.const(b)
        if c is not None and c.size == 1:
            return a, b
        if g.op(b, "Sqrt") is not None:
            return a, b
    return t, None


def _scale(g: Graph, sa: str | None, sb: str | None, q: str) -> float | None | bool:
    """The softmax scale: a float, None for the default 1/sqrt(d), False when not recognized."""
    if sa is None and sb is None:
        return 1.0
    ca = g.const(sa) if sa else np.float32(1.0)
    cb = g.const(sb) if sb else np.float32(1.0)
    if ca is not None and cb is not None:
        return float(np.asarray(ca).reshape(-1)[0] * np.asarray(cb).reshape(-1)[0])
    if sa is None or sb is None:
        return False
    # both factors sqrt(1 / sqrt(q.shape[-1])), computed from the shape at run time
    roots = [g.op(s, "Sqrt") for s in (sa, sb)]
    if any(r is None for r in roots) or roots[0].input[0] != roots[1].input[0]:
        return False
    t = roots[0].input[0]
    t = g.op(t, "Cast").input[0] if g.op(t, "Cast") is not None else t
    div = g.op(t, "Div")
    if div is None or g.const(div.input[0]) is None or float(g.const(div.input[0])) != 1.0:
        return False
    root = g.op(div.input[1], "Sqrt")
    if root is None:
        return False
    t = root.input[0]
    t = g.op(t, "Cast").input[0] if g.op(t, "Cast") is not None else t
    sl = g.op(t, "Slice")
    shp = g.op(sl.input[0], "Shape") if sl is not None else None
    start = g.const(sl.input[1]) if sl is not None else None
    if shp is None or shp.input[0] != q or start is None or list(start) != [-1]:
        return False
    return None


def _heads(g: Graph, reshape: onnx.NodeProto) -> tuple[int, int] | None:
    """(heads, head_dim) from a (B, N, H, d) reshape target (constant or export Concat)."""
    target = g.const(reshape.input[1])
    if target is not None and target.size == 4 and target[2] > 0 and target[3] > 0:
        return int(target[2]), int(target[3])
    cat = g.op(reshape.input[1], "Concat")
    if cat is None:
        return None
    for i in cat.input:
        c = g.const(i)
        if c is not None and c.size == 2 and np.all(c > 0):
            return int(c[0]), int(c[1])
    return None


def _match(g: Graph, softmax: onnx.NodeProto) -> dict | None:
    if attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores = g.op(softmax.input[0], "MatMul")
    pv = g.only_consumer(softmax.output[0])
    if scores is None or pv is None or pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        return None
    if g.only_consumer(scores.output[0]) is not softmax:
        return None
    qa, sa = _strip_scale(g, scores.input[0])
    kb, sb = _strip_scale(g, scores.input[1])
    kt = g.op(kb, "Transpose")
    nodes = [scores, softmax, pv, kt]
    nodes += [g.producer[x] for x in (scores.input[0], scores.input[1]) if x not in (qa, kb)]
    user = g.only_consumer(pv.output[0])
    if kt is None or user is None:
        return None
    if _perm(kt) == [0, 2, 3, 1]:  # multi-head layout
        qt, vt = g.op(qa, "Transpose"), g.op(pv.input[1], "Transpose")
        if _perm(qt) != [0, 2, 1, 3] or _perm(vt) != [0, 2, 1, 3] or _perm(user) != [0, 2, 1, 3]:
            return None
        rq, rk, rv = (g.op(t.input[0], "Reshape") for t in (qt, kt, vt))
        outs = [u for u in g.consumers.get(user.output[0], []) if u.op_type != "Shape"]
        out = outs[0] if len(outs) == 1 and user.output[0] not in g.outputs else None
        if None in (rq, rk, rv) or out is None or out.op_type != "Reshape":
            return None
        hq, hk, hv = (_heads(g, r) for r in (rq, rk, rv))
        if hq is None or hq != hk or hq != hv:
            return None
        scale = _scale(g, sa, sb, qt.output[0])
        if scale is False:
            return None
        nodes += [qt, vt, user, rq, rk, rv, out]
        return {
            "q": rq.input[0],
            "k": rk.input[0],
            "v": rv.input[0],
            "heads": hq[0],
            "head_dim": hq[1],
            "scale": scale,
            "out": out.output[0],
            "nodes": nodes,
            "squeeze": False,
        }
    if _perm(kt) == [0, 1, 3, 2]:  # single head with an explicit unit head axis
        if user.op_type != "Gather" or attr(user, "axis", 0) != 1:
            return None
        idx = g.const(user.input[1])
        if idx is None or idx.ndim != 0 or int(idx) != 0:
            return None
        scale = _scale(g, sa, sb, qa)
        if scale is False:
            return None
        nodes.append(user)
        return {
            "q": qa,
            "k": kt.input[0],
            "v": pv.input[1],
            "heads": 1,
            "head_dim": None,
            "scale": scale,
            "out": user.output[0],
            "nodes": nodes,
            "squeeze": True,
        }
    return None


def _bias_free_proj(g: Graph, t: str) -> tuple[str, np.ndarray] | None:
    """(input, weight) when `t` is MatMul(input, constant 2-D weight)."""
    mm = g.op(t, "MatMul")
    if mm is None:
        return None
    w = g.const(mm.input[1])
    return None if w is None or w.ndim != 2 else (mm.input[0], w)


def _pack(g: Graph, m: dict) -> tuple[list[str], bool]:
    """MHA inputs with packed projections where the pattern allows; (inputs, packed?)."""
    heads, d = m["heads"], m["head_dim"]
    projs = [_bias_free_proj(g, m[k]) for k in ("q", "k", "v")]
    if d is None or any(p is None for p in projs[1:]):
        return [m["q"], m["k"], m["v"]], False
    (xk, wk), (xv, wv) = projs[1], projs[2]
    if xk != xv:
        return [m["q"], m["k"], m["v"]], False
    c = wk.shape[0]
    if projs[0] is not None and projs[0][0] == xk:  # self-attention: q, k, v from one input
        wq = projs[0][1]
        w = np.stack([x.reshape(c, heads, d) for x in (wq, wk, wv)], axis=2).reshape(c, -1)
        mm = g.node("MatMul", [xk, g.add_init(w, "qkv_weight")])
        shape = g.add_init(np.array([0, 0, heads, 3, d], np.int64), "qkv_shape")
        packed = g.node("Reshape", [mm.output[0], shape])
        return [packed.output[0], "", ""], True
    w = np.stack([x.reshape(c, heads, d) for x in (wk, wv)], axis=2).reshape(c, -1)
    mm = g.node("MatMul", [xk, g.add_init(w, "kv_weight")])
    shape = g.add_init(np.array([0, 0, heads, 2, d], np.int64), "kv_shape")
    packed = g.node("Reshape", [mm.output[0], shape])
    return [m["q"], packed.output[0], ""], True


def fuse_attention(model: onnx.ModelProto, pack: bool = False) -> onnx.ModelProto:
    """Replace exported scaled-dot-product attention with MultiHeadAttention nodes."""
    g = Graph(model)
    drop: list[onnx.NodeProto] = []
    fused = 0
    for softmax in [n for n in g.g.node if n.op_type == "Softmax"]:
        m = _match(g, softmax)
        if m is None:
            continue
        if m["squeeze"]:
            axes = g.add_init(np.array([1], np.int64), "head_axis")
            inputs = [g.node("Squeeze", [m[k], axes]).output[0] for k in ("q", "k", "v")]
        elif pack:
            inputs, _ = _pack(g, m)
        else:
            inputs = [m["q"], m["k"], m["v"]]
        extra = {} if m["scale"] is None else {"scale": float(m["scale"])}
        mha = g.node("MultiHeadAttention", inputs, domain=MS_DOMAIN, num_heads=m["heads"], **extra)
        g.replace_uses(m["out"], mha.output[0])
        drop += m["nodes"]
        fused += 1
    g.remove(drop)
    if fused:
        ensure_opset(model, MS_DOMAIN)
    g.prune()
    g.toposort()
    return finish(model)
