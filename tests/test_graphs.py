"""graphs/ passes on CPU: fused-node counts, valid models (checker, IR <= 13), and unchanged
outputs on ONNX Runtime CPU for every rewrite the CPU can run.

The graphs are exported from the reference tree (small configs with SD's structure: 32-group
GroupNorm with 2+ channels per group, conv and linear transformer projections, depth-2
transformers, VAE mid-block attention). The numerical oracle is the unmodified exported graph
on ORT CPU; the contrib GroupNorm (CUDA only) is checked through ONNX's reference evaluator
with the op computed by PyTorch's F.group_norm, and on the GPU in test_ort_cuda.py.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from latentrt.export import onnx as ox
from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel
from latentrt.export.models.unet import FeedForward, UNet2DCondition, UNetConfig
from latentrt.export.models.vae import AutoencoderKL, VAEConfig
from latentrt.export.tiny import configs
from latentrt.graphs import (
    cancel_transposes,
    cleanup,
    convert_fp16,
    expand_groupnorm_plugin,
    fix_shapes,
    fuse_attention,
    fuse_bias_split_gelu,
    fuse_groupnorm,
    fuse_skip_layernorm,
    optimize,
)
from latentrt.graphs._graph import MAX_IR_VERSION, Graph, attr, check_model, count_ops

UNET = {
    "block_out_channels": [64, 128],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": [2, 4],
    "cross_attention_dim": 32,
    "norm_num_groups": 32,
}
# Transformer2D modules: down level 0 (1), mid (1), up level 0 (layers + 1 = 2); the linear
# variant has depth 2 at level 0, so 2 + 1 + 4 transformer blocks.
N_TRANSFORMERS = 4
N_BLOCKS = {"unet_conv": 4, "unet_linear": 7}


def _unet(linear: bool) -> UNet2DCondition:
    cfg = dict(
        UNET, use_linear_projection=linear, transformer_layers_per_block=[2 if linear else 1, 1]
    )
    return UNet2DCondition(UNetConfig.from_diffusers(cfg))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(0)
    ox.export_unet(_unet(False), d / "unet_conv.onnx", "fp32")
    ox.export_unet(_unet(True), d / "unet_linear.onnx", "fp32")
    vae = {"block_out_channels": [64, 64], "layers_per_block": 1, "norm_num_groups": 32}
    vae |= {
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
    }
    ox.export_vae_decoder(AutoencoderKL(VAEConfig.from_diffusers(vae)), d / "vae.onnx", "fp32")
    text = configs("tiny")[0]
    ox.export_text_encoder(
        CLIPTextModel(CLIPTextConfig.from_transformers(text)), d / "te.onnx", "fp32"
    )
    ff = FeedForward(320)
    torch.onnx.export(
        ff,
        (torch.randn(2, 16, 320),),
        str(d / "ff.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b", 1: "n"}},
    )
    return d


def _feeds(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name.startswith("unet"):
        return {
            "sample": rng.standard_normal((2, 4, 16, 16), dtype=np.float32),
            "timestep": np.array([999.0, 10.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
        }
    if name == "vae":
        return {"latent": rng.standard_normal((1, 4, 16, 16), dtype=np.float32)}
    if name == "ff":
        return {"x": rng.standard_normal((2, 16, 320), dtype=np.float32)}
    ids = rng.integers(0, 49406, (2, 77))
    ids[:, 0], ids[:, -1] = 49406, 49407
    return {"input_ids": ids.astype(np.int64)}


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _load(models, name: str) -> onnx.ModelProto:
    return onnx.load(str(models / f"{name}.onnx"))


def _valid(model: onnx.ModelProto) -> None:
    check_model(model)
    onnx.checker.check_model(model, full_check=False)
    assert model.ir_version <= MAX_IR_VERSION
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))


def _same(models, name: str, model: onnx.ModelProto, tol: float) -> None:
    feeds = _feeds(name)
    ref = _run(_load(models, name), feeds)
    got = _run(model, feeds)
    assert len(ref) == len(got)
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape and np.abs(r - g).max() <= tol


def _groupnorms(model: onnx.ModelProto) -> int:
    return count_ops(model).get("InstanceNormalization", 0)


@pytest.mark.parametrize("name", ["unet_conv", "unet_linear", "vae", "te"])
def test_cleanup_preserves_outputs(models, name):
    before = _load(models, name)
    model = cleanup(copy.deepcopy(before))
    _valid(model)
    assert len(model.graph.node) < len(before.graph.node)
    ops = count_ops(model)
    assert "Identity" not in ops and "Constant" not in ops
    _same(models, name, model, 1e-5)


def test_fix_shapes_folds_every_shape_computation(models):
    model = fix_shapes(
        _load(models, "unet_conv"), {"batch": 2, "height": 16, "width": 16, "sequence": 77}
    )
    _valid(model)
    assert "Shape" not in count_ops(model)
    _same(models, "unet_conv", model, 1e-5)


@pytest.mark.parametrize("name", ["unet_conv", "unet_linear", "vae"])
def test_attention_fusion(models, name):
    model = fuse_attention(cleanup(_load(models, name)))
    _valid(model)
    ops = count_ops(model)
    expected = 1 if name == "vae" else 2 * N_BLOCKS[name]  # self + cross per block
    assert ops["com.microsoft.MultiHeadAttention"] == expected
    assert "Softmax" not in ops
    _same(models, name, model, 1e-4)


def test_packed_attention_structure(models):
    model = fuse_attention(cleanup(_load(models, "unet_linear")), pack=True)
    _valid(model)
    mha = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    self_attn = [n for n in mha if len(n.input) == 3 and n.input[1] == "" and n.input[2] == ""]
    cross = [n for n in mha if n.input[1] and n.input[2] == ""]
    assert len(self_attn) == len(cross) == len(mha) // 2 == N_BLOCKS["unet_linear"]
    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    reshape = {n.output[0]: n for n in model.graph.node if n.op_type == "Reshape"}
    for n in self_attn:
        assert list(shapes[reshape[n.input[0]].input[1]])[2:4] in ([2, 3], [4, 3])
    for n in cross:
        assert list(shapes[reshape[n.input[1]].input[1]])[3] == 2


@pytest.mark.parametrize("name", ["unet_conv", "unet_linear", "te"])
def test_skip_layernorm_fusion(models, name):
    base = fuse_attention(cleanup(_load(models, name)))
    lns = count_ops(base)["LayerNormalization"]
    model = fuse_skip_layernorm(base)
    _valid(model)
    ops = count_ops(model)
    fused = ops["com.microsoft.SkipLayerNormalization"]
    assert fused + ops.get("LayerNormalization", 0) == lns
    if name == "te":  # all but the first layer's LN1, which follows the embedding sum
        assert fused == lns - 1
    else:  # all but each transformer's first norm1 fuse with the residual add before them
        assert fused == lns - N_TRANSFORMERS
    _same(models, name, model, 1e-4)


class GroupNorm(OpRun):
    """com.microsoft.GroupNorm (NHWC) computed by PyTorch, for the reference evaluator."""

    op_domain = "com.microsoft"

    def _run(self, x, gamma, beta, activation=0, channels_last=1, epsilon=1e-5, groups=32):
        return (_group_norm(x, gamma, beta, activation, channels_last, epsilon, groups),)


class SkipGroupNorm(OpRun):
    """com.microsoft.SkipGroupNorm (NHWC): GroupNorm of x + skip (+ bias), and that sum; an
    (N, C) skip broadcasts over H and W (ORT's contrib-op schema)."""

    op_domain = "com.microsoft"

    def _run(self, x, gamma, beta, skip, bias=None, activation=0, channels_last=1, epsilon=1e-5, groups=32):  # fmt: skip
        total = x + (skip[:, None, None, :] if skip.ndim == 2 else skip)
        total = total if bias is None else total + bias
        return _group_norm(total, gamma, beta, activation, channels_last, epsilon, groups), total


class MultiHeadAttention(OpRun):
    """com.microsoft.MultiHeadAttention with separate (B, S, H*d) q, k, v, by PyTorch's SDPA."""

    op_domain = "com.microsoft"

    def _run(self, q, k, v, *unused, num_heads=1, scale=None, **attrs):
        assert not any(u is not None for u in unused), "only q, k, v are fused here"

        def heads(t):  # (B, S, H*d) -> (B, H, S, d)
            t = torch.from_numpy(np.array(t)).double()
            return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)
        return (o.transpose(1, 2).flatten(2).numpy().astype(q.dtype),)


