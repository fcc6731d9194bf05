"""The `latentrt` ONNX ops: torch emission (`plugin_ops`), lowering to standard ONNX, ORT CPU.

Oracles: the numpy references of `latentrt.plugins.reference` (written by the kernels engineer)
and PyTorch's own `F.conv3d` / `F.group_norm` / `F.silu`. A model exported inside `plugin_ops()`
must hold the counted `latentrt` nodes; after `lower_plugins` it must be checker-valid standard
ONNX (IR <= 13) whose ORT CPU outputs equal the plain export and torch within 1e-4.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentrt.errors import ExportError, InputError
from latentrt.export.custom_ops import (
    CUSTOM_OPSETS,
    conv3d,
    groupnorm_silu,
    plugin_ops,
    plugin_ops_enabled,
)
from latentrt.export.models.layers import GroupNormSiLU
from latentrt.export.models.vae import AutoencoderKL, VAEConfig
from latentrt.graphs.lower_plugins import count_plugin_nodes, lower_plugins
from latentrt.plugins.reference import conv3d_ref, groupnorm_silu_ref

TOL = 1e-4


def export(module: nn.Module, args: tuple, names: list[str], dynamic: dict, plugins: bool):
    """TorchScript export to an in-memory ModelProto, with or without plugin nodes."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), plugin_ops(plugins):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            buf,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["y"],
            dynamic_axes=dynamic,
            custom_opsets=CUSTOM_OPSETS,
        )
    return onnx.load_from_string(buf.getvalue())


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def assert_standard(model: onnx.ModelProto) -> None:
    assert count_plugin_nodes(model) == {}
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    assert model.ir_version <= 13
    onnx.checker.check_model(model, full_check=True)


# --- Conv3d --------------------------------------------------------------------------------------

