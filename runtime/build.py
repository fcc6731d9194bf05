"""`latentrt build`: per-target engines under `bundle/engines/<target>/`, keyed by content hash.

For ONNX Runtime targets the engine is the graph ORT has optimized for that provider, saved
so that sessions start without re-optimizing. A key over the ONNX file's hash, the build
options and the library versions decides whether an engine is current.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from latentrt.errors import BackendError
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.ort_backend import ENGINE_INDEX, engine_key

ORT_TARGETS = {"ort-cpu": ["CPUExecutionProvider"], "ort-cuda": ["CUDAExecutionProvider"]}


def build_engines(
    bundle_path: str | Path, target: str, progress: Callable[[str], None] | None = None
) -> Path:
    """Build (or reuse) the engines of every component for `target`; returns their folder."""
    bundle = Bundle.open(bundle_path)
    say = progress or (lambda _m: None)
    if target == "tensorrt":
        raise NotImplementedError(
            "TensorRT engine builds are not implemented yet (TensorRT cannot be installed on "
            "the project's machines); build for ort-cpu or ort-cuda"
        )
    if target not in ORT_TARGETS:
        raise BackendError(f"unknown target {target!r}; choose ort-cpu, ort-cuda or tensorrt")
    if target == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError("target ort-cuda needs onnxruntime-gpu with CUDAExecutionProvider")
    dest = bundle.root / "engines" / target
    options = {"graph_optimization_level": "extended"}
    index = _read_index(dest)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=bundle.root))
    try:
        entries = {}
        for name in bundle.manifest["components"]:
            key = engine_key(bundle, name, target, options)
            old = index.get(name)
            if old and old.get("key") == key and (bundle.root / old["file"]).is_file():
                say(f"{name}: up to date")
                entries[name] = old
                shutil.copyfile(bundle.root / old["file"], tmp / Path(old["file"]).name)
                continue
            say(f"{name}: optimizing for {target}")
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = str(tmp / f"{name}.{key}.onnx")
            so.log_severity_level = 3
            source = bundle.component_path(name)
            if source.with_name(source.name + ".data").is_file():  # over 2 GB: keep it external
                so.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    f"{name}.{key}.onnx.data",
                )
            try:
                ort.InferenceSession(str(source), so, providers=ORT_TARGETS[target])
            except Exception as e:
                raise BackendError(f"building {name} for {target} failed: {e}") from None
            entries[name] = {
                "file": f"engines/{target}/{name}.{key}.onnx",
                "key": key,
                "options": options,
            }
        (tmp / ENGINE_INDEX).write_text(json.dumps({"components": entries}, indent=2))
        if dest.exists():
            old_dir = dest.with_name(f".{target}.old-{os.getpid()}")
            os.rename(dest, old_dir)
            os.rename(tmp, dest)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            dest.parent.mkdir(exist_ok=True)
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _read_index(dest: Path) -> dict:
    try:
        return json.loads((dest / ENGINE_INDEX).read_text())["components"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {}
