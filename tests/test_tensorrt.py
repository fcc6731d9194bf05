"""The TensorRT path: plugin registration, engine builds, the runtime backend, refit.

Tests marked `tensorrt` need TensorRT (and a GPU); they have not run on the project's machines,
where TensorRT cannot be installed. Unmarked tests cover everything that does not need it:
profiles from a manifest, engine keys and cache decisions, plugin fields, output shapes and
formats, and the errors when TensorRT is missing. The `gpu` test runs the launch code the
plugins' enqueue uses on the GPU, without TensorRT.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from latentrt.errors import BackendError, InputError
from latentrt.plugins import reference
from latentrt.plugins import tensorrt_plugins as tp
from latentrt.plugins.harness import find_nvcc
from latentrt.runtime import tensorrt_backend as backend
from latentrt.runtime import tensorrt_build as build
from latentrt.runtime.bundle import Bundle

DEVICE = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}

# What export_bundle writes for a tiny SD1 source (components' inputs, shapes, latent).
SD1_MANIFEST = {
    "format": "latentrt-bundle",
    "format_version": 1,
    "family": "sd1",
    "precision": "fp32",
    "components": {
        "text_encoder": {
            "file": "text_encoder.onnx",
            "inputs": {"input_ids": {"dtype": "int64", "shape": ["batch", 77]}},
            "sha256": "11" * 32,
        },
        "unet": {
            "file": "unet.onnx",
            "inputs": {
                "sample": {"dtype": "float32", "shape": ["batch", 4, "height", "width"]},
                "timestep": {"dtype": "float32", "shape": ["batch"]},
                "encoder_hidden_states": {"dtype": "float32", "shape": ["batch", "sequence", 32]},
            },
            "sha256": "22" * 32,
        },
        "vae_encoder": {
            "file": "vae_encoder.onnx",
            "inputs": {"image": {"dtype": "float32", "shape": ["batch", 3, "height", "width"]}},
            "sha256": "33" * 32,
        },
        "vae_decoder": {
            "file": "vae_decoder.onnx",
            "inputs": {"latent": {"dtype": "float32", "shape": ["batch", 4, "height", "width"]}},
            "sha256": "44" * 32,
        },
    },
    "text_encoders": [{"component": "text_encoder", "tokenizer": "tokenizer", "max_length": 77}],
    "latent": {"channels": 4, "downscale": 8},
    "unet": {"in_channels": 4, "inpainting": False},
    "prediction_type": "epsilon",
    "scheduler": {},
    "shapes": {"batch": [1, 8], "height": [64, 1024], "width": [64, 1024]},
    "default_size": 512,
}


def _fake_bundle(root: Path, manifest: dict) -> Bundle:
    """A bundle directory whose files exist (ONNX contents are not read by these tests)."""
    root.mkdir(parents=True, exist_ok=True)
    for comp in manifest["components"].values():
        (root / comp["file"]).write_bytes(b"onnx")
    for te in manifest["text_encoders"]:
        (root / te["tokenizer"]).mkdir(exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return Bundle.open(root)


# --- profiles ------------------------------------------------------------------------------------


def test_profiles_follow_manifest_shapes():
    p = build.tensorrt_profiles(SD1_MANIFEST)
    assert set(p) == set(SD1_MANIFEST["components"])
    # UNet: CFG doubles the batch; latent sizes are pixels / 8; context up to 3 windows of 77.
    assert p["unet"]["sample"] == ((1, 4, 8, 8), (2, 4, 64, 64), (16, 4, 128, 128))
    assert p["unet"]["timestep"] == ((1,), (2,), (16,))
    assert p["unet"]["encoder_hidden_states"] == ((1, 77, 32), (2, 77, 32), (16, 231, 32))
    # Text encoder: every window of every prompt and negative prompt is a batch row.
    assert p["text_encoder"]["input_ids"] == ((1, 77), (2, 77), (48, 77))
    # VAE encoder sees pixels, the decoder latents, neither is doubled.
    assert p["vae_encoder"]["image"] == ((1, 3, 64, 64), (1, 3, 512, 512), (8, 3, 1024, 1024))
    assert p["vae_decoder"]["latent"] == ((1, 4, 8, 8), (1, 4, 64, 64), (8, 4, 128, 128))
    for comp in p.values():
        for lo, opt, hi in comp.values():
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))


def test_profiles_cover_every_call_the_pipeline_makes():
    """The shapes a generation feeds (batch 1..8, CFG, sizes in range) all fit the profiles."""
    p = build.tensorrt_profiles(SD1_MANIFEST)
    for batch in (1, 8):
        for size in (64, 512, 1024):
            for windows in (1, 3):
                calls = {
                    ("text_encoder", "input_ids"): (2 * batch * windows, 77),
                    ("unet", "sample"): (2 * batch, 4, size // 8, size // 8),
                    ("unet", "encoder_hidden_states"): (2 * batch, 77 * windows, 32),
                    ("vae_encoder", "image"): (batch, 3, size, size),
                    ("vae_decoder", "latent"): (batch, 4, size // 8, size // 8),
                }
                for (comp, name), shape in calls.items():
                    backend.check_profile_shapes(comp, {name: shape}, p[comp])
    with pytest.raises(InputError, match="outside the TensorRT engine's profile"):
        backend.check_profile_shapes("unet", {"sample": (18, 4, 64, 64)}, p["unet"])
    with pytest.raises(InputError, match="encoder_hidden_states"):
        backend.check_profile_shapes("unet", {"encoder_hidden_states": (2, 308, 32)}, p["unet"])


def test_profiles_sdxl_inputs_and_ranges_off_the_latent_grid():
    m = copy.deepcopy(SD1_MANIFEST)
    m["family"] = "sdxl"
    m["default_size"] = 1024
    m["shapes"] = {"batch": [1, 4], "height": [100, 1000], "width": [64, 2048]}
    m["components"]["unet"]["inputs"]["text_embeds"] = {"dtype": "float32", "shape": ["batch", 64]}
    m["components"]["unet"]["inputs"]["time_ids"] = {"dtype": "float32", "shape": ["batch", 6]}
    m["components"]["text_encoder_2"] = copy.deepcopy(m["components"]["text_encoder"])
    p = build.tensorrt_profiles(m)
    # height 100..1000 px holds latents 13..125; the default 1024 clamps to the range's top.
    assert p["unet"]["sample"] == ((1, 4, 13, 8), (2, 4, 125, 128), (8, 4, 125, 256))
    assert p["unet"]["text_embeds"] == ((1, 64), (2, 64), (8, 64))
    assert p["unet"]["time_ids"] == ((1, 6), (2, 6), (8, 6))
    assert p["vae_encoder"]["image"] == ((1, 3, 104, 64), (1, 3, 1000, 1024), (4, 3, 1000, 2048))
    assert p["text_encoder_2"]["input_ids"] == ((1, 77), (2, 77), (24, 77))


def test_profiles_refuse_unknown_axes_and_components():
    m = copy.deepcopy(SD1_MANIFEST)
    m["components"]["vae_decoder"]["inputs"]["latent"]["shape"][2] = "frames"
    with pytest.raises(BackendError, match="'frames'"):
        build.tensorrt_profiles(m)
    m = copy.deepcopy(SD1_MANIFEST)
    m["components"]["controlnet"] = m["components"]["unet"]
    with pytest.raises(BackendError, match="controlnet"):
        build.tensorrt_profiles(m)


def test_precision_follows_the_bundle_unless_overridden():
    assert build.resolve_precision({"precision": "fp16"}, None) == "fp16"
    assert build.resolve_precision({"precision": "fp32"}, "bf16") == "bf16"
    with pytest.raises(BackendError, match="bf16"):
        build.resolve_precision({"precision": "fp16"}, "bf16")
    with pytest.raises(BackendError, match="int8"):
        build.resolve_precision({"precision": "fp32"}, "int8")
    # The bundle's own precision is built strongly typed; lower ones need TensorRT 10's flags.
    assert build.use_strong_typing({"precision": "fp16"}, "fp16", False, "11.4")
    assert not build.use_strong_typing({"precision": "fp32"}, "bf16", True, "10.9")
    with pytest.raises(BackendError, match="export a fp16 bundle"):
        build.use_strong_typing({"precision": "fp32"}, "fp16", False, "11.4")


# --- engine keys and cache decisions ------------------------------------------------------------


def _options(manifest: dict, name: str = "unet", precision: str = "fp16") -> dict:
    return build.build_options(precision, build.tensorrt_profiles(manifest)[name], "digest")


@pytest.mark.parametrize(("precision", "strong"), [("fp32", True), ("fp16", False)])
def test_plans_are_built_with_the_options_they_are_keyed_on(tmp_path, precision, strong):
    made = {}

    class Poly:  # polygraphy's loaders, recording what the build asks of them
        class Profile(dict):
            def add(self, name, min, opt, max):
                self[name] = (min, opt, max)

        def network_from_onnx_path(self, path, strongly_typed):
            made["network"] = (path, strongly_typed)
            return "network"

        def CreateConfig(self, **kwargs):  # noqa: N802 (polygraphy's name)
            made["config"] = kwargs
            return "config"

        def engine_bytes_from_network(self, network, config, save_timing_cache):
            made["timing"] = save_timing_cache
            return b"plan"

    profile = build.tensorrt_profiles(SD1_MANIFEST)["unet"]
    options = build.build_options(precision, profile, None, strong)
    onnx_path, timing = tmp_path / "unet.onnx", tmp_path / "timing.cache"
    assert build._build_plan(Poly(), onnx_path, profile, options, timing) == b"plan"
    config = made["config"]
    assert made["network"] == (str(onnx_path), strong)
    assert (config["refittable"], config["tf32"]) == (options["refittable"], options["tf32"])
    assert config.get("fp16", False) == (not strong)
    assert dict(config["profiles"][0]) == dict(profile)
    assert made["timing"] == str(timing) and "load_timing_cache" not in config


def test_engine_key_tracks_onnx_options_version_and_device(tmp_path):
    b = _fake_bundle(tmp_path / "a", SD1_MANIFEST)
    key = build.engine_key(
        b, "unet", _options(SD1_MANIFEST), tensorrt_version="10.9", device=DEVICE
    )
    same = build.engine_key(
        b, "unet", _options(SD1_MANIFEST), tensorrt_version="10.9", device=DEVICE
    )
    assert key == same and len(key) == 16
    variants = [
        build.engine_key(
            b,
            "unet",
            _options(SD1_MANIFEST, precision="fp32"),
            tensorrt_version="10.9",
            device=DEVICE,
        ),
        build.engine_key(
            b, "unet", _options(SD1_MANIFEST), tensorrt_version="10.10", device=DEVICE
        ),
        build.engine_key(
            b,
            "unet",
            _options(SD1_MANIFEST),
            tensorrt_version="10.9",
            device={**DEVICE, "compute_capability": "8.9"},
        ),
        build.engine_key(
            b, "vae_decoder", _options(SD1_MANIFEST), tensorrt_version="10.9", device=DEVICE
        ),
    ]
    wider = copy.deepcopy(SD1_MANIFEST)
    wider["shapes"]["batch"] = [1, 16]
    variants.append(
        build.engine_key(b, "unet", _options(wider), tensorrt_version="10.9", device=DEVICE)
    )
    changed = copy.deepcopy(SD1_MANIFEST)
    changed["components"]["unet"]["sha256"] = "55" * 32
    b2 = _fake_bundle(tmp_path / "b", changed)
    variants.append(
        build.engine_key(b2, "unet", _options(SD1_MANIFEST), tensorrt_version="10.9", device=DEVICE)
    )
    assert len({key, *variants}) == len(variants) + 1


def test_engine_key_hashes_the_onnx_file_when_the_manifest_has_no_digest(tmp_path):
    m = copy.deepcopy(SD1_MANIFEST)
    del m["components"]["unet"]["sha256"]
    b = _fake_bundle(tmp_path, m)
    k1 = build.engine_key(b, "unet", {}, tensorrt_version="10", device=DEVICE)
    (tmp_path / "unet.onnx").write_bytes(b"other weights")
    k2 = build.engine_key(b, "unet", {}, tensorrt_version="10", device=DEVICE)
    assert k1 != k2


def _write_engines(b: Bundle, version: str, device: dict, skip: str | None = None) -> Path:
    dest = b.root / "engines" / "tensorrt"
    dest.mkdir(parents=True)
    entries = {}
    for name in b.manifest["components"]:
        if name == skip:
            continue
        options = _options(b.manifest, name)
        key = build.engine_key(b, name, options, tensorrt_version=version, device=device)
        (dest / f"{name}.{key}.plan").write_bytes(b"plan")
        entries[name] = {
            "file": f"engines/tensorrt/{name}.{key}.plan",
            "key": key,
            "options": options,
            "tensorrt": version,
            "device": device,
        }
    (dest / "index.json").write_text(json.dumps({"components": entries, "plugin_library": None}))
    return dest


def test_current_engines_are_found_and_reused(tmp_path):
    b = _fake_bundle(tmp_path, SD1_MANIFEST)
    dest = _write_engines(b, "10.9", DEVICE)
    index, plans = backend.engine_files(b, "10.9", DEVICE)
    assert set(plans) == set(SD1_MANIFEST["components"])
    assert all(p.is_file() and p.parent == dest for p in plans.values())
    entry = build.read_index(dest)["components"]["unet"]
    key = build.engine_key(b, "unet", entry["options"], tensorrt_version="10.9", device=DEVICE)
    assert build.is_current(b, entry, key)
    assert not build.is_current(b, entry, "0" * 16)
    assert not build.is_current(b, None, key)
    (b.root / entry["file"]).unlink()
    assert not build.is_current(b, entry, key)  # a missing plan is rebuilt
    with pytest.raises(BackendError, match="missing"):
        backend.engine_files(b, "10.9", DEVICE)


@pytest.mark.parametrize(
    ("version", "device", "match"),
    [
        ("10.10", DEVICE, "built with TensorRT 10.9, this is 10.10"),
        ("10.9", {**DEVICE, "compute_capability": "8.9"}, "this GPU is"),
    ],
)
def test_stale_engines_are_refused_with_the_reason(tmp_path, version, device, match):
    b = _fake_bundle(tmp_path, SD1_MANIFEST)
    _write_engines(b, "10.9", DEVICE)
    with pytest.raises(BackendError, match=match) as e:
        backend.engine_files(b, version, device)
    assert "--target tensorrt" in str(e.value)


def test_changed_onnx_makes_engines_stale(tmp_path):
    b = _fake_bundle(tmp_path, SD1_MANIFEST)
    _write_engines(b, "10.9", DEVICE)
    m = copy.deepcopy(SD1_MANIFEST)
    m["components"]["vae_decoder"]["sha256"] = "66" * 32
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match="vae_decoder is stale"):
        backend.engine_files(Bundle.open(tmp_path), "10.9", DEVICE)


def test_missing_engines_say_how_to_build_them(tmp_path):
    b = _fake_bundle(tmp_path, SD1_MANIFEST)
    with pytest.raises(BackendError, match="latentrt build .* --target tensorrt"):
        backend.engine_files(b, "10.9", DEVICE)
    _write_engines(b, "10.9", DEVICE, skip="vae_encoder")
    with pytest.raises(BackendError, match="no TensorRT engine for vae_encoder"):
        backend.engine_files(b, "10.9", DEVICE)


def test_engine_paths_outside_the_bundle_are_refused(tmp_path):
    b = _fake_bundle(tmp_path / "bundle", SD1_MANIFEST)
    dest = _write_engines(b, "10.9", DEVICE)
    index = json.loads((dest / "index.json").read_text())
    outside = tmp_path / "evil.plan"
    outside.write_bytes(b"plan")
    index["components"]["unet"]["file"] = "../evil.plan"
    (dest / "index.json").write_text(json.dumps(index))
    with pytest.raises(BackendError, match="escapes the bundle"):
        backend.engine_files(b, "10.9", DEVICE)


# --- plugin fields, shapes, formats --------------------------------------------------------------


def _parser_fields(node: onnx.NodeProto) -> list[tuple[str, np.ndarray]]:
    """What TensorRT's ONNX parser hands a creator: INT(S) as int32, FLOAT(S) as float32."""
    out = []
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS):
            out.append((a.name, np.array(value, np.int32).reshape(-1)))
        elif a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
            out.append((a.name, np.array(value, np.float32).reshape(-1)))
    return out


