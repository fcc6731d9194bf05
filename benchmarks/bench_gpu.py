"""ORT CUDA (graphs/ recipe, IOBinding, CUDA graphs) against the PyTorch reference tree on a GPU.

Full-size SD 1.5 and SDXL architectures built with `UNetConfig.from_diffusers` (and the VAE /
CLIP configs) from the published config.json dicts below, with seeded random weights scaled
like trained ones: conv / linear weights N(0, 0.02), biases 0, norms 1/0, and the output
projections the original LDM code zero-initializes (each UNet resnet's conv2, each
transformer's proj_out, the UNet's conv_out) set to zero. Timings do not depend on the values.

    python benchmarks/bench_gpu.py --arch sd15 --out OUTDIR   # UNet 512² b2, VAE, 30-step e2e
    python benchmarks/bench_gpu.py --arch sdxl --out OUTDIR   # UNet 1024² b2, VAE 1024²

PyTorch runs in fp16 with SDPA attention, eagerly and under torch.compile (default mode),
timed with CUDA events; ORT runs the ort-cuda engine (fp16) through `CudaComponent`, timed on
the host around synchronous calls (inputs copied in and outputs copied out included). Medians
of >= 20 runs after warm-up. The SD 1.5 end-to-end run is `latentrt bench` in a subprocess
without torch (NVML peak memory of that process) against a PyTorch fp16 eager loop of the
same work (text encoder, 30 Euler steps with CFG at batch 2, VAE decode) in another.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentrt.export.onnx import export_unet
from latentrt.runtime.bench import time_calls

ROOT = Path(__file__).resolve().parents[1]
SDXL_POOLED = 1280  # OpenCLIP bigG's pooled width: text_embeds of the SDXL base UNet

SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}
SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}
SD_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "projection_dim": 768,
}


def trained_like(model: nn.Module, seed: int, zero_outputs: bool) -> nn.Module:
    """N(0, 0.02) weights, zero biases, unit norms; LDM's zero-initialized output projections."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 1)[0]
            if p.ndim == 1 and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            zero = owner == "conv_out" or owner.endswith(".proj_out")
            zero = zero or (".resnets." in owner and owner.endswith(".conv2"))
            if zero_outputs and zero:
                p.zero_()
    return model


def cuda_ms(fn, repeats: int = 20, warmup: int = 5) -> list[float]:
    """CUDA-event milliseconds of `repeats` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def queued_ms(fn, repeats: int = 20, batches: int = 7) -> list[float]:
    """Milliseconds per call of `repeats` calls queued back to back with one device sync per
    batch: a step's GPU time once the host keeps ahead. The same measure for ORT (replays of
    the bound CUDA graph, inputs resident) and PyTorch, beside their per-call figures."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e3 / repeats)
    return out


def ort_replay(component, feeds: dict):
    """A call that replays `component`'s bound session on its resident inputs, with ORT's
    end-of-run stream sync off (`queued_ms` syncs the device instead)."""
    import onnxruntime as ort

    component(**feeds)  # binds the inputs and captures the CUDA graph
    bound = component._bind(component._cast(feeds))
    ro = ort.RunOptions()
    ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
    return lambda: bound.session.run_with_iobinding(bound.binding, ro)


def med(ms: list[float]) -> dict:
    return {"median_ms": float(np.median(ms)), "min_ms": float(np.min(ms)), "runs": len(ms)}


def log(out: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def unet_inputs(cfg, batch: int, size: int, device="cuda", dtype=torch.float16):
    g = torch.Generator().manual_seed(1)
    lat = size // 8
    x = {
        "sample": torch.randn(batch, cfg.in_channels, lat, lat, generator=g),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=g),
    }
    if cfg.addition_embed_type == "text_time":
        n_time = 6  # SDXL base: original size, crop top-left, target size
        pooled = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
        x["text_embeds"] = torch.randn(batch, pooled, generator=g)
        x["time_ids"] = torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32)
    return {k: v.to(device, torch.float32 if k in ("timestep",) else dtype) for k, v in x.items()}


