"""`latentrt build --target tensorrt`: TensorRT plans per component under `engines/tensorrt/`.

Each component's ONNX graph goes through polygraphy (TensorRT's ONNX parser and builder) with
one optimization profile taken from the bundle's manifest `shapes` (the UNet sees twice the
batch under classifier-free guidance; text encoders see every prompt window as a batch row),
a timing cache kept beside the plans, and refittable weights (LoRA; TensorRT 11.3's documentation
lists a known issue: with BuilderFlag.REFIT a GEMM bias may be dropped even when no refit is
done). Precision: at the bundle's own precision the network is strongly typed (the ONNX graph's
fp32/fp16 types are kept, which is all TensorRT 11 allows); a lower precision than the bundle's
(fp16 or bf16 engines from an fp32 bundle) uses TensorRT 10's weak-typing builder flags. The
`latentrt` plugin nodes (GroupNormSiLU, Conv3d) are served by the plugin library built from
`plugins/cuda/*.cu`, which is kept beside the plans too.

As for the ORT targets (`runtime/build.py`), a key over the ONNX file's sha256, the build
options, the TensorRT version and the GPU decides whether a plan is current; index.json records
them, and the folder is written in a temporary directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentrt.errors import BackendError, BundleError
from latentrt.plugins.tensorrt_plugins import (
    build_plugin_library,
    import_tensorrt,
    register_plugins,
    sources_digest,
)
from latentrt.runtime.atomic import replace_dir
from latentrt.runtime.bundle import Bundle

TARGET = "tensorrt"
ENGINE_INDEX = "index.json"
TIMING_CACHE = "timing.cache"
PRECISIONS = ("fp32", "fp16", "bf16")
# Prompts up to this many 77-token windows (A1111's 75-token chunks) fit the engines' profiles.
MAX_PROMPT_WINDOWS = 3

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


# --- what an engine depends on ------------------------------------------------------------------


def resolve_precision(manifest: dict, precision: str | None) -> str:
    """The build precision: the bundle's own unless overridden; bf16 needs an fp32 bundle."""
    bundle_precision = manifest.get("precision", "fp32")
    chosen = bundle_precision if precision is None else precision
    if chosen not in PRECISIONS:
        raise BackendError(f"TensorRT precision must be one of {PRECISIONS}, got {chosen!r}")
    if chosen == "bf16" and bundle_precision != "fp32":
        raise BackendError(
            f"bf16 engines are built from fp32 bundles; this one is {bundle_precision}"
        )
    return chosen


def use_strong_typing(
    manifest: dict, precision: str, weak_typing: bool, tensorrt_version: str
) -> bool:
    """Strongly typed at the bundle's precision; weak typing (TensorRT 10 flags) below it."""
    bundle_precision = manifest.get("precision", "fp32")
    if precision == bundle_precision:
        return True
    if not weak_typing:
        raise BackendError(
            f"TensorRT {tensorrt_version} builds strongly typed networks only, at the precision "
            f"of the ONNX graphs ({bundle_precision} here): export a {precision} bundle for "
            f"{precision} engines"
        )
    return False


def _component_role(name: str) -> str:
    if name.startswith("text_encoder"):
        return "text"
    if name == "unet":
        return "unet"
    if name.startswith("vae_decoder"):
        return "latent"
    if name.startswith("vae_encoder"):
        return "pixels"
    raise BackendError(f"no TensorRT optimization-profile rule for component {name!r}")


def _size_range(manifest: dict, axis: str, scale: int) -> tuple[int, int, int]:
    """(min, opt, max) of a height/width axis in units of `scale` pixels."""
    lo, hi = manifest["shapes"][axis]
    family = manifest.get("family")
    default = manifest.get("default_size", 512 if family == "sd1" else 768)
    opt = min(max(int(default), lo), hi)
    low, opt_, high = math.ceil(lo / scale), opt // scale, hi // scale
    if not 0 < low <= high:
        raise BackendError(f"the bundle's {axis} range [{lo}, {hi}] holds no size for TensorRT")
    return low, min(max(opt_, low), high), high


