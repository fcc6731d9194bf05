"""ONNX Runtime backend: one session per component, created once, safe to share across threads.

`ort-cpu` runs the bundle's ONNX files, or the graph-optimized copies `latentrt build
--target ort-cpu` saved under `engines/ort-cpu/` when their key matches (so a stale engine is
never loaded).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from latentrt.errors import BackendError, BundleError
from latentrt.runtime.bundle import Bundle

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
ENGINE_INDEX = "index.json"


def engine_key(bundle: Bundle, component: str, target: str, options: dict) -> str:
    """Hash of what an engine depends on: the ONNX file, the build options, library versions."""
    comp = bundle.component(component)
    payload = json.dumps(
        {
            "onnx_sha256": comp.get("sha256"),
            "file": comp["file"],
            "target": target,
            "options": options,
            "onnxruntime": ort.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return so


def cast_feeds(
    name: str, dtypes: dict[str, type], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Check that `feeds` names exactly the graph's inputs; cast each to the input's dtype."""
    unknown = set(feeds) - set(dtypes)
    missing = set(dtypes) - set(feeds)
    if unknown or missing:
        raise BackendError(
            f"{name}: inputs do not match the graph (missing {sorted(missing)}, "
            f"unexpected {sorted(unknown)})"
        )
    return {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in feeds.items()}


class OrtComponent:
    """One component's session with named, dtype-checked inputs and outputs as dicts."""

    def __init__(self, name: str, path: Path, providers: list, threads: int | None = None):
        self.name = name
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options(threads), providers=providers
            )
        except Exception as e:  # ORT raises its own exception types per failure
            raise BackendError(f"cannot load {name} from {path}: {e}") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._dtypes = {i.name: ORT_TYPES[i.type] for i in self.session.get_inputs()}

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        cast = cast_feeds(self.name, self._dtypes, feeds)
        try:
            outs = self.session.run(self.output_names, cast)
        except Exception as e:
            shapes = {k: v.shape for k, v in cast.items()}
            raise BackendError(f"{self.name} failed on inputs {shapes}: {e}") from None
        return dict(zip(self.output_names, outs, strict=True))


def _engine_path(bundle: Bundle, component: str, target: str) -> Path | None:
    """The built engine for `component` if one exists and its key is current."""
    index_path = bundle.root / "engines" / target / ENGINE_INDEX
    if not index_path.is_file():
        return None
    try:
        entry = json.loads(index_path.read_text())["components"][component]
    except (KeyError, json.JSONDecodeError, OSError):
        return None
    if entry.get("key") != engine_key(bundle, component, target, entry.get("options", {})):
        return None
    try:
        return bundle.path(entry["file"], must_exist=True)
    except BundleError:
        return None


def load_components(bundle: Bundle, target: str = "ort-cpu") -> dict[str, OrtComponent]:
    """A session for every component of the bundle on the given ORT target."""
    if target == "ort-cpu":
        providers = ["CPUExecutionProvider"]
    elif target == "ort-cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError(
                "backend ort-cuda needs onnxruntime-gpu with CUDAExecutionProvider; this "
                f"onnxruntime has {ort.get_available_providers()}"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        raise BackendError(f"{target} is not an ONNX Runtime target")
    threads = int(os.environ.get("LATENTRT_THREADS", "0")) or None
    out = {}
    for name in bundle.manifest["components"]:
        path = _engine_path(bundle, name, target) or bundle.component_path(name)
        out[name] = OrtComponent(name, path, providers, threads)
    return out