def torch_eager(model: nn.Module, inputs: dict, name: str, out: Path) -> torch.Tensor:
    """Eager fp16 timing of `model(**inputs)`; returns its output."""
    with torch.inference_mode():
        log(
            out, {"what": name, "impl": "torch-eager-fp16", **med(cuda_ms(lambda: model(**inputs)))}
        )
        queued = queued_ms(lambda: model(**inputs))
        log(out, {"what": name, "impl": "torch-eager-fp16", "timing": "queued", **med(queued)})
        return model(**inputs)


def torch_compiled(model: nn.Module, inputs: dict, name: str, out: Path) -> None:
    """torch.compile (default mode) timing of `model(**inputs)`, compile time recorded."""
    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, knob):  # one graph per GroupNormSiLU variant
            setattr(torch._dynamo.config, knob, 1024)
    with torch.inference_mode():
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        compiled(**inputs)
        torch.cuda.synchronize()
        t_compile = time.perf_counter() - t0
        ms = cuda_ms(lambda: compiled(**inputs))
        queued = queued_ms(lambda: compiled(**inputs))
    log(out, {"what": name, "impl": "torch-compile-fp16", "compile_s": t_compile, **med(ms)})
    log(out, {"what": name, "impl": "torch-compile-fp16", "timing": "queued", **med(queued)})


STEP_INPUTS = ("sample", "timestep")  # what changes between the steps of a generation


def ort_times(component, feeds: dict, name: str, out: Path, extra: dict | None = None) -> dict:
    """Host timings of a CudaComponent call (synchronous; copies in and out included). The
    conditioning inputs are read-only arrays, as `CFGDenoiser` passes them, so they stay
    resident as they do in a generation; the latents and timesteps go in at every call."""
    feeds = {k: v if k in STEP_INPUTS else _frozen(v) for k, v in feeds.items()}
    first = component(**feeds)
    ms = time_calls(lambda: component(**feeds), repeats=20, warmup=5)
    rec = {"what": name, "impl": "ort-cuda-fp16", **med(ms), **dict(component.info)}
    log(out, {**rec, **(extra or {})})
    if component.info.get("cuda_graph"):
        queued = queued_ms(ort_replay(component, feeds))
        log(out, {**rec, "timing": "queued", **med(queued), **(extra or {})})
    return first


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a


def recipe(src: Path, dst: Path, component: str, precision: str, swap: dict | None = None) -> None:
    """The ort-cuda recipe, with passes named in `swap` replaced (A/B runs)."""
    import onnx

    from latentrt.graphs._graph import count_ops
    from latentrt.graphs.recipes import passes

    t0 = time.perf_counter()
    m = onnx.load(str(src), load_external_data=True)
    for name, step in passes("ort-cuda", precision):
        m = (swap or {}).get(name, step)(m)
    ops = {k: v for k, v in count_ops(m).items() if "." in k}
    onnx.save_model(
        m,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=dst.name + ".data",
        size_threshold=1024,
    )
    print(f"recipe {component} {precision}: {time.perf_counter() - t0:.1f}s {ops}", flush=True)


def compare(name: str, ref: torch.Tensor, got: np.ndarray, out: Path) -> None:
    r = ref.float().cpu().numpy()
    log(
        out,
        {
            "what": name,
            "check": "ort-fp16 vs torch",
            "max_abs": float(np.abs(r - got).max()),
            "ref_max": float(np.abs(r).max()),
            "finite": bool(np.isfinite(got).all()),
        },
    )


# recipe variants for --ab: the pass they replace, and the label of the timing
AB_RECIPES = {
    "skip": ("fuse_groupnorm", "GroupNorm, no skip fusion"),
    "packed": ("fuse_attention", "attention with packed projections (the recipe before)"),
}


def _ab_pass(which: str):
    from latentrt.graphs import fuse_attention, fuse_groupnorm

    if which == "skip":
        return lambda m: fuse_groupnorm(m, "ort", skip=False)
    return lambda m: fuse_attention(m, pack=True)