def tensorrt_profiles(manifest: dict, max_prompt_windows: int = MAX_PROMPT_WINDOWS) -> dict:
    """component -> input -> (min, opt, max) shapes, from the manifest's shapes and inputs."""
    max_batch = int(manifest["shapes"]["batch"][1])
    downscale = int(manifest["latent"]["downscale"])
    tokens = int(manifest["text_encoders"][0].get("max_length", 77))
    axes_by_role = {
        "text": {"batch": (1, 2, 2 * max_batch * max_prompt_windows)},
        "unet": {
            "batch": (1, 2, 2 * max_batch),
            "sequence": (tokens, tokens, tokens * max_prompt_windows),
            "height": _size_range(manifest, "height", downscale),
            "width": _size_range(manifest, "width", downscale),
        },
        "latent": {
            "batch": (1, 1, max_batch),
            "height": _size_range(manifest, "height", downscale),
            "width": _size_range(manifest, "width", downscale),
        },
        "pixels": {
            "batch": (1, 1, max_batch),
            "height": tuple(v * downscale for v in _size_range(manifest, "height", downscale)),
            "width": tuple(v * downscale for v in _size_range(manifest, "width", downscale)),
        },
    }
    out: dict[str, Profile] = {}
    for name, comp in manifest["components"].items():
        axes = axes_by_role[_component_role(name)]
        profile: Profile = {}
        for inp, spec in comp.get("inputs", {}).items():
            shape: list[tuple[int, int, int]] = []
            for dim in spec["shape"]:
                if isinstance(dim, int):
                    shape.append((dim, dim, dim))
                elif dim in axes:
                    shape.append(axes[dim])
                else:
                    raise BackendError(
                        f"{name}: input {inp} has dynamic axis {dim!r} with no TensorRT profile rule"
                    )
            profile[inp] = tuple(tuple(s[i] for s in shape) for i in range(3))
        if not profile:
            raise BackendError(f"{name}: the manifest lists no inputs to build a profile from")
        out[name] = profile
    return out


def build_options(
    precision: str, profile: Profile, plugins: str | None, strongly_typed: bool = True
) -> dict:
    """The JSON options an engine is built with (and keyed on)."""
    return {
        "precision": precision,
        "strongly_typed": strongly_typed,
        "refittable": True,
        "tf32": False,
        "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())},
        "plugins": plugins,
    }


def _onnx_digest(bundle: Bundle, component: str) -> str:
    comp = bundle.component(component)
    if comp.get("sha256"):
        return comp["sha256"]
    h = hashlib.sha256()
    path = bundle.component_path(component)
    for p in (path, path.with_name(path.name + ".data")):
        if p.is_file():
            with p.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 24), b""):
                    h.update(block)
    return h.hexdigest()