class SkipLayerNormalization(OpRun):
    """com.microsoft.SkipLayerNormalization: LayerNorm(x + skip (+ bias)), and that sum."""

    op_domain = "com.microsoft"

    def _run(self, x, skip, gamma, beta=None, bias=None, epsilon=1e-12):
        total = x + skip if bias is None else x + skip + bias
        t = torch.from_numpy(np.array(total)).double()
        g = torch.from_numpy(gamma).double()
        b = None if beta is None else torch.from_numpy(beta).double()
        y = F.layer_norm(t, t.shape[-1:], g, b, epsilon).numpy().astype(x.dtype)
        mean = t.mean(-1, keepdim=True)
        inv_std = (t.var(-1, unbiased=False, keepdim=True) + epsilon).rsqrt()
        return y, mean.numpy().astype(x.dtype), inv_std.numpy().astype(x.dtype), total


class BiasSplitGelu(OpRun):
    """com.microsoft.BiasSplitGelu: (x + bias) split in halves, first * gelu(second) (erf)."""

    op_domain = "com.microsoft"

    def _run(self, x, bias):
        value, gate = torch.from_numpy(np.array(x + bias)).double().chunk(2, dim=-1)
        return ((value * F.gelu(gate)).numpy().astype(x.dtype),)


CONTRIB = [GroupNorm, SkipGroupNorm, MultiHeadAttention, SkipLayerNormalization, BiasSplitGelu]