def test_plugin_fields_round_trip_and_match_onnx_attributes():
    node = helper.make_node(
        "GroupNormSiLU",
        ["x", "g", "b"],
        ["y"],
        domain="latentrt",
        num_groups=32,
        epsilon=1e-6,
        activation=0,
    )
    gn = tp.GroupNormSiLUAttrs.from_fields(_parser_fields(node))
    assert (gn.num_groups, gn.activation) == (32, 0)
    assert gn.epsilon == pytest.approx(1e-6, rel=1e-7)
    assert tp.GroupNormSiLUAttrs.from_fields(gn.to_fields()) == gn
    assert [(n, a.dtype) for n, a in gn.to_fields()] == [
        (n, np.dtype(t)) for n, t in tp.GroupNormSiLUAttrs.FIELDS
    ]
    node = helper.make_node(
        "Conv3d",
        ["x", "w", "b"],
        ["y"],
        domain="latentrt",
        pads=[2, 1, 0, 0, 1, 3],
        strides=[1, 2, 2],
        dilations=[1, 1, 2],
        causal_time=2,
    )
    cv = tp.Conv3dAttrs.from_fields(_parser_fields(node))
    assert cv == tp.Conv3dAttrs((2, 1, 0, 0, 1, 3), (1, 2, 2), (1, 1, 2), 2)
    assert tp.Conv3dAttrs.from_fields(cv.to_fields()) == cv
    assert cv.timing_id() != tp.Conv3dAttrs((2, 1, 0, 0, 1, 3), (1, 2, 2), (1, 1, 2), 1).timing_id()