def engine_key(
    bundle: Bundle, component: str, options: dict, *, tensorrt_version: str, device: dict
) -> str:
    """Hash of what a plan depends on: ONNX bytes, build options, TensorRT version, GPU."""
    payload = json.dumps(
        {
            "onnx_sha256": _onnx_digest(bundle, component),
            "file": bundle.component(component)["file"],
            "target": TARGET,
            "options": options,
            "tensorrt": tensorrt_version,
            "device": device,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_index(dest: Path) -> dict:
    """The engines folder's index.json, or {} when absent or unreadable."""
    try:
        index = json.loads((dest / ENGINE_INDEX).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return index if isinstance(index, dict) else {}


def is_current(bundle: Bundle, entry: dict | None, key: str) -> bool:
    """True when an index entry has this key and its plan file is inside the bundle."""
    if not entry or entry.get("key") != key:
        return False
    try:
        return bundle.path(entry["file"], must_exist=True).is_file()
    except (BundleError, KeyError):
        return False


def device_signature() -> dict:
    """Name and compute capability of the current CUDA device (engines are per GPU)."""
    try:
        import cupy

        dev = cupy.cuda.runtime.getDevice()
        props = cupy.cuda.runtime.getDeviceProperties(dev)
        name = props["name"]
        major, minor = int(props["major"]), int(props["minor"])
    except ImportError:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise BackendError(
                "the TensorRT backend needs CuPy (pip install cupy-cuda12x or cupy-cuda13x)"
            ) from None
        err, dev = cudart.cudaGetDevice()
        err2, props = cudart.cudaGetDeviceProperties(dev)
        if int(err) or int(err2):
            raise BackendError(f"cannot query the CUDA device ({err}, {err2})") from None
        name, major, minor = props.name, int(props.major), int(props.minor)
    except Exception as e:  # cupy raises CUDARuntimeError without a GPU
        raise BackendError(f"no usable CUDA device for TensorRT: {e}") from None
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode()
    return {"name": str(name), "compute_capability": f"{major}.{minor}"}


def _arch(device: dict) -> str:
    """nvcc target of the plugin library: sm_90a on Hopper (its wgmma Conv3d kernel)."""
    arch = "sm_" + device["compute_capability"].replace(".", "")
    return arch + "a" if arch == "sm_90" else arch


# --- the build ----------------------------------------------------------------------------------


def _import_polygraphy() -> Any:
    try:
        from polygraphy.backend import trt as poly
    except ImportError as e:
        raise BackendError(
            f"TensorRT engine builds need polygraphy ({e}); pip install polygraphy"
        ) from None
    return poly


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _plugin_library(dest: Path, tmp: Path, device: dict, say: Callable[[str], None]) -> str | None:
    """Put the plugin library for this GPU into `tmp` (reused or built) and register it."""
    digest = sources_digest()
    name = f"liblatentrt_plugins.{digest[:16]}.{_arch(device)}.so"
    if (dest / name).is_file():
        _link_or_copy(dest / name, tmp / name)
    else:
        say(f"building the latentrt plugin library for {_arch(device)}")
        try:
            build_plugin_library(tmp, _arch(device))
        except BackendError as e:
            say(f"no latentrt plugins ({e}); graphs with latentrt nodes will not build")
            return None
    register_plugins(tmp / name)
    return name


def _build_plan(poly: Any, onnx_path: Path, profile: Profile, options: dict, timing: Path) -> bytes:
    strong = options["strongly_typed"]
    network = poly.network_from_onnx_path(str(onnx_path), strongly_typed=strong)
    trt_profile = poly.Profile()
    for name, (lo, opt, hi) in profile.items():
        trt_profile.add(name, min=lo, opt=opt, max=hi)
    kwargs: dict[str, Any] = {
        "profiles": [trt_profile],
        "refittable": options["refittable"],
        "tf32": options["tf32"],
    }
    if not strong and options["precision"] in ("fp16", "bf16"):
        kwargs[options["precision"]] = True
    if timing.is_file():
        kwargs["load_timing_cache"] = str(timing)
    config = poly.CreateConfig(**kwargs)
    return poly.engine_bytes_from_network(network, config=config, save_timing_cache=str(timing))


def build_tensorrt_engines(
    bundle_path: str | Path,
    progress: Callable[[str], None] | None = None,
    *,
    precision: str | None = None,
) -> Path:
    """Build (or reuse) a TensorRT plan for every component; returns `engines/tensorrt/`."""
    bundle = Bundle.open(bundle_path)
    say = progress or (lambda _m: None)
    trt = import_tensorrt()
    poly = _import_polygraphy()
    precision = resolve_precision(bundle.manifest, precision)
    strongly_typed = use_strong_typing(
        bundle.manifest, precision, hasattr(trt.BuilderFlag, "FP16"), trt.__version__
    )
    profiles = tensorrt_profiles(bundle.manifest)
    device = device_signature()
    dest = bundle.root / "engines" / TARGET
    index = read_index(dest)
    old_entries = index.get("components", {}) if isinstance(index.get("components"), dict) else {}
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=bundle.root))
    try:
        timing = tmp / TIMING_CACHE
        if (dest / TIMING_CACHE).is_file():
            shutil.copyfile(dest / TIMING_CACHE, timing)
        library = _plugin_library(dest, tmp, device, say)
        plugins = sources_digest() if library else None
        entries = {}
        for name in bundle.manifest["components"]:
            options = build_options(precision, profiles[name], plugins, strongly_typed)
            key = engine_key(bundle, name, options, tensorrt_version=trt.__version__, device=device)
            old = old_entries.get(name)
            if is_current(bundle, old, key):
                say(f"{name}: up to date")
                _link_or_copy(bundle.root / old["file"], tmp / Path(old["file"]).name)
                entries[name] = old
                continue
            say(f"{name}: building TensorRT engine ({precision})")
            try:
                plan = _build_plan(
                    poly, bundle.component_path(name), profiles[name], options, timing
                )
            except BackendError:
                raise
            except Exception as e:  # polygraphy/TensorRT raise their own types
                raise BackendError(f"building the TensorRT engine for {name} failed: {e}") from None
            fname = f"{name}.{key}.plan"
            (tmp / fname).write_bytes(bytes(plan))
            entries[name] = {
                "file": f"engines/{TARGET}/{fname}",
                "key": key,
                "options": options,
                "tensorrt": trt.__version__,
                "device": device,
            }
        index = {
            "components": entries,
            "plugin_library": f"engines/{TARGET}/{library}" if library else None,
            "timing_cache": f"engines/{TARGET}/{TIMING_CACHE}" if timing.is_file() else None,
        }
        (tmp / ENGINE_INDEX).write_text(json.dumps(index, indent=2))
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