def _evaluate(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    """The first output through ONNX's reference evaluator with the contrib ops above. Unused
    optional outputs get names of their own: the evaluator would store them under "", which
    every omitted optional input reads."""
    model = copy.deepcopy(model)
    for n in model.graph.node:
        for k, o in enumerate(n.output):
            if not o:
                n.output[k] = f"{n.name}__unused{k}"
    return ReferenceEvaluator(model, new_ops=CONTRIB).run(None, feeds)[0]


def _group_norm(x, gamma, beta, activation, channels_last, epsilon, groups) -> np.ndarray:
    assert channels_last == 1 and gamma.dtype == np.float32 and beta.dtype == np.float32
    t = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).double()
    g, b = torch.from_numpy(gamma).double(), torch.from_numpy(beta).double()
    y = F.group_norm(t, groups, g, b, epsilon)
    y = F.silu(y) if activation == 1 else y
    return y.permute(0, 2, 3, 1).numpy().astype(x.dtype)


def _biased_convs(model: onnx.ModelProto) -> int:
    return sum(
        n.op_type == "Conv" and len(n.input) > 2 and bool(n.input[2]) for n in model.graph.node
    )


@pytest.mark.parametrize("skip", [False, True], ids=["groupnorm", "skipgroupnorm"])
@pytest.mark.parametrize("name", ["unet_linear", "vae"])
def test_groupnorm_fusion_ort(models, name, skip):
    base = cleanup(_load(models, name))
    n_gn = _groupnorms(base)
    n_silu = count_ops(base)["Sigmoid"]
    n_biased = _biased_convs(base)
    n_add, n_gemm = count_ops(base)["Add"], count_ops(base).get("Gemm", 0)
    model = cancel_transposes(fuse_groupnorm(base, "ort", skip=skip))
    _valid(model)
    ops = count_ops(model)
    n_skip = ops.get("com.microsoft.SkipGroupNorm", 0)
    assert ops["com.microsoft.GroupNorm"] + n_skip == n_gn and "InstanceNormalization" not in ops
    norms = [n for n in model.graph.node if n.op_type in ("GroupNorm", "SkipGroupNorm")]
    acts = [attr(n, "activation") for n in norms]
    assert 0 < sum(acts) < len(acts)  # resnet norms carry SiLU, attention norms do not
    assert sum(acts) + ops.get("Sigmoid", 0) == n_silu  # each fused SiLU took one Sigmoid
    if skip:
        fused = [n for n in norms if n.op_type == "SkipGroupNorm"]
        with_sum = sum(len(n.output) == 2 for n in fused)
        bias_inputs = sum(len(n.input) == 5 for n in fused)
        assert 0 < with_sum < len(fused)  # residual sums feed on; norm-only adds write none
        assert _biased_convs(model) < n_biased - bias_inputs + 1  # conv biases moved in
        # the resnets' time embeddings: one (N, C) skip per time_emb_proj Gemm
        temb = sum(1 for n in fused if Graph(model).op(n.input[3], "Gemm") is not None)
        assert temb == (n_gemm - 2 if name.startswith("unet") else 0)  # 2: the time MLP
        assert ops["Add"] == n_add - n_gn - len(fused)  # each norm's beta Add, each skip Add
    else:
        assert n_skip == 0 and _biased_convs(model) == n_biased
    feeds = _feeds(name)
    got = _evaluate(model, feeds)
    assert np.abs(got - _run(_load(models, name), feeds)[0]).max() <= 1e-4
    if name == "unet_linear":  # transformer inputs read the NHWC GroupNorm without transposes
        plain = fuse_groupnorm(cleanup(_load(models, name)), "ort", skip=skip)
        assert ops["Transpose"] < count_ops(plain)["Transpose"]