def test_plugin_fields_defaults_and_errors():
    assert tp.Conv3dAttrs.from_fields([]) == tp.Conv3dAttrs()
    gn = tp.GroupNormSiLUAttrs.from_fields([("num_groups", np.array([4], np.int32))])
    assert (gn.epsilon, gn.activation) == (pytest.approx(1e-5), 1)
    with pytest.raises(InputError, match="num_groups"):
        tp.GroupNormSiLUAttrs.from_fields([])
    with pytest.raises(InputError, match="activation"):
        tp.GroupNormSiLUAttrs(4, activation=2)
    with pytest.raises(InputError, match="pads"):
        tp.Conv3dAttrs(pads=(1, 1, 1))
    with pytest.raises(InputError, match="strides"):
        tp.Conv3dAttrs(strides=(1, 0, 1))
    with pytest.raises(InputError, match="causal_time"):
        tp.Conv3dAttrs.from_fields([("causal_time", np.array([3], np.int32))])


@pytest.mark.parametrize("seed", range(6))
def test_conv3d_output_dims_match_torch(seed):
    rng = np.random.default_rng(seed)
    kernel = tuple(int(k) for k in rng.integers(1, 4, 3))
    strides = tuple(int(s) for s in rng.integers(1, 3, 3))
    dilations = tuple(int(d) for d in rng.integers(1, 3, 3))
    causal = int(rng.integers(0, 3))
    pads = [int(p) for p in rng.integers(0, 3, 6)]
    if causal:
        pads[0] = pads[3] = 0
    spatial = tuple(int(s) for s in rng.integers(5, 9, 3))
    attrs = tp.Conv3dAttrs(tuple(pads), strides, dilations, causal)
    dims = tp.conv3d_output_dims(spatial, kernel, attrs, tp.IntDimOps())
    p = reference.resolve_conv3d_pads(kernel, pads, dilations, causal)
    x = torch.zeros(1, 1, *spatial)
    x = torch.nn.functional.pad(x, (p[2], p[5], p[1], p[4], p[0], p[3]))
    y = torch.nn.functional.conv3d(
        x, torch.zeros(1, 1, *kernel), stride=strides, dilation=dilations
    )
    assert tuple(dims) == tuple(y.shape[2:])


def test_supported_formats_are_linear_fp32_fp16_bf16_of_one_type():
    ok = tp.format_supported
    lin = "linear"
    for dt in ("float32", "float16", "bfloat16"):
        assert ok(0, [dt, dt, dt, dt], [lin] * 4, 3)
        assert ok(3, [dt, dt, dt, dt], [lin] * 4, 3)
    assert not ok(0, ["int8", "int8"], [lin, lin], 1)
    assert not ok(0, ["float16", "float16"], ["other", lin], 1)
    assert not ok(0, ["float16", "float16"], ["channels_last", lin], 1)  # not offered
    assert not ok(1, ["float16", "float32"], [lin, lin], 1)
    assert not ok(2, ["float32", "float32", "float16"], [lin] * 3, 2)
    assert not ok(1, [None, None], [lin, lin], 1)