def run_sdxl(work: Path, out: Path, compile_: bool, variants: bool, ab: list[str]) -> None:
    from latentrt.export.models.unet import UNet2DCondition, UNetConfig
    from latentrt.export.models.vae import AutoencoderKL, VAEConfig
    from latentrt.runtime.ort_cuda import CudaComponent

    cfg = UNetConfig.from_diffusers(SDXL_UNET)
    unet = trained_like(UNet2DCondition(cfg), 0, True).half().cuda().eval()
    log(out, {"what": "sdxl-unet", "params_m": sum(p.numel() for p in unet.parameters()) / 1e6})
    raw, eng = work / "sdxl_unet.onnx", work / "sdxl_unet.ort-cuda.onnx"
    t0 = time.perf_counter()
    export_unet(unet, raw, "fp16", text_embeds_dim=SDXL_POOLED)
    print(f"export sdxl unet {time.perf_counter() - t0:.1f}s", flush=True)
    recipe(raw, eng, "unet", "fp16")
    x = unet_inputs(cfg, 2, 1024)
    ref = torch_eager(unet, x, "sdxl-unet-1024-b2", out)
    feeds = {k: v.float().cpu().numpy() for k, v in x.items()}
    comp = CudaComponent("unet", eng, precision="fp16", cuda_graph=True)  # prefer_nhwc=1
    got = ort_times(comp, feeds, "sdxl-unet-1024-b2", out, {"variant": "default (nhwc)"})
    compare("sdxl-unet-1024-b2", ref, got["out_sample"], out)
    del comp
    for which in ab:  # the same step with one pass swapped, in the same process
        name, label = AB_RECIPES[which]
        other = work / f"sdxl_unet.{which}.onnx"
        recipe(raw, other, "unet", "fp16", swap={name: _ab_pass(which)})
        comp = CudaComponent("unet", other, precision="fp16", cuda_graph=True)
        ort_times(comp, feeds, "sdxl-unet-1024-b2", out, {"variant": label})
        del comp
    if ab:
        comp = CudaComponent("unet", eng, precision="fp16", cuda_graph=True)
        ort_times(comp, feeds, "sdxl-unet-1024-b2", out, {"variant": "default, again"})
        del comp
    if variants:
        comp = CudaComponent("unet", eng, precision="fp16", cuda_graph=True, prefer_nhwc="0")
        ort_times(comp, feeds, "sdxl-unet-1024-b2", out, {"variant": "prefer_nhwc=0"})
        del comp
        search = {"cudnn_conv_algo_search": "HEURISTIC"}
        comp = CudaComponent("unet", eng, precision="fp16", cuda_graph=True, **search)
        ort_times(comp, feeds, "sdxl-unet-1024-b2", out, {"variant": "cudnn HEURISTIC"})
        del comp
    torch.cuda.empty_cache()
    vae_bench(AutoencoderKL(VAEConfig.from_diffusers(SDXL_VAE)), 1024, "sdxl-vae", work, out)
    if compile_:
        torch_compiled(unet, x, "sdxl-unet-1024-b2", out)


def kernel_profile(fn, runs: int = 3) -> dict:
    """GPU kernel time per kernel name over `runs` calls (CUPTI through torch.profiler: it sees
    ORT's kernels as well as PyTorch's), in ms per call, largest first."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    per: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name] = per.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3 / runs
    total = sum(per.values())
    top = sorted(per.items(), key=lambda kv: -kv[1])[:40]
    return {"kernel_ms_total": total, "kernels": len(per), "top": [(k[:120], v) for k, v in top]}


def run_sdxl_profile(work: Path, out: Path) -> None:
    """Where the SDXL step's GPU time goes: ORT (plain session) vs PyTorch eager and compiled."""
    from latentrt.export.models.unet import UNet2DCondition, UNetConfig
    from latentrt.runtime.ort_cuda import CudaComponent

    cfg = UNetConfig.from_diffusers(SDXL_UNET)
    unet = trained_like(UNet2DCondition(cfg), 0, True).half().cuda().eval()
    raw, eng = work / "sdxl_unet.onnx", work / "sdxl_unet.ort-cuda.onnx"
    if not eng.is_file():
        export_unet(unet, raw, "fp16", text_embeds_dim=SDXL_POOLED)
        recipe(raw, eng, "unet", "fp16")
    x = unet_inputs(cfg, 2, 1024)
    feeds = {k: v.float().cpu().numpy() for k, v in x.items()}
    comp = CudaComponent("unet", eng, precision="fp16", cuda_graph=False)
    log(
        out,
        {
            "what": "sdxl-profile",
            "impl": "ort-cuda-fp16",
            **kernel_profile(lambda c=comp: c(**feeds)),
        },
    )
    del comp
    with torch.inference_mode():
        log(
            out,
            {
                "what": "sdxl-profile",
                "impl": "torch-eager-fp16",
                **kernel_profile(lambda: unet(**x)),
            },
        )
        for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 1024)
        compiled = torch.compile(unet)
        compiled(**x)
        log(
            out,
            {
                "what": "sdxl-profile",
                "impl": "torch-compile-fp16",
                **kernel_profile(lambda: compiled(**x)),
            },
        )


