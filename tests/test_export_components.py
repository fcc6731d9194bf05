"""Every exported graph on ORT CPU vs the PyTorch reference, fp32 and fp16, several shapes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from latentrt.export import export_bundle
from latentrt.export import onnx as onnx_export
from latentrt.export.checkpoint import load_components
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.ort_backend import load_components as load_sessions
from tests import sd_fixtures

TOL = {"fp32": 1e-4, "fp16": 2e-2}
SHAPES = [(1, 64, 64), (3, 48, 80)]  # (batch, pixel height, pixel width)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return sd_fixtures.sd_pipeline(tmp_path_factory.mktemp("src") / "sd1", "sd1", seed=5)


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def bundle(request, source, tmp_path_factory):
    out = export_bundle(
        source, tmp_path_factory.mktemp(request.param) / "b", precision=request.param
    )
    return Bundle.open(out)


@pytest.fixture(scope="module")
def reference(source):
    comps = load_components(source)
    return {
        "text_encoder": onnx_export.TextEncoderGraph(comps.text_encoders[0].model),
        "unet": onnx_export.UNetGraph(comps.unet),
        "vae_encoder": onnx_export.VAEEncoderGraph(comps.vae),
        "vae_decoder": onnx_export.VAEDecoderGraph(comps.vae),
    }


def _feeds(name: str, batch: int, h: int, w: int, rng) -> dict[str, np.ndarray]:
    if name == "text_encoder":
        ids = rng.integers(300, 40000, size=(batch, 77))
        ids[:, 0] = 49406
        for i in range(batch):  # EOS (and EOS padding) at a different place per row
            ids[i, 5 + 7 * i :] = 49407
        return {"input_ids": ids.astype(np.int64)}
    if name == "unet":
        return {
            "sample": rng.standard_normal((batch, 4, h // 8, w // 8)).astype(np.float32),
            "timestep": rng.uniform(0, 999, batch).astype(np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, 32)).astype(np.float32),
        }
    if name == "vae_encoder":
        return {"image": rng.uniform(-1, 1, (batch, 3, h, w)).astype(np.float32)}
    return {"latent": rng.standard_normal((batch, 4, h // 8, w // 8)).astype(np.float32)}


@pytest.mark.parametrize(("batch", "h", "w"), SHAPES)
@pytest.mark.parametrize("name", ["text_encoder", "unet", "vae_encoder", "vae_decoder"])
def test_component_matches_reference(bundle, reference, name, batch, h, w):
    precision = bundle.manifest["precision"]
    run = load_sessions(bundle)[name]
    feeds = _feeds(name, batch, h, w, np.random.default_rng(batch * 100 + h))
    got = run(**feeds)
    with torch.no_grad():
        ref = reference[name](*(torch.from_numpy(v) for v in feeds.values()))
    ref = ref if isinstance(ref, tuple) else (ref,)
    for out_name, r in zip(bundle.component(name)["outputs"], ref, strict=True):
        g = got[out_name].astype(np.float32)
        assert np.isfinite(g).all(), f"{name}.{out_name} has NaN/Inf"
        scale = max(1.0, float(r.abs().max()))  # tolerances are for outputs of unit scale
        err = float(np.abs(g - r.numpy()).max()) / scale
        assert err <= TOL[precision], f"{name}.{out_name}: {err:.3g} > {TOL[precision]}"


def test_graphs_are_valid_onnx_with_named_dynamic_io(bundle):
    for name, comp in bundle.manifest["components"].items():
        model = onnx.load(str(bundle.component_path(name)))
        onnx.checker.check_model(model)
        assert model.ir_version <= 13
        assert [i.name for i in model.graph.input] == list(comp["inputs"])
        assert [o.name for o in model.graph.output] == list(comp["outputs"])
    unet_in = bundle.component("unet")["inputs"]["sample"]["shape"]
    assert unet_in[0] == "batch" and unet_in[2] == "height" and unet_in[3] == "width"


def test_manifest_records_the_contract(bundle, source):
    m = bundle.manifest
    sched = json.loads((source / "scheduler" / "scheduler_config.json").read_text())
    assert m["family"] == "sd1" and m["prediction_type"] == "epsilon"
    assert m["latent"]["scaling_factor"] == pytest.approx(0.18215)
    assert m["scheduler"]["beta_schedule"] == sched["beta_schedule"]
    assert m["scheduler"]["steps_offset"] == sched["steps_offset"]
    assert m["text_encoders"][0]["pad_token"] == "<|endoftext|>"
    assert (bundle.root / "tokenizer" / "vocab.json").is_file()
    assert all(len(c["sha256"]) == 64 for c in m["components"].values())