def test_conv3d_takes_channels_last_for_16_bit_types_and_channels_in_eights():
    ok, cl = tp.format_supported, "channels_last"
    pos = tp.conv3d_channels_last_positions((96, 96, 3, 3, 3), 3)
    assert pos == (0, 3)
    for dt in ("float16", "bfloat16"):
        assert ok(0, [dt] * 4, [cl, "linear", "linear", cl], 3, pos)
        assert ok(3, [dt] * 4, [cl, "linear", "linear", cl], 3, pos)
        assert not ok(3, [dt] * 4, [cl, "linear", "linear", "linear"], 3, pos)  # y follows x
        assert not ok(3, [dt] * 4, ["linear", "linear", "linear", cl], 3, pos)
        assert not ok(1, [dt] * 4, [cl, cl, "linear", cl], 3, pos)  # weights stay linear
    assert not ok(0, ["float32"] * 4, [cl, "linear", "linear", cl], 3, pos)  # DHWC8 is 16-bit
    # Channel counts that DHWC8 would pad (RGB input, 12 output channels), or unknown ones.
    assert tp.conv3d_channels_last_positions((128, 3, 3, 3, 3), 3) == ()
    assert tp.conv3d_channels_last_positions((12, 96, 3, 3, 3), 2) == ()
    assert tp.conv3d_channels_last_positions((-1, 96, 3, 3, 3), 2) == ()
    assert tp.conv3d_channels_last_positions((16, 8, 3, 3, 3), 2) == (0, 2)


def test_layouts_of_tensorrt_formats_follow_the_rank():
    # HWC8 vectorizes axis -3 and DHWC8 axis -4: the channel axis only at ranks 4 and 5.
    assert tp.layout_of("LINEAR", 3) == tp.layout_of("LINEAR", 5) == "linear"
    assert tp.layout_of("HWC8", 4) == tp.layout_of("DHWC8", 5) == "channels_last"
    assert tp.layout_of("HWC8", 5) == "other"  # would vectorize D
    assert tp.layout_of("DHWC8", 4) == "other"
    assert tp.layout_of("HWC8", 3) == "other"
    assert tp.layout_of("CHW32", 4) == tp.layout_of("other", 4) == "other"


def test_groupnorm_takes_channels_last_for_16_bit_types_and_channels_in_eights():
    ok, cl, lin = tp.format_supported, "channels_last", "linear"
    for shape in [(2, 320, 64, 64), (1, 128, 3, 16, 16), (-1, 640, -1, -1)]:
        pos = tp.groupnorm_channels_last_positions(shape, 3)
        assert pos == (0, 3)
        for dt in ("float16", "bfloat16"):
            assert ok(0, [dt] * 4, [cl, lin, lin, cl], 3, pos)
            assert ok(3, [dt] * 4, [cl, lin, lin, cl], 3, pos)
            assert not ok(3, [dt] * 4, [cl, lin, lin, lin], 3, pos)  # y follows x
            assert not ok(1, [dt] * 4, [cl, cl, lin, cl], 3, pos)  # gamma and beta stay linear
        assert not ok(0, ["float32"] * 4, [cl, lin, lin, cl], 3, pos)  # HWC8 is 16-bit
    # Channel counts HWC8 would pad, unknown ones, and ranks without a channel-vectorized format.
    for shape in [(2, 12, 8, 8), (2, -1, 8, 8), (2, 320, 4096), (2, 64), (1, 64, 2, 2, 2, 2)]:
        assert tp.groupnorm_channels_last_positions(shape, 3) == ()