def vae_bench(vae, size: int, name: str, work: Path, out: Path) -> None:
    from latentrt.export import onnx as ox
    from latentrt.runtime.ort_cuda import CudaComponent

    vae = trained_like(vae, 1, False).eval()
    raw = work / f"{name}_decoder.onnx"
    ox.export_vae_decoder(vae, raw, "fp32")
    eng, fb = work / f"{name}.ort-cuda.onnx", work / f"{name}.fp32.onnx"
    recipe(raw, eng, "vae_decoder", "fp16")
    recipe(raw, fb, "vae_decoder", "fp32")
    vae = vae.half().cuda()
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2))
    zc = z.half().cuda()
    with torch.inference_mode():
        ms = cuda_ms(lambda: vae.decode(zc))
        log(out, {"what": f"{name}-decode-{size}-b1", "impl": "torch-eager-fp16", **med(ms)})
        ref = vae.decode(zc)
    comp = CudaComponent("vae_decoder", eng, precision="fp16", fallback=fb)
    got = ort_times(comp, {"latent": z.numpy()}, f"{name}-decode-{size}-b1", out)
    compare(f"{name}-decode-{size}-b1", ref, got["image"], out)


def write_sd15_source(work: Path) -> Path:
    from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel
    from latentrt.export.models.unet import UNet2DCondition, UNetConfig
    from latentrt.export.models.vae import AutoencoderKL, VAEConfig
    from latentrt.export.tiny import write_diffusers_folder

    te = trained_like(CLIPTextModel(CLIPTextConfig.from_transformers(CLIP_L)), 3, False)
    unet = trained_like(UNet2DCondition(UNetConfig.from_diffusers(SD15_UNET)), 0, True)
    vae = trained_like(AutoencoderKL(VAEConfig.from_diffusers(SD_VAE)), 1, False)
    return write_diffusers_folder(work / "sd15-src", te, unet, vae)