def test_groupnorm_plugin_and_expansion(models):
    base = cleanup(_load(models, "unet_conv"))
    plugin = fuse_groupnorm(copy.deepcopy(base), "plugin")
    _valid(plugin)
    assert count_ops(plugin)["latentrt.GroupNormSiLU"] == _groupnorms(base)
    assert any(o.domain == "latentrt" for o in plugin.opset_import)
    lowered = expand_groupnorm_plugin(plugin)
    _valid(lowered)
    assert "latentrt.GroupNormSiLU" not in count_ops(lowered)
    _same(models, "unet_conv", lowered, 1e-5)


def test_fp16_keeps_fp32_where_needed(models):
    model = convert_fp16(cleanup(_load(models, "unet_conv")))
    _valid(model)
    fp16_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    big_fp32 = [
        t
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 64
    ]
    assert fp16_weights and not big_fp32
    assert all(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        for v in model.graph.input
        if v.name != "timestep"
    )
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types |= {t.name: t.data_type for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("InstanceNormalization", "Softmax", "Sin", "Cos"):
            assert all(
                types.get(i, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for i in n.input
            )
    feeds = _feeds("unet_conv")
    ref = _run(_load(models, "unet_conv"), feeds)[0]
    got = _run(model, feeds)[0]
    assert np.isfinite(got).all() and np.abs(got - ref).max() <= 2e-2


def test_bias_split_gelu(models):
    model = fuse_bias_split_gelu(cleanup(_load(models, "ff")))
    _valid(model)
    ops = count_ops(model)
    assert ops == {"MatMul": 2, "com.microsoft.BiasSplitGelu": 1, "Add": 1}
    node = next(n for n in model.graph.node if n.op_type == "BiasSplitGelu")
    bias = next(t for t in model.graph.initializer if t.name == node.input[1])
    assert list(bias.dims) == [2560]
    narrow = fuse_bias_split_gelu(cleanup(_load(models, "unet_conv")))  # 512 wide: no kernel
    assert "com.microsoft.BiasSplitGelu" not in count_ops(narrow)


@pytest.mark.parametrize("name", ["unet_linear", "unet_conv", "vae", "ff"])
def test_ort_cuda_recipe_keeps_outputs(models, name):
    """The whole ort-cuda recipe at fp32 (every fusion, CUDA-only contrib ops included) computes
    what the exported graph does; the contrib ops follow ORT's schemas, computed by PyTorch."""
    model = optimize(_load(models, name), "ort-cuda", precision="fp32")
    _valid(model)
    fused = {k for k in count_ops(model) if k.startswith("com.microsoft.")}
    expected = {
        "unet_linear": {
            "GroupNorm",
            "SkipGroupNorm",
            "MultiHeadAttention",
            "SkipLayerNormalization",
        },
        "unet_conv": {"GroupNorm", "SkipGroupNorm", "MultiHeadAttention", "SkipLayerNormalization"},
        "vae": {"GroupNorm", "SkipGroupNorm", "MultiHeadAttention"},
        "ff": {"BiasSplitGelu"},
    }[name]
    assert fused == {f"com.microsoft.{op}" for op in expected}
    feeds = _feeds(name)
    got = _evaluate(model, feeds)
    ref = _run(_load(models, name), feeds)[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize(
    "target", ["ort-cpu", "ort-cuda", pytest.param("tensorrt", id="plugin-recipe")]
)
def test_recipes(models, target):
    model = optimize(_load(models, "unet_linear"), target)
    _valid(model)
    ops = count_ops(model)
    if target == "ort-cpu":
        assert ops["com.microsoft.MultiHeadAttention"] == 2 * N_BLOCKS["unet_linear"]
        assert "com.microsoft.GroupNorm" not in ops
        _same(models, "unet_linear", model, 1e-4)
    elif target == "ort-cuda":
        assert ops["com.microsoft.GroupNorm"] + ops["com.microsoft.SkipGroupNorm"] == 21
        assert ops["com.microsoft.MultiHeadAttention"] == 2 * N_BLOCKS["unet_linear"]
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    else:
        assert ops["latentrt.GroupNormSiLU"] == 21