class _RecordingLibrary:
    """Stands in for PluginLibrary: records the launches instead of making them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def call(self, name: str, dtype: str, *args) -> None:
        self.calls.append((name, dtype, *args))


@pytest.mark.parametrize(("channels_last", "layout"), [(False, 0), (True, 1)])
def test_groupnorm_enqueue_passes_the_layout_of_its_format(channels_last, layout):
    lib = _RecordingLibrary()
    gn = tp.GroupNormSiLUAttrs(32, 1e-6, 0)
    tp.run_groupnorm_silu(lib, gn, "bfloat16", (2, 320, 4, 6, 8), 1, 2, 3, 4, 5, channels_last)
    ((name, dtype, *args),) = lib.calls
    assert (name, dtype) == ("groupnorm_silu", "bfloat16")
    assert args[:4] == [1, 2, 3, 4]  # x, gamma, beta, y
    assert args[4:7] == [2, 320, 4 * 6 * 8]  # logical sizes either way: N, C, spatial
    assert args[7:] == [32, np.float32(1e-6), 0, layout, 0, 0, 5]  # ..., tile, cluster, stream


@pytest.mark.parametrize(("channels_last", "layout"), [(False, 0), (True, 1)])
def test_conv3d_enqueue_passes_the_layout_of_its_format(channels_last, layout):
    lib = _RecordingLibrary()
    cv = tp.Conv3dAttrs((0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    shape, w_shape = (2, 16, 5, 6, 7), (8, 16, 3, 3, 3)
    tp.run_conv3d(lib, cv, "float16", shape, w_shape, 1, 2, 3, 4, 5, 6, channels_last)
    (pack, *_), (conv, dtype, *args) = lib.calls
    assert (pack, conv, dtype) == ("conv3d_pack_weights", "conv3d", "float16")
    assert args[:4] == [1, 5, 3, 4]  # x, the packed weights in the workspace, bias, y
    assert args[4:13] == [2, 16, 5, 6, 7, 8, 3, 3, 3]  # logical NCDHW sizes either way
    assert args[-4:] == [layout, None, 0, 6]  # no stream-K workspace past the packed weights


def test_conv3d_enqueue_hands_the_spare_workspace_to_stream_k():
    lib = _RecordingLibrary()
    cv = tp.Conv3dAttrs((0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    shape, w_shape = (1, 64, 5, 8, 8), (64, 64, 3, 3, 3)
    packed = tp.conv3d_workspace_bytes(w_shape, "float16")
    total = tp.conv3d_workspace_bytes(w_shape, "float16", 4096)
    tp.run_conv3d(lib, cv, "float16", shape, w_shape, 1, 2, 3, 4, 1 << 20, 6, True, total)
    (pack, _, _, ws, *_), (_, _, *args) = lib.calls
    assert ws == 1 << 20 and args[-3:] == [(1 << 20) + packed, 4096, 6]


def test_conv3d_workspace_holds_the_packed_weights_then_stream_k():
    assert tp.conv3d_workspace_bytes((64, 32, 3, 3, 3), "float16") == 64 * 32 * 27 * 2
    assert tp.conv3d_workspace_bytes((3, 5, 1, 1, 3), "float32") == 256
    assert tp.conv3d_workspace_bytes((3, 5, 1, 1, 3), "float32") >= 3 * 5 * 3 * 4
    assert tp.conv3d_workspace_bytes((3, 5, 1, 1, 3), "float32", 1024) == 256 + 1024


# --- without TensorRT ---------------------------------------------------------------------------


def test_clear_backend_error_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    b = _fake_bundle(tmp_path, SD1_MANIFEST)
    with pytest.raises(BackendError, match="TensorRT is not available"):
        build.build_tensorrt_engines(b.root)
    with pytest.raises(BackendError, match="TensorRT is not available"):
        backend.load_components(b)
    with pytest.raises(BackendError, match="TensorRT is not available"):
        tp.register_plugins(tmp_path / "lib.so")
    assert not (b.root / "engines").exists()
    assert not list(b.root.glob(".build-*"))


def _stand_in_trt() -> ModuleType:
    """The few TensorRT names the plugin classes and the backend's engine wrapper touch, as plain
    Python: these tests check our side of the binding's contract, the `tensorrt` ones TensorRT's."""

    def base(name: str) -> type:
        return type(name, (), {"__init__": lambda self: None})

    class PluginField:
        def __init__(self, name: str, data: np.ndarray, kind: str) -> None:
            self.name, self.data, self.type = name, data, kind

    def nptype(dt: str) -> type:  # trt.nptype raises TypeError for BF16: numpy has none
        return {"FLOAT": np.float32, "HALF": np.float16}[dt]

    trt = ModuleType("tensorrt_stand_in")  # a module, as _plugin_classes caches by it
    trt.__dict__.update(
        IPluginV3=base("IPluginV3"),
        IPluginV3OneCore=base("IPluginV3OneCore"),
        IPluginV3OneBuild=base("IPluginV3OneBuild"),
        IPluginV3OneRuntime=base("IPluginV3OneRuntime"),
        DataType=SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16"),
        PluginFieldType=SimpleNamespace(INT32="INT32", FLOAT32="FLOAT32"),
        TensorFormat=SimpleNamespace(LINEAR="LINEAR", HWC8="HWC8", DHWC8="DHWC8", CHW32="CHW32"),
        TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        PluginField=PluginField,
        PluginFieldCollection=list,
        nptype=nptype,
    )
    return trt


def test_plugins_own_their_serialized_fields_and_take_the_default_tactic():
    # TensorRT reads the fields after get_fields_to_serialize returns, and a PluginField does not
    # own its array; it calls set_tactic(0) even where no tactics are advertised, and the Python
    # binding fails that call where the method is missing.
    classes = tp._plugin_classes(_stand_in_trt())
    cases = {
        tp.CONV3D: tp.Conv3dAttrs((0, 1, 1, 0, 1, 1), (1, 2, 2), (1, 1, 1), 1),
        tp.GROUPNORM_SILU: tp.GroupNormSiLUAttrs(16, 0.25, 0),
    }
    for name, attrs in cases.items():
        plugin = classes[name][0](attrs, _RecordingLibrary())
        fields = plugin.get_fields_to_serialize()
        assert fields is plugin.get_fields_to_serialize()
        assert all(any(f.data is a for _, a in plugin._field_arrays) for f in fields)
        assert type(attrs).from_fields((f.name, f.data) for f in fields) == attrs
        twin = plugin.clone().get_fields_to_serialize()
        assert type(attrs).from_fields((f.name, f.data) for f in twin) == attrs
        assert plugin.set_tactic(0) is None
        with pytest.raises(BackendError, match="no tactic 3"):
            plugin.set_tactic(3)


def test_groupnorm_tactics_force_tiles_and_clusters():
    # Tactic 0 (TensorRT's default) is the planner's plan; the others force a tile of groups and a
    # cluster size, nonzero and unique as TensorRT requires, tiles only channels-last.
    first, last = tp.groupnorm_tactics(32, False), tp.groupnorm_tactics(32, True)
    assert first == [17, 18, 20, 24] and len(last) == 24 == len(set(last)) and 0 not in last
    assert [tp.groupnorm_tactic_plan(t, 32) for t in first] == [(1, 1), (1, 2), (1, 4), (1, 8)]
    assert tp.groupnorm_tactic_plan(0, 32) == (0, 0)
    assert tp.groupnorm_tactic_plan(32 * 16 + 2, 32) == (32, 2)
    assert {tp.groupnorm_tactic_plan(t, 32)[0] for t in last} == {1, 2, 4, 8, 16, 32}
    assert max(t // 16 for t in tp.groupnorm_tactics(6, True)) == 2  # tiles divide the groups
    for bad in (3, 16, 20 * 16 + 1, 64 * 16 + 1, -17):
        with pytest.raises(BackendError, match="tactic"):
            tp.groupnorm_tactic_plan(bad, 32)
    with pytest.raises(BackendError, match="tiles 4 of 6"):
        tp.groupnorm_tactic_plan(4 * 16 + 1, 6)
    lib = _RecordingLibrary()
    attrs = tp.GroupNormSiLUAttrs(32)
    tp.run_groupnorm_silu(lib, attrs, "float16", (2, 64, 8, 8), 1, 2, 3, 4, 5, True, 8 * 16 + 4)
    assert lib.calls[-1][-4:] == (1, 8, 4, 5)  # layout, tile, cluster, stream
    with pytest.raises(BackendError, match="channels-first"):
        tp.run_groupnorm_silu(
            lib, attrs, "float16", (2, 64, 8, 8), 1, 2, 3, 4, 5, False, 8 * 16 + 4
        )


def test_groupnorm_plugin_advertises_tactics_for_its_configured_format():
    # TensorRT calls configure_plugin for a format combination, then get_valid_tactics, times each
    # and hands the best to set_tactic, which enqueue then runs (a clone keeps it).
    trt = _stand_in_trt()
    lib = _RecordingLibrary()
    gn = tp._plugin_classes(trt)[tp.GROUPNORM_SILU][0](tp.GroupNormSiLUAttrs(32), lib)
    F, H = trt.TensorFormat, trt.DataType.HALF

    def io(shape: tuple, fmt: str) -> SimpleNamespace:
        return SimpleNamespace(desc=SimpleNamespace(type=H, format=fmt, dims=shape))

    x4 = (2, 320, 64, 64)
    for fmt, count in ((F.LINEAR, 4), (F.HWC8, 24)):
        gn.configure_plugin(
            [io(x4, fmt), io((320,), F.LINEAR), io((320,), F.LINEAR)], [io(x4, fmt)]
        )
        assert len(gn.get_valid_tactics()) == count
    gn.set_tactic(4 * 16 + 2)
    twin = gn.clone()
    twin.enqueue([io(x4, F.HWC8).desc], [io(x4, F.HWC8).desc], [1, 2, 3], [4], 0, 5)
    assert lib.calls[-1][-4:] == (1, 4, 2, 5)
    with pytest.raises(BackendError, match="no tactic"):
        gn.set_tactic(4 * 16 + 3)


def test_plugins_map_tensorrt_formats_to_their_launch_layouts():
    # Through the plugin classes as TensorRT calls them: supports_format_combination on tensor
    # descriptors, then enqueue's layout argument to the C launcher.
    trt = _stand_in_trt()
    classes = tp._plugin_classes(trt)
    lib = _RecordingLibrary()
    gn = classes[tp.GROUPNORM_SILU][0](tp.GroupNormSiLUAttrs(32), lib)
    F, H = trt.TensorFormat, trt.DataType.HALF

    def desc(shape: tuple, fmt: str, dtype: str = H) -> SimpleNamespace:
        return SimpleNamespace(type=dtype, format=fmt, dims=shape)

    def supported(pos: int, x_shape: tuple, x_fmt: str, y_fmt: str, dtype: str = H) -> bool:
        c = (x_shape[1],)
        descs = [desc(x_shape, x_fmt, dtype), desc(c, F.LINEAR, dtype), desc(c, F.LINEAR, dtype)]
        descs.append(desc(x_shape, y_fmt, dtype))
        return gn.supports_format_combination(pos, [SimpleNamespace(desc=d) for d in descs], 3)

    x4, x5 = (2, 320, 64, 64), (1, 128, 3, 16, 16)
    assert supported(0, x4, F.HWC8, F.HWC8) and supported(3, x4, F.HWC8, F.HWC8)
    assert supported(0, x5, F.DHWC8, F.DHWC8) and supported(3, x5, F.DHWC8, F.DHWC8)
    assert not supported(0, x4, F.DHWC8, F.DHWC8)  # would vectorize H
    assert not supported(0, x5, F.HWC8, F.HWC8)  # would vectorize D
    assert not supported(3, x4, F.HWC8, F.LINEAR)
    assert not supported(0, x4, F.HWC8, F.HWC8, trt.DataType.FLOAT)
    assert not supported(0, (2, 12, 8, 8), F.HWC8, F.HWC8)  # HWC8 would pad 12 channels
    assert not supported(0, x4, F.CHW32, F.CHW32)
    assert supported(0, x4, F.LINEAR, F.LINEAR, trt.DataType.FLOAT)

    for fmt, shape, layout in [(F.HWC8, x4, 1), (F.DHWC8, x5, 1), (F.LINEAR, x4, 0)]:
        lib.calls.clear()
        gn.enqueue([desc(shape, fmt)], [desc(shape, fmt)], [1, 2, 3], [4], 0, 5)
        ((name, dtype, *args),) = lib.calls
        assert (name, dtype, args[-4:]) == ("groupnorm_silu", "float16", [layout, 0, 0, 5])


def test_bfloat16_engine_tensors_are_refused_by_name():
    trt = _stand_in_trt()

    class Engine:
        num_io_tensors = 1

        def create_execution_context(self) -> object:
            return object()

        def get_tensor_name(self, i: int) -> str:
            return "latent"

        def get_tensor_mode(self, name: str) -> str:
            return trt.TensorIOMode.INPUT

        def get_tensor_dtype(self, name: str) -> str:
            return trt.DataType.BF16

    with pytest.raises(BackendError, match="vae_decoder: tensor 'latent' is bfloat16"):
        backend.TrtComponent("vae_decoder", Engine(), None, trt, None)


# --- GPU, no TensorRT: the launches enqueue makes -----------------------------------------------


@pytest.fixture(scope="module")
def plugin_library(tmp_path_factory):
    if find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) is not installed on this machine")
    return tp.PluginLibrary(tp.build_plugin_library(tmp_path_factory.mktemp("lib"), "sm_90"))


@pytest.mark.gpu
def test_enqueue_runs_channels_first_through_channels_last_copies(plugin_library):
    # With the spare workspace the library asks for, a channels-first RGB output conv runs as
    # transpose, the channels-last narrow-output kernel, transpose back.
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng()
    x = rng.standard_normal((1, 32, 4, 10, 12)).astype("float16")
    w = (0.03 * rng.standard_normal((3, 32, 3, 3, 3))).astype("float16")
    bias = (0.1 * rng.standard_normal(3)).astype("float16")
    cv = tp.Conv3dAttrs((0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    spare = plugin_library.conv3d_spare_workspace_bytes(cv, "float16", x.shape, w.shape, False)
    copies = -(-x.size * 2 // 256) * 256 + -(-3 * 4 * 10 * 12 * 2 // 256) * 256
    assert spare == copies + plugin_library.streamk_workspace_bytes()
    total = tp.conv3d_workspace_bytes(w.shape, "float16", spare)
    dx, dw, db = cupy.asarray(x), cupy.asarray(w), cupy.asarray(bias)
    dy = cupy.full((1, 3, 4, 10, 12), np.nan, dtype="float16")
    ws = cupy.empty(total, dtype=np.uint8)
    stream = cupy.cuda.Stream(non_blocking=True)
    tp.run_conv3d(
        plugin_library, cv, "float16", x.shape, w.shape, dx.data.ptr, dw.data.ptr, db.data.ptr,
        dy.data.ptr, ws.data.ptr, stream.ptr, workspace_bytes=total,
    )  # fmt: skip
    stream.synchronize()
    ref = reference.conv3d_ref(
        x.astype(np.float64), w.astype(np.float64), bias.astype(np.float64), cv.pads,
        cv.strides, cv.dilations, cv.causal_time,
    )  # fmt: skip
    assert np.abs(cupy.asnumpy(dy) - ref).max() / np.abs(ref).max() <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_enqueue_launches_match_the_reference(plugin_library, dtype):
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng()
    tol = 1e-5 if dtype == "float32" else 1e-2
    stream = cupy.cuda.Stream(non_blocking=True)

    x = rng.standard_normal((2, 64, 6, 10)).astype(dtype)
    g = (1 + 0.1 * rng.standard_normal(64)).astype(dtype)
    b = (0.1 * rng.standard_normal(64)).astype(dtype)
    gn = tp.GroupNormSiLUAttrs(32, 1e-5, 1)
    dx, dg, db = cupy.asarray(x), cupy.asarray(g), cupy.asarray(b)
    dy = cupy.full(x.shape, np.nan, dtype=dtype)
    tp.run_groupnorm_silu(
        plugin_library,
        gn,
        dtype,
        x.shape,
        dx.data.ptr,
        dg.data.ptr,
        db.data.ptr,
        dy.data.ptr,
        stream.ptr,
    )
    stream.synchronize()
    ref = reference.groupnorm_silu_ref(x.astype(np.float64), g, b, 32, 1e-5, 1)
    assert np.abs(cupy.asnumpy(dy) - ref).max() / np.abs(ref).max() <= tol

    x = rng.standard_normal((2, 8, 5, 6, 7)).astype(dtype)
    w = (0.2 * rng.standard_normal((16, 8, 3, 3, 3))).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    cv = tp.Conv3dAttrs((0, 1, 1, 0, 1, 1), (1, 2, 1), (1, 1, 1), 2)
    dims = tp.conv3d_output_dims(x.shape[2:], w.shape[2:], cv, tp.IntDimOps())
    dx, dw, dbias = cupy.asarray(x), cupy.asarray(w), cupy.asarray(bias)
    dy = cupy.full((2, 16, *dims), np.nan, dtype=dtype)
    ws = cupy.empty(tp.conv3d_workspace_bytes(w.shape, dtype), dtype=np.uint8)
    tp.run_conv3d(
        plugin_library,
        cv,
        dtype,
        x.shape,
        w.shape,
        dx.data.ptr,
        dw.data.ptr,
        dbias.data.ptr,
        dy.data.ptr,
        ws.data.ptr,
        stream.ptr,
    )
    stream.synchronize()
    ref = reference.conv3d_ref(
        x.astype(np.float64),
        w.astype(np.float64),
        bias.astype(np.float64),
        cv.pads,
        cv.strides,
        cv.dilations,
        cv.causal_time,
    )
    assert np.abs(cupy.asnumpy(dy) - ref).max() / np.abs(ref).max() <= tol

    # The DHWC8 path: the same logical shapes, x and y stored NDHWC.
    dx_last = cupy.asarray(np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)))
    dy_last = cupy.full((2, *dims, 16), np.nan, dtype=dtype)
    tp.run_conv3d(
        plugin_library,
        cv,
        dtype,
        x.shape,
        w.shape,
        dx_last.data.ptr,
        dw.data.ptr,
        dbias.data.ptr,
        dy_last.data.ptr,
        ws.data.ptr,
        stream.ptr,
        channels_last=True,
    )
    stream.synchronize()
    got = cupy.asnumpy(dy_last).transpose(0, 4, 1, 2, 3)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= tol


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 320, 8, 12), (1, 128, 3, 10, 6)])
def test_groupnorm_enqueue_in_channels_last_formats(plugin_library, shape):
    # HWC8 / DHWC8 with channels in eights: x and y in (N, spatial..., C) memory under their
    # logical shape; 320 channels in 32 groups put 10 in a group, so 16-byte vectors straddle two.
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng()
    c = shape[1]
    x = rng.standard_normal(shape).astype("float16")
    g = (1 + 0.1 * rng.standard_normal(c)).astype("float16")
    b = (0.1 * rng.standard_normal(c)).astype("float16")
    to_last = (0, *range(2, len(shape)), 1)
    dx = cupy.asarray(np.ascontiguousarray(x.transpose(to_last)))
    dy = cupy.full(dx.shape, np.nan, dtype="float16")
    dg, db = cupy.asarray(g), cupy.asarray(b)
    stream = cupy.cuda.Stream(non_blocking=True)
    gn = tp.GroupNormSiLUAttrs(32, 1e-5, 1)
    ptrs = (dx.data.ptr, dg.data.ptr, db.data.ptr, dy.data.ptr, stream.ptr)
    tp.run_groupnorm_silu(plugin_library, gn, "float16", shape, *ptrs, channels_last=True)
    stream.synchronize()
    got = cupy.asnumpy(dy).transpose(np.argsort(to_last))
    ref = reference.groupnorm_silu_ref(x.astype(np.float64), g, b, 32, 1e-5, 1)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-2


# --- TensorRT (not run on the project's machines) ------------------------------------------------


@pytest.fixture(scope="module")
def trt():
    try:
        import tensorrt
    except (ImportError, OSError) as e:
        pytest.skip(f"TensorRT is not importable here: {e}")
    return tensorrt


def _plugin_model(path: Path, dtype: int, groupnorm: bool = True) -> None:
    """x -> latentrt::GroupNormSiLU -> latentrt::Conv3d (causal, 16 -> 8 channels) with dynamic
    N, D, H, W; without `groupnorm`, x goes straight into the Conv3d."""
    rng = np.random.default_rng(0)
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    inits = [
        onnx.numpy_helper.from_array((1 + 0.1 * rng.standard_normal(16)).astype(np_dtype), "g"),
        onnx.numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np_dtype), "b"),
        onnx.numpy_helper.from_array(
            (0.2 * rng.standard_normal((8, 16, 3, 3, 3))).astype(np_dtype), "w"
        ),
        onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np_dtype), "cb"),
    ]
    nodes = [
        helper.make_node(
            "Conv3d",
            ["h" if groupnorm else "x", "w", "cb"],
            ["y"],
            domain="latentrt",
            pads=[0, 1, 1, 0, 1, 1],
            strides=[1, 1, 1],
            dilations=[1, 1, 1],
            causal_time=1,
        ),
    ]
    if groupnorm:
        gn = helper.make_node(
            "GroupNormSiLU",
            ["x", "g", "b"],
            ["h"],
            domain="latentrt",
            num_groups=4,
            epsilon=1e-5,
            activation=1,
        )
        nodes.insert(0, gn)
    else:
        inits = inits[2:]
    graph = helper.make_graph(
        nodes,
        "plugins",
        [helper.make_tensor_value_info("x", dtype, ["n", 16, "d", "h", "w"])],
        [helper.make_tensor_value_info("y", dtype, ["n", 8, "d", "h", "w"])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("latentrt", 1)]
    )
    model.ir_version = 9
    onnx.save(model, path)


@pytest.fixture(scope="module")
def registered(trt, plugin_library):
    return tp.register_plugins(plugin_library)


@pytest.mark.tensorrt
def test_plugins_register_and_creators_are_found(trt, registered, plugin_library):
    registry = trt.get_plugin_registry()
    for name in (tp.GROUPNORM_SILU, tp.CONV3D):
        creator = registry.get_creator(name, tp.PLUGIN_VERSION, tp.PLUGIN_NAMESPACE)
        assert creator is not None and creator.name == name
        assert [f.name for f in creator.field_names] == [
            n
            for n, _ in (
                tp.GroupNormSiLUAttrs if name == tp.GROUPNORM_SILU else tp.Conv3dAttrs
            ).FIELDS
        ]
    attrs = tp.Conv3dAttrs((0, 1, 1, 0, 1, 1), (1, 2, 2), (1, 1, 1), 1)
    fc = trt.PluginFieldCollection(
        [trt.PluginField(n, a, trt.PluginFieldType.INT32) for n, a in attrs.to_fields()]
    )
    plugin = registered[tp.CONV3D].create_plugin("c", fc, trt.TensorRTPhase.BUILD)
    fields = plugin.get_fields_to_serialize()
    assert tp.Conv3dAttrs.from_fields((f.name, f.data) for f in fields) == attrs
    again = tp.register_plugins(plugin_library)  # idempotent for the same library
    assert all(again[n] is registered[n] for n in registered)


@pytest.mark.tensorrt
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-4), ("fp16", 2e-2)])
def test_plugin_nodes_build_and_run_in_tensorrt(trt, registered, tmp_path, precision, tol):
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        TrtRunner,
        engine_from_network,
        network_from_onnx_path,
    )

    dtype = onnx.TensorProto.FLOAT if precision == "fp32" else onnx.TensorProto.FLOAT16
    _plugin_model(tmp_path / "m.onnx", dtype)
    profile = Profile().add("x", min=(1, 16, 1, 4, 4), opt=(2, 16, 4, 8, 8), max=(3, 16, 6, 12, 12))
    engine = engine_from_network(  # strongly typed: the plugins run in the graph's dtype
        network_from_onnx_path(str(tmp_path / "m.onnx"), strongly_typed=True),
        CreateConfig(profiles=[profile]),
    )
    model = onnx.load(tmp_path / "m.onnx")
    w = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    rng = np.random.default_rng(1)
    with TrtRunner(engine) as runner:
        for shape in [(1, 16, 1, 4, 4), (3, 16, 5, 12, 7)]:
            x = rng.standard_normal(shape).astype(np.float32 if precision == "fp32" else np.float16)
            y = runner.infer({"x": x})["y"]
            h = reference.groupnorm_silu_ref(x.astype(np.float64), w["g"], w["b"], 4, 1e-5, 1)
            ref = reference.conv3d_ref(h, w["w"], w["cb"], (0, 1, 1, 0, 1, 1), causal_time=1)
            assert y.shape == ref.shape
            assert np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max() <= tol


@pytest.mark.tensorrt
@pytest.mark.parametrize("groupnorm", [False, True])
def test_plugins_with_channels_last_io_in_tensorrt(trt, registered, tmp_path, groupnorm):
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        TrtRunner,
        engine_from_network,
        network_from_onnx_path,
    )

    # Conv3d alone, or GroupNormSiLU -> Conv3d, in fp16 (16 -> 8 channels) with the network's
    # input and output held to DHWC8: both plugins take DHWC8, so TensorRT can hand them NDHWC
    # without a reformat (the channels-last launches). Which formats it picks inside the chain is
    # its choice; the result must match either way. With channels in eights, a DHWC8 buffer is
    # plain NDHWC memory: the runner copies bytes, so x goes in as NDHWC memory under its
    # logical NCDHW shape and y comes back the same way.
    _plugin_model(tmp_path / "m.onnx", onnx.TensorProto.FLOAT16, groupnorm=groupnorm)
    model = onnx.load(tmp_path / "m.onnx")
    builder, network, parser = network_from_onnx_path(str(tmp_path / "m.onnx"), strongly_typed=True)
    for t in (network.get_input(0), network.get_output(0)):
        t.allowed_formats = 1 << int(trt.TensorFormat.DHWC8)
    profile = Profile().add("x", min=(1, 16, 1, 4, 4), opt=(1, 16, 4, 8, 8), max=(2, 16, 6, 12, 12))
    engine = engine_from_network((builder, network, parser), CreateConfig(profiles=[profile]))
    w = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    x = np.random.default_rng(2).standard_normal((2, 16, 5, 12, 7)).astype(np.float16)
    x_mem = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)).reshape(x.shape)
    with TrtRunner(engine) as runner:
        y_mem = runner.infer({"x": x_mem})["y"]
    n, c, d, h, wd = y_mem.shape
    y = np.ascontiguousarray(y_mem).reshape(n, d, h, wd, c).transpose(0, 4, 1, 2, 3)
    hid = x.astype(np.float64)
    if groupnorm:
        hid = reference.groupnorm_silu_ref(hid, w["g"], w["b"], 4, 1e-5, 1)
    ref = reference.conv3d_ref(hid, w["w"], w["cb"], (0, 1, 1, 0, 1, 1), causal_time=1)
    assert y.shape == ref.shape
    assert np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max() <= 2e-2


@pytest.fixture(scope="module")
def tiny_bundles(trt, tmp_path_factory):
    from latentrt.export import export_bundle
    from tests import sd_fixtures

    root = tmp_path_factory.mktemp("trt_sd1")
    a = export_bundle(sd_fixtures.sd_pipeline(root / "src_a", "sd1", seed=0), root / "a")
    b = export_bundle(sd_fixtures.sd_pipeline(root / "src_b", "sd1", seed=1), root / "b")
    return a, b


@pytest.fixture(scope="module")
def built(tiny_bundles):
    messages: list[str] = []
    dest = build.build_tensorrt_engines(tiny_bundles[0], messages.append)
    return dest, messages


@pytest.mark.tensorrt
def test_engine_build_with_profiles_and_cache(trt, tiny_bundles, built):
    dest, messages = built
    bundle = Bundle.open(tiny_bundles[0])
    index = json.loads((dest / "index.json").read_text())
    assert set(index["components"]) == set(bundle.manifest["components"])
    assert (dest / "timing.cache").stat().st_size > 0
    profiles = build.tensorrt_profiles(bundle.manifest)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for name, entry in index["components"].items():
        assert entry["options"]["refittable"] and entry["options"]["precision"] == "fp32"
        engine = runtime.deserialize_cuda_engine((bundle.root / entry["file"]).read_bytes())
        assert engine.refittable
        for inp, (lo, opt, hi) in profiles[name].items():
            got = [tuple(s) for s in engine.get_tensor_profile_shape(inp, 0)]
            assert got == [lo, opt, hi]
    assert sum("building TensorRT engine" in m for m in messages) == len(index["components"])
    again: list[str] = []
    build.build_tensorrt_engines(tiny_bundles[0], again.append)
    assert sum("up to date" in m for m in again) == len(index["components"])
    assert json.loads((dest / "index.json").read_text())["components"] == index["components"]


@pytest.mark.tensorrt
def test_pipeline_on_tensorrt_matches_ort_cpu(trt, tiny_bundles, built):
    from latentrt import Pipeline

    bundle = Bundle.open(tiny_bundles[0])
    ort = Pipeline.load(bundle.root, backend="ort-cpu")
    trt_pipe = Pipeline(bundle, backend.load_components(bundle), "tensorrt")
    latents = np.random.default_rng(3).standard_normal((2, 4, 10, 8)).astype(np.float32)
    kwargs = dict(
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        width=64,
        height=80,
        steps=6,
        guidance=7.5,
        sampler="euler",
        seed=0,
        latents=latents,
        batch=2,
        output="np",
    )
    ref = ort.generate(**kwargs)
    out = trt_pipe.generate(**kwargs)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 5e-3


@pytest.mark.tensorrt
def test_refit_unet_with_new_weights(trt, tiny_bundles, built):
    import onnxruntime as ort

    a, b = (Bundle.open(p) for p in tiny_bundles)
    unet = backend.load_components(a)["unet"]
    rng = np.random.default_rng(4)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([999.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32),
    }
    before = unet(**feeds)["out_sample"]
    expect = ort.InferenceSession(
        str(b.component_path("unet")), providers=["CPUExecutionProvider"]
    ).run(["out_sample"], feeds)[0]
    assert np.abs(before - expect).max() > 1e-2  # the two weight sets really differ
    unet.refit(b.component_path("unet"))
    after = unet(**feeds)["out_sample"]
    assert np.abs(after - expect).max() <= 1e-3