def sd15_bundle(work: Path, out: Path) -> tuple[Path, Path]:
    """The SD 1.5 source folder and its fp32 bundle with ort-cuda engines (reused if there)."""
    from latentrt.export.bundle import export_bundle
    from latentrt.runtime.build import build_engines

    src, bundle = work / "sd15-src", work / "sd15-bundle"
    if not (bundle / "manifest.json").is_file():
        t0 = time.perf_counter()
        src = write_sd15_source(work)
        bundle = export_bundle(src, bundle, precision="fp32")
        print(f"sd15 source + fp32 bundle {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    build_engines(bundle, "ort-cuda", progress=lambda m: print(m, flush=True))
    log(out, {"what": "sd15-build-ort-cuda", "seconds": time.perf_counter() - t0})
    return src, bundle


def run_sd15(work: Path, out: Path, compile_: bool, variants: bool = True) -> None:
    from latentrt.export.checkpoint import load_components
    from latentrt.runtime.ort_cuda import load_components as cuda_components

    src, bundle = sd15_bundle(work, out)
    comps = load_components(src)
    unet = comps.unet.half().cuda().eval()
    x = unet_inputs(unet.config, 2, 512)
    ref = torch_eager(unet, x, "sd15-unet-512-b2", out)
    ort = cuda_components(bundle)  # the defaults: CUDA graph, prefer_nhwc=1
    feeds = {k: v.float().cpu().numpy() for k, v in x.items()}
    got = ort_times(ort["unet"], feeds, "sd15-unet-512-b2", out, {"variant": "default (nhwc)"})
    compare("sd15-unet-512-b2", ref, got["out_sample"], out)
    if variants:
        nchw = cuda_components(bundle, prefer_nhwc="0")
        ort_times(nchw["unet"], feeds, "sd15-unet-512-b2", out, {"variant": "prefer_nhwc=0"})
        plain = cuda_components(bundle, cuda_graph=False)
        ort_times(plain["unet"], feeds, "sd15-unet-512-b2", out, {"variant": "no cuda graph"})
        del nchw, plain
    vae = comps.vae.half().cuda().eval()
    z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ms = cuda_ms(lambda: vae.decode(z.half().cuda()))
    log(out, {"what": "sd15-vae-decode-512-b1", "impl": "torch-eager-fp16", **med(ms)})
    ort_times(ort["vae_decoder"], {"latent": z.numpy()}, "sd15-vae-decode-512-b1", out)
    del ort, comps
    torch.cuda.empty_cache()

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    e2e_variants(bundle, out, env, [[]])
    cmd = [sys.executable, "-P", __file__, "--torch-e2e", str(src), "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    if compile_:
        torch_compiled(unet, x, "sd15-unet-512-b2", out)


# `latentrt bench` flags of the end-to-end variants; each runs in a process of its own, so
# each peak-memory figure is that configuration's alone.
E2E_VARIANTS = [
    [],
    ["--mem-pattern"],
    ["--option", "cudnn_conv_algo_search=HEURISTIC"],
    ["--shrink-arena"],
    ["--shrink-arena", "--option", "cudnn_conv_algo_search=HEURISTIC"],
    ["--option", "prefer_nhwc=0"],
]


def e2e_variants(bundle: Path, out: Path, env: dict, variants: list) -> None:
    """`latentrt bench` (30 steps, 512²) per variant, each in a fresh process without torch.

    A variant is a list of flags, or {"flags": [...], "env": {...}} for environment variables
    read by the libraries underneath (e.g. CUBLAS_WORKSPACE_CONFIG)."""
    for v in variants:
        flags, extra = (v, {}) if isinstance(v, list) else (v.get("flags", []), v["env"])
        cmd = [sys.executable, "-P", "-m", "latentrt.cli", "bench", str(bundle)]
        cmd += ["--backend", "ort-cuda", "--width", "512", "--height", "512", "--steps", "30"]
        cmd += ["--json", str(out / "e2e.json"), *flags]
        r = subprocess.run(cmd, env={**env, **extra}, cwd=ROOT)
        tag = {"what": "sd15-e2e-30-512-b1", "flags": flags} | ({"env": extra} if extra else {})
        if r.returncode:
            log(out, {**tag, "error": r.returncode})
            continue
        e2e = json.loads((out / "e2e.json").read_text())
        log(out, {**tag, "impl": "ort-cuda", **_pick(e2e)})


def run_sd15_compile(work: Path, out: Path) -> None:
    """torch.compile of the SD 1.5 UNet (eager measured again beside it, same process)."""
    from latentrt.export.checkpoint import load_components

    src, _ = sd15_bundle(work, out)
    unet = load_components(src).unet.half().cuda().eval()
    x = unet_inputs(unet.config, 2, 512)
    torch_eager(unet, x, "sd15-unet-512-b2", out)
    torch_compiled(unet, x, "sd15-unet-512-b2", out)


def run_sd15_memory(work: Path, out: Path) -> None:
    """The end-to-end variants (provider options, shared arena) on the bundle `sd15` built."""
    _, bundle = sd15_bundle(work, out)
    variants = json.loads(os.environ.get("E2E_VARIANTS", "null")) or E2E_VARIANTS[1:]
    e2e_variants(bundle, out, dict(os.environ, PYTHONUNBUFFERED="1"), variants)


def _pick(r: dict) -> dict:
    keys = (
        "e2e_s",
        "sum_components_s",
        "overhead",
        "per_step_ms",
        "e2e_inside_ms",
        "e2e_host_ms",
        "peak_gpu_mib",
        "peak_gpu_mib_with_components",
        "memory_scope",
        "first_call_mib",
        "cuda_graph",
    )
    return {k: r[k] for k in keys if k in r} | {
        f"{k}_ms": v["median_ms"] for k, v in r["components"].items()
    }


def torch_e2e(src: Path, out: Path) -> None:
    """The same generation in PyTorch fp16 eager: CLIP, 30 Euler CFG steps, VAE decode."""
    from latentrt.export.checkpoint import load_components
    from latentrt.runtime.bench import NvmlMemory
    from latentrt.samplers import get_sigmas, sigmas_from_alphas_cumprod

    mem = NvmlMemory().start()
    comps = load_components(src)
    te = comps.text_encoders[0].model.half().cuda().eval()
    unet = comps.unet.half().cuda().eval()
    vae = comps.vae.half().cuda().eval()
    s = comps.scheduler
    betas = np.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, 1000) ** 2
    model_sigmas = sigmas_from_alphas_cumprod(np.cumprod(1.0 - betas))
    sigmas = get_sigmas("normal", 30, model_sigmas)
    ids = torch.zeros(2, 77, dtype=torch.long, device="cuda")
    ids[:, 0], ids[:, -1] = 49406, 49407
    log_sigmas = np.log(model_sigmas)

    torch.cuda.synchronize()
    phases = {"load": mem.current() / 2**20}  # NVML MiB after each phase of the first run

    def phase(name: str) -> None:
        if mem.running:  # the first generation only
            torch.cuda.synchronize()
            phases[name] = {"peak": mem.window() / 2**20, "after": mem.current() / 2**20}

    def generate():
        mem.window()
        ctx = te(ids).last_hidden_state
        phase("text_encoder")
        x = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16) * float(sigmas[0])
        for i in range(30):
            sig = float(sigmas[i])
            t = float(np.interp(np.log(sig), log_sigmas, np.arange(1000)))
            xin = torch.cat([x, x]) / (sig**2 + 1) ** 0.5
            eps = unet(xin, torch.full((2,), t, device="cuda"), ctx)
            u, c = eps.chunk(2)
            eps = u + 7.5 * (c - u)
            x = x + eps * (float(sigmas[i + 1]) - sig)
        phase("unet")
        img = vae.decode(x / 0.18215)
        phase("vae_decoder")
        return img

    with torch.inference_mode():
        generate()  # load + the first generation sampled, as latentrt bench does
        torch.cuda.synchronize()
        mem.stop()
        ms = cuda_ms(generate, repeats=3, warmup=0)
    log(
        out,
        {
            "what": "sd15-e2e-30-512-b1",
            "impl": "torch-eager-fp16",
            "e2e_s": float(np.median(ms)) / 1e3,
            "peak_gpu_mib": mem.peak / 2**20,
            "memory_scope": "process" if mem.process_level else "device rise over idle",
            "torch_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "torch_max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
            "phases_mib": phases,
        },
    )


