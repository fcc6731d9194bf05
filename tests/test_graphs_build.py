"""`latentrt build` with the graphs/ recipes and `latentrt bench`, on CPU.

ort-cuda engines are graph rewrites and need no GPU to build: their structure (fused ops, fp16
weights, the fp32 VAE fallback, cache reuse) is checked here, their numerics in
test_ort_cuda.py. ort-cpu engines must generate the same image as the unoptimized bundle.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from latentrt.cli import main
from latentrt.graphs._graph import MAX_IR_VERSION, check_model, count_ops
from latentrt.runtime.build import build_engines
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from latentrt.export.bundle import export_bundle
    from latentrt.export.tiny import build_models, write_diffusers_folder

    root = tmp_path_factory.mktemp("build")
    src = write_diffusers_folder(root / "src", *build_models("tiny", seed=4))
    return export_bundle(src, root / "bundle")


def test_ort_cuda_engines_build_without_a_gpu(bundle):
    messages = []
    dest = build_engines(bundle, "ort-cuda", progress=messages.append)
    index = json.loads((dest / "index.json").read_text())["components"]
    assert index["unet"]["options"]["precision"] == "fp16"
    assert index["text_encoder"]["options"]["precision"] == "fp16"
    for name in ("text_encoder", "vae_decoder", "vae_encoder"):
        assert (bundle / index[name]["fallback"]).is_file()
    assert "fallback" not in index["unet"]
    unet = onnx.load(str(bundle / index["unet"]["file"]))
    check_model(unet)
    assert unet.ir_version <= MAX_IR_VERSION
    ops = count_ops(unet)
    assert ops["com.microsoft.MultiHeadAttention"] > 0
    assert ops["com.microsoft.SkipLayerNormalization"] > 0
    assert ops["com.microsoft.SkipGroupNorm"] > 0
    norms = [n for n in unet.graph.node if n.op_type in ("GroupNorm", "SkipGroupNorm")]
    gn_params = {i for n in norms for i in n.input[1:3]}  # gamma, beta: fp32 for the kernel
    weights = [t for t in unet.graph.initializer if np.prod(t.dims) > 64]
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in weights if t.name in gn_params)
    halves = [t for t in weights if t.name not in gn_params]
    assert halves and all(t.data_type == onnx.TensorProto.FLOAT16 for t in halves)
    assert any("unet: fuse_attention" in m for m in messages)
    messages.clear()
    build_engines(bundle, "ort-cuda", progress=messages.append)
    assert all(m.endswith("up to date") for m in messages)


def test_ort_cuda_fp16_text_encoder_runs_and_matches_fp32(bundle):
    """The fp16 text encoder engine passes ORT's type inference (ORT CPU loads it, as the CUDA
    provider must) and stays within fp16 rounding of the fp32 graph on every output."""
    import onnxruntime as ort

    dest = build_engines(bundle, "ort-cuda")
    entry = json.loads((dest / "index.json").read_text())["components"]["text_encoder"]
    cpu = ["CPUExecutionProvider"]
    fp16 = ort.InferenceSession(str(bundle / entry["file"]), providers=cpu)
    source = Bundle.open(bundle).component_path("text_encoder")
    fp32 = ort.InferenceSession(str(source), providers=cpu)
    ids = np.full((2, 77), 49407, np.int64)
    ids[:, :5] = [[49406, 320, 1125, 539, 49407], [49406, 49407, 49407, 49407, 49407]]
    pairs = zip(fp16.run(None, {"input_ids": ids}), fp32.run(None, {"input_ids": ids}), strict=True)
    for got, ref in pairs:
        assert np.isfinite(got).all()
        assert np.abs(got - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())


def test_ort_cpu_engines_generate_the_same_image(bundle, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain, ignore=shutil.ignore_patterns("engines"))
    build_engines(bundle, "ort-cpu")
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    args = dict(width=64, height=64, steps=3, seed=2, latents=latents, output="np")
    ref = Pipeline.load(plain, "ort-cpu").generate("a tree", **args)
    pipe = Pipeline.load(bundle, "ort-cpu")
    engine = pipe.components["unet"].session._model_path
    assert "engines/ort-cpu" in engine
    assert np.abs(pipe.generate("a tree", **args) - ref).max() <= 1e-5


def test_bench_cli_on_cpu(bundle, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(bundle), "--backend", "ort-cpu", "--width", "64", "--height", "64"]
    assert main([*args, "--steps", "2", "--repeats", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["components"]) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert all(c["runs"] == 2 and c["median_ms"] > 0 for c in r["components"].values())
    parts = (
        r["components"]["text_encoder"]["median_ms"] + r["components"]["vae_decoder"]["median_ms"]
    )
    parts += 2 * r["components"]["unet"]["median_ms"]
    assert r["sum_components_s"] == pytest.approx(parts / 1e3)
    assert r["overhead"] == pytest.approx(r["e2e_s"] / r["sum_components_s"])
    assert r["per_step_ms"] > 0 and r["peak_rss_mib"] > 0
    table = capsys.readouterr().out
    assert "unet" in table and "end to end" in table


def test_bench_times_gpu_runs_with_the_memory_sampler_stopped(bundle, monkeypatch):
    """Peak memory is sampled over load + the first generation and one more call of each
    component; every timed call runs with the sampler stopped (it competes for the GIL). The
    first generation's first call of each component records memory before, during and after
    it."""
    from latentrt.runtime import bench as bench_mod
    from latentrt.runtime.ort_backend import load_components

    class FakeSampler:
        active = False
        process_level = True

        def __init__(self):
            self.peak = 0

        def start(self):
            FakeSampler.active = True
            return self

        def stop(self):
            FakeSampler.active = False
            self.peak = 123 * 2**20

        def current(self):  # one MiB more per component call so far
            return len(calls) * 2**20

        def window(self):
            return self.current() + 2**19

    calls: list[tuple[str, bool]] = []

    def recording(name, component):
        def call(**feeds):
            calls.append((name, FakeSampler.active))
            return component(**feeds)

        return call

    monkeypatch.setattr(bench_mod, "NvmlMemory", FakeSampler)
    monkeypatch.setattr(bench_mod, "_gpu_name", lambda: "fake GPU")
    loaded = load_components(Bundle.open(bundle), "ort-cpu")
    comps = {k: recording(k, c) for k, c in loaded.items()}
    r = bench_mod.bench(
        bundle, "ort-cuda", 64, 64, steps=2, repeats=2, warmup=1, e2e_repeats=2, components=comps
    )
    assert r["peak_gpu_mib"] == r["peak_gpu_mib_with_components"] == 123
    sampled = [name for name, active in calls if active]
    # the first generation (text encoder, 2 UNet steps, VAE decoder) and one call of each
    # component at the end; none of the 2 timed generations' or the components' timed calls
    first = ["text_encoder", "unet", "unet", "vae_decoder"]
    assert sampled == first + ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
    assert len(calls) > len(sampled) + 2 * len(first)
    assert r["first_call_mib"] == {
        "load": 0.0,
        "text_encoder": {"before": 0.0, "peak": 1.5, "after": 1.0},
        "unet": {"before": 1.0, "peak": 2.5, "after": 2.0},
        "vae_decoder": {"before": 3.0, "peak": 4.5, "after": 4.0},
    }
    assert "unet 1 -> peak 2 -> 2" in bench_mod.format_table(r)
