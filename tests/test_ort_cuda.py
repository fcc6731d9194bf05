"""ort-cuda on the GPU: fp16 engines from the graphs/ recipe against fp32 PyTorch / fp32 ONNX.

The models are small but wide enough that every fusion the recipe makes on SD UNets fires:
320/640 channels (BiasSplitGelu's widths), 64-dim heads (MultiHeadAttention), 2+
channels per GroupNorm group (the fused GroupNorm kernel). Oracles: the PyTorch reference
tree in fp32 on the same weights (UNet), PyTorch's F.group_norm (the contrib GroupNorm), and
the fp32 bundle on ONNX Runtime CPU for the final image (that bundle is held to the PyTorch
reference at 1e-4 by the export tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("onnxruntime-gpu is not installed", allow_module_level=True)

TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
UNET = {
    "block_out_channels": [320, 640],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": [5, 10],
    "cross_attention_dim": 64,
}
VAE = {"block_out_channels": [64, 128], "layers_per_block": 1}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from latentrt.export.bundle import export_bundle
    from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel
    from latentrt.export.models.unet import UNet2DCondition, UNetConfig
    from latentrt.export.models.vae import AutoencoderKL, VAEConfig
    from latentrt.export.tiny import configs, write_diffusers_folder
    from latentrt.runtime.build import build_engines

    text, unet, vae = configs("tiny")
    text |= TEXT | {"projection_dim": 64}
    unet |= UNET
    n = len(VAE["block_out_channels"])
    vae |= VAE | {
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
    }
    torch.manual_seed(0)
    models = (
        CLIPTextModel(CLIPTextConfig.from_transformers(text)),
        UNet2DCondition(UNetConfig.from_diffusers(unet)),
        AutoencoderKL(VAEConfig.from_diffusers(vae)),
    )
    root = tmp_path_factory.mktemp("ortcuda")
    src = write_diffusers_folder(root / "src", *models)
    out = export_bundle(src, root / "bundle", precision="fp32")
    build_engines(out, "ort-cuda")
    return src, out


@pytest.fixture(scope="module", params=["nhwc", "nchw"])
def cuda(bundle, request):
    """The default components (NHWC convolutions) and the NCHW ones (prefer_nhwc=0)."""
    from latentrt.runtime.ort_cuda import load_components

    return load_components(bundle[1], prefer_nhwc="1" if request.param == "nhwc" else "0")


def test_engine_has_every_fusion(bundle):
    import onnx

    from latentrt.graphs._graph import count_ops
    from latentrt.runtime.bundle import Bundle
    from latentrt.runtime.ort_cuda import TARGET, _engine, _index

    b = Bundle.open(bundle[1])
    path = _engine(b, "unet", _index(b)["unet"])
    ops = count_ops(onnx.load(str(path)))
    for op in (
        "GroupNorm",
        "SkipGroupNorm",
        "MultiHeadAttention",
        "BiasSplitGelu",
        "SkipLayerNormalization",
    ):
        assert ops.get(f"com.microsoft.{op}", 0) > 0, (op, ops, TARGET)


def test_unet_fp16_matches_fp32_pytorch(bundle, cuda):
    from latentrt.export.checkpoint import load_components

    ref_model = load_components(bundle[0]).unet.float().cuda().eval()
    unet = cuda["unet"]
    rng = np.random.default_rng(0)
    for _ in range(2):  # the second call replays the captured CUDA graph with new inputs
        feeds = {
            "sample": rng.standard_normal((2, 4, 32, 32), dtype=np.float32),
            "timestep": np.array([999.0, 10.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 64), dtype=np.float32),
        }
        got = unet(**feeds)["out_sample"]
        with torch.inference_mode():
            ref = ref_model(**{k: torch.from_numpy(v).cuda() for k, v in feeds.items()})
        ref = ref.cpu().numpy()
        assert np.isfinite(got).all()
        assert np.abs(ref).max() > 0.1  # a real signal, not a degenerate output
        assert np.abs(got - ref).max() <= 2e-2
    assert unet.info["cuda_graph"] is True, unet.info
    assert unet.info["precision"] == "fp16"


def test_final_image_matches_fp32(bundle, cuda):
    from latentrt.runtime.bundle import Bundle
    from latentrt.runtime.pipeline import Pipeline

    f = Bundle.open(bundle[1]).manifest["latent"]["downscale"]
    latents = np.random.default_rng(3).standard_normal((1, 4, 256 // f, 256 // f), np.float32)
    args = dict(width=256, height=256, steps=4, seed=1, latents=latents, output="np")
    fp32 = Pipeline.load(bundle[1], "ort-cpu").generate("a red boat", **args)
    pipe = Pipeline(Bundle.open(bundle[1]), cuda, "ort-cuda")
    fp16 = pipe.generate("a red boat", **args)
    assert np.isfinite(fp16).all()
    assert np.abs(fp16 - fp32).mean() <= 1e-2


def test_unet_overflow_raises_numerics_error(cuda):
    from latentrt.errors import NumericsError

    feeds = {
        "sample": np.full((2, 4, 32, 32), 1e6, np.float32),
        "timestep": np.array([999.0, 10.0], np.float32),
        "encoder_hidden_states": np.zeros((2, 77, 64), np.float32),
    }
    with pytest.raises(NumericsError, match="unet .fp16. returned NaN/Inf"):
        cuda["unet"](**feeds)


def test_vae_overflow_falls_back_to_fp32(bundle):
    from latentrt.runtime.ort_cuda import load_components

    vae = load_components(bundle[1])["vae_decoder"]
    assert vae.precision == "fp16" and vae.fallback is not None
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(1, 4, 8, 8))
    latent = (signs * 6e4).astype(np.float32)
    out = vae(latent=latent)["image"]
    assert vae.info.get("fallback") and vae.precision == "fp32"
    assert np.isfinite(out).all()


def test_contrib_groupnorm_matches_torch(tmp_path):
    import onnx

    from latentrt.export.models.layers import GroupNormSiLU
    from latentrt.graphs import cancel_transposes, cleanup, fuse_groupnorm
    from latentrt.graphs._graph import count_ops

    torch.manual_seed(0)
    for act in (True, False):
        m = GroupNormSiLU(32, 128, eps=1e-5, act=act)
        with torch.no_grad():
            m.weight.normal_()
            m.bias.normal_()
        x = torch.randn(2, 128, 24, 16)
        path = tmp_path / f"gn{act}.onnx"
        torch.onnx.export(
            m,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
        )
        model = cancel_transposes(fuse_groupnorm(cleanup(onnx.load(str(path))), "ort"))
        assert count_ops(model)["com.microsoft.GroupNorm"] == 1
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
        got = sess.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            ref = m(x).numpy()
        assert np.abs(got - ref).max() <= 1e-4


def test_contrib_skipgroupnorm_matches_torch(tmp_path):
    """A resnet then a GroupNorm: SkipGroupNorm with the time embedding as (N, C) skip and
    conv1's bias, and with the residual sum (a graph output here) and both conv biases."""
    import onnx

    from latentrt.export.models.layers import GroupNormSiLU
    from latentrt.export.models.unet import ResnetBlock2D
    from latentrt.graphs import cancel_transposes, cleanup, fuse_groupnorm
    from latentrt.graphs._graph import count_ops

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.resnet = ResnetBlock2D(64, 128, 96, 32, 1e-5)
            self.norm = GroupNormSiLU(32, 128, eps=1e-5, act=True)

        def forward(self, x, temb):
            out = self.resnet(x, temb)
            return self.norm(out), out

    torch.manual_seed(0)
    m = Block().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    x, temb = torch.randn(2, 64, 24, 16), torch.randn(2, 96)
    path = tmp_path / "block.onnx"
    torch.onnx.export(
        m,
        (x, temb),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x", "temb"],
        output_names=["y", "out"],
        dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "temb": {0: "b"}},
    )
    model = cancel_transposes(fuse_groupnorm(cleanup(onnx.load(str(path))), "ort", skip=True))
    assert count_ops(model)["com.microsoft.SkipGroupNorm"] == 2
    strict = [("CUDAExecutionProvider", {"use_tf32": "0"})]  # fp32 convolutions, not TF32
    sess = ort.InferenceSession(model.SerializeToString(), providers=strict)
    got = sess.run(None, {"x": x.numpy(), "temb": temb.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in m(x, temb)]
    for g, r in zip(got, ref, strict=True):
        assert np.abs(g - r).max() <= 1e-4 * max(1.0, np.abs(r).max())


_CUBLAS_PROBE = """
import sys
import numpy as np
from latentrt.runtime.bench import NvmlMemory
from latentrt.runtime.ort_cuda import CudaComponent

spec = None if sys.argv[2] == "none" else sys.argv[2]
mem = NvmlMemory()
c = CudaComponent("matmul", sys.argv[1], cublas_workspace=spec)
c(x=np.ones((1024, 1024), np.float32))
print(mem.current() / 2**20, c.info["cublas_workspace"], "torch" in sys.modules)
"""


def test_runtime_caps_cublas_workspace_in_a_process_without_torch(tmp_path):
    """The cap the runtime sets itself, before its first session, lowers a cuBLAS session's
    device memory (each process without torch, CUBLAS_WORKSPACE_CONFIG unset at start)."""
    import os
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(1024, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 1024])],
        [w],
    )
    path = tmp_path / "matmul.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path
    )
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    used = {}
    for spec in ("none", ":4096:2"):
        cmd = [sys.executable, "-P", "-c", _CUBLAS_PROBE, str(path), spec]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        mib, in_effect, torch_loaded = out.split()[-3:]
        assert torch_loaded == "False"
        assert in_effect == ("None" if spec == "none" else spec)
        used[spec] = float(mib)
    print(used)
    assert used[":4096:2"] < used["none"] - 16