def _patch_large_model_check() -> None:
    """export/onnx._serializable catches ValueError, but protobuf raises EncodeError for
    models over 2 GB on this machine: treat any failure to size the proto as 'large'."""
    from latentrt.export import onnx as ox

    def serializable(model) -> bool:
        try:
            model.ByteSize()
            return True
        except Exception:
            return False

    ox._serializable = serializable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--arch", choices=["sd15", "sd15-memory", "sd15-compile", "sdxl", "sdxl-profile"]
    )
    p.add_argument("--out", default="bench-out")
    p.add_argument("--work", default="/tmp/latentrt-bench")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument(
        "--no-variants",
        action="store_true",
        help="skip the UNet variant runs (NCHW, HEURISTIC, no graph)",
    )
    p.add_argument(
        "--ab", nargs="*", default=[], choices=sorted(AB_RECIPES), help="sdxl: recipe variants"
    )
    p.add_argument("--torch-e2e", help="(internal) run the PyTorch end-to-end reference")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.torch_e2e:
        torch_e2e(Path(args.torch_e2e), out)
        return
    import onnxruntime

    _patch_large_model_check()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log(
        out,
        {
            "what": "env",
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
    )
    if args.arch == "sd15":
        run_sd15(work, out, not args.no_compile, not args.no_variants)
    elif args.arch == "sd15-memory":
        run_sd15_memory(work, out)
    elif args.arch == "sd15-compile":
        run_sd15_compile(work, out)
    elif args.arch == "sdxl-profile":
        run_sdxl_profile(work, out)
    else:
        run_sdxl(work, out, not args.no_compile, not args.no_variants, args.ab)


if __name__ == "__main__":
    main()