CONV_CASES = {
    # name: (pads, strides, dilations, causal_time, bias)
    "symmetric": ((1, 1, 1, 1, 1, 1), (1, 1, 1), (1, 1, 1), 0, True),
    "asymmetric-strided": ((0, 2, 0, 1, 1, 2), (2, 1, 2), (1, 2, 1), 0, True),
    "causal-zeros": ((0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1, True),
    "causal-zeros-given": ((4, 0, 1, 0, 0, 1), (1, 2, 1), (2, 1, 1), 1, False),
    "causal-replicate": ((0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 2, True),
    "causal-replicate-strided": ((0, 0, 1, 0, 1, 0), (2, 2, 1), (2, 1, 1), 2, False),
}


class ConvModule(nn.Module):
    def __init__(self, pads, strides, dilations, causal, bias: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(5, 3, 3, 3, 2, generator=g) * 0.3)
        self.bias = nn.Parameter(torch.randn(5, generator=g)) if bias else None
        self.args = (pads, strides, dilations, causal)

    def forward(self, x):
        pads, strides, dilations, causal = self.args
        return conv3d(x, self.weight, self.bias, pads, strides, dilations, causal)


def _torch_oracle(x, w, b, pads, strides, dilations, causal):
    """F.pad (replicate-first-frame by indexing) then F.conv3d: PyTorch's own padding and conv."""
    p = list(pads)
    if causal:
        p[0], p[3] = dilations[0] * (w.shape[2] - 1), 0
    if causal == 2:
        x = x[:, :, [0] * p[0] + list(range(x.shape[2]))]
        p[0] = 0
    x = F.pad(x, (p[2], p[5], p[1], p[4], p[0], p[3]))
    return F.conv3d(x, w, b, stride=strides, dilation=dilations)


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv3d_torch_matches_references(case):
    pads, strides, dilations, causal, bias = CONV_CASES[case]
    m = ConvModule(pads, strides, dilations, causal, bias)
    x = torch.randn(2, 3, 7, 9, 8)
    with torch.no_grad():
        y = m(x).numpy()
        oracle = _torch_oracle(x, m.weight, m.bias, pads, strides, dilations, causal).numpy()
    b = None if m.bias is None else m.bias.detach().numpy()
    ref = conv3d_ref(x.numpy(), m.weight.detach().numpy(), b, pads, strides, dilations, causal)
    assert y.shape == ref.shape == oracle.shape
    assert np.abs(y - ref).max() <= 1e-5
    assert np.abs(y - oracle).max() <= 1e-5


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv3d_export_lowers_to_standard_onnx(case):
    pads, strides, dilations, causal, bias = CONV_CASES[case]
    m = ConvModule(pads, strides, dilations, causal, bias)
    dyn = {"x": {0: "b", 2: "t", 3: "h", 4: "w"}}
    x_trace = torch.randn(1, 3, 6, 8, 8)
    plugged = export(m, (x_trace,), ["x"], dyn, plugins=True)
    plain = export(m, (x_trace,), ["x"], dyn, plugins=False)
    assert count_plugin_nodes(plugged) == {"Conv3d": 1}
    assert count_plugin_nodes(plain) == {}
    lowered = lower_plugins(plugged)
    assert_standard(lowered)
    if causal == 2:
        pad = [n for n in lowered.graph.node if n.op_type == "Pad"]
        assert len(pad) == 1 and onnx.helper.get_attribute_value(pad[0].attribute[0]) == b"edge"
    x = torch.randn(2, 3, 9, 11, 7)  # other sizes than traced: dynamic axes survive lowering
    with torch.no_grad():
        want = m(x).numpy()
    got = run(lowered, x=x.numpy())
    assert np.abs(got - want).max() <= TOL
    assert np.abs(got - run(plain, x=x.numpy())).max() <= TOL


def test_conv3d_rejects_bad_causal_pads():
    w = torch.randn(2, 2, 3, 3, 3)
    with pytest.raises(InputError, match="causal_time"):
        conv3d(torch.randn(1, 2, 4, 5, 5), w, None, (1, 1, 1, 1, 1, 1), causal_time=1)


# --- GroupNormSiLU -------------------------------------------------------------------------------


def test_groupnorm_silu_torch_matches_references():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, 6, generator=g) * 3 + 1
    gamma, beta = torch.randn(12, generator=g), torch.randn(12, generator=g)
    for act in (True, False):
        y = groupnorm_silu(x, gamma, beta, 4, 1e-6, act)
        plain = F.group_norm(x, 4, gamma, beta, 1e-6)
        plain = F.silu(plain) if act else plain
        assert torch.equal(y, plain)  # default path is PyTorch's own math, bit for bit
        ref = groupnorm_silu_ref(x.numpy(), gamma.numpy(), beta.numpy(), 4, 1e-6, int(act))
        assert np.abs(y.numpy() - ref).max() <= 1e-5


class UNetLikeBlock(nn.Module):
    """conv, GroupNorm+SiLU, conv, plus a plain GroupNorm (activation 0) on the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 16, 3, padding=1)
        self.norm1 = GroupNormSiLU(4, 16, eps=1e-5)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.norm2 = GroupNormSiLU(8, 16, eps=1e-6, act=False)
        with torch.no_grad():
            for p in (self.norm1.weight, self.norm1.bias, self.norm2.weight, self.norm2.bias):
                p.add_(0.3 * torch.randn_like(p))

    def forward(self, x):
        h = self.conv1(x)
        return self.norm2(h + self.conv2(self.norm1(h)))


def _norm_attrs(model: onnx.ModelProto) -> list[dict]:
    return [
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in model.graph.node
        if n.domain == "latentrt"
    ]


def test_groupnorm_silu_block_lowers_to_standard_onnx():
    torch.manual_seed(0)
    m = UNetLikeBlock().eval()
    dyn = {"x": {0: "b", 2: "h", 3: "w"}}
    plugged = export(m, (torch.randn(1, 4, 8, 8),), ["x"], dyn, plugins=True)
    plain = export(m, (torch.randn(1, 4, 8, 8),), ["x"], dyn, plugins=False)
    assert count_plugin_nodes(plugged) == {"GroupNormSiLU": 2}
    attrs = sorted(_norm_attrs(plugged), key=lambda a: a["num_groups"])
    assert [(a["num_groups"], a["activation"]) for a in attrs] == [(4, 1), (8, 0)]
    assert attrs[0]["epsilon"] == pytest.approx(1e-5) and attrs[1]["epsilon"] == pytest.approx(1e-6)
    lowered = lower_plugins(plugged)
    assert_standard(lowered)
    x = torch.randn(3, 4, 10, 6)
    with torch.no_grad():
        want = m(x).numpy()
    got = run(lowered, x=x.numpy())
    assert np.abs(got - want).max() <= TOL
    assert np.abs(got - run(plain, x=x.numpy())).max() <= TOL


def test_groupnorm_silu_5d_lowering():
    class Norm5d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = GroupNormSiLU(2, 6)
            nn.init.normal_(self.norm.weight)
            nn.init.normal_(self.norm.bias)

        def forward(self, x):
            return self.norm(x)

    m = Norm5d().eval()
    lowered = lower_plugins(export(m, (torch.randn(1, 6, 2, 3, 4),), ["x"], {}, plugins=True))
    x = torch.randn(1, 6, 2, 3, 4)
    g, b = m.norm.weight.detach().numpy(), m.norm.bias.detach().numpy()
    ref = groupnorm_silu_ref(x.numpy(), g, b, 2, 1e-6, 1, layout="NCDHW")
    assert np.abs(run(lowered, x=x.numpy()) - ref).max() <= TOL


def test_sd_vae_decoder_with_plugin_nodes():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        VAEConfig(block_out_channels=(32, 64), norm_num_groups=8, layers_per_block=1)
    )
    with torch.no_grad():
        for p in vae.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))

    class Decode(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z)

    m = Decode().eval()
    fused = sum(isinstance(mod, GroupNormSiLU) for mod in vae.decoder.modules())
    dyn = {"z": {0: "b", 2: "h", 3: "w"}}
    plugged = export(m, (torch.randn(1, 4, 8, 8),), ["z"], dyn, plugins=True)
    assert count_plugin_nodes(plugged) == {"GroupNormSiLU": fused}
    lowered = lower_plugins(plugged)
    assert_standard(lowered)
    z = torch.randn(2, 4, 6, 10)
    with torch.no_grad():
        want = m(z).numpy()
    assert np.abs(run(lowered, z=z.numpy()) - want).max() <= TOL


# --- the context manager and lowering errors -----------------------------------------------------


def test_plugin_ops_context_nests_and_restores():
    assert not plugin_ops_enabled()
    with pytest.raises(RuntimeError), plugin_ops():
        assert plugin_ops_enabled()
        with plugin_ops(False):
            assert not plugin_ops_enabled()
        assert plugin_ops_enabled()
        raise RuntimeError
    assert not plugin_ops_enabled()


def _one_node_model(op_type: str, **attrs) -> onnx.ModelProto:
    h = onnx.helper
    node = h.make_node(op_type, ["x", "w", "b"], ["y"], domain="latentrt", **attrs)
    w = onnx.numpy_helper.from_array(np.zeros((2, 2, 3, 1, 1), np.float32), "w")
    b = onnx.numpy_helper.from_array(np.zeros(2, np.float32), "b")
    graph = h.make_graph(
        [node],
        "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 3, 3])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 3, 3])],
        [w, b],
    )
    return h.make_model(
        graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("latentrt", 1)]
    )


def test_lowering_refuses_unknown_ops_and_bad_causal_pads():
    with pytest.raises(ExportError, match="no lowering"):
        lower_plugins(_one_node_model("Attention3d"))
    bad = _one_node_model("Conv3d", pads=[1, 0, 0, 1, 0, 0], causal_time=1)
    with pytest.raises(ExportError, match="causal_time pads time"):
        lower_plugins(bad)
    good = lower_plugins(_one_node_model("Conv3d", pads=[2, 0, 0, 0, 0, 0], causal_time=1))
    assert [n.op_type for n in good.graph.node] == ["Conv"]
