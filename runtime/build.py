"""`latentrt build`: per-target engines under `bundle/engines/<target>/`, keyed by content hash.

For ONNX Runtime targets the engine is the bundle's graph after the target's graphs/ recipe
(`latentrt.graphs.recipes`; needs the `onnx` package at build time only): for `ort-cpu` the
recipe's result is then optimized by ORT and saved so that sessions start without
re-optimizing; for `ort-cuda` the recipe (fused GroupNorm / attention / bias ops, fp16 per
component) is saved as is, and fp16 text encoders and VAEs get an fp32 engine beside them that the
runtime falls back to on NaN/Inf. Building for `ort-cuda` needs no GPU. A key over the ONNX
file's hash, the build options and the library versions decides whether an engine is current.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from latentrt.errors import BackendError
from latentrt.runtime.atomic import replace_dir
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.ort_backend import ENGINE_INDEX, engine_key

ORT_TARGETS = {"ort-cpu": ["CPUExecutionProvider"], "ort-cuda": ["CUDAExecutionProvider"]}


def build_engines(
    bundle_path: str | Path,
    target: str,
    progress: Callable[[str], None] | None = None,
    precision: dict[str, str] | None = None,
) -> Path:
    """Build (or reuse) the engines of every component for `target`; returns their folder.

    `precision` overrides the recipe's per-component precision on ort-cuda, e.g.
    {"vae_decoder": "fp32"}.
    """
    bundle = Bundle.open(bundle_path)
    say = progress or (lambda _m: None)
    if target == "tensorrt":
        raise NotImplementedError(
            "TensorRT engine builds are not implemented yet (TensorRT cannot be installed on "
            "the project's machines); build for ort-cpu or ort-cuda"
        )
    if target not in ORT_TARGETS:
        raise BackendError(f"unknown target {target!r}; choose ort-cpu, ort-cuda or tensorrt")
    recipes = _recipes()
    dest = bundle.root / "engines" / target
    index = _read_index(dest)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=bundle.root))
    try:
        entries = {}
        for name in bundle.manifest["components"]:
            prec = (precision or {}).get(name) or recipes.component_precision(target, name)
            options = {"recipe": recipes.RECIPE_VERSION, "precision": prec}
            if target == "ort-cpu":
                options["graph_optimization_level"] = "extended"
            key = engine_key(bundle, name, target, options)
            old = index.get(name)
            if old and old.get("key") == key and (bundle.root / old["file"]).is_file():
                say(f"{name}: up to date")
                entries[name] = old
                for k in ("file", "fallback"):
                    if k in old:
                        _copy_engine(bundle.root / old[k], tmp)
                continue
            say(f"{name}: {target} recipe ({prec})")
            source = bundle.component_path(name)
            entry = {"file": f"engines/{target}/{name}.{key}.onnx", "key": key, "options": options}
            if target == "ort-cuda":
                _recipe_engine(source, tmp / f"{name}.{key}.onnx", target, name, prec, say)
                if prec == "fp16" and name.startswith(recipes.FALLBACK_COMPONENTS):
                    _recipe_engine(
                        source, tmp / f"{name}.{key}.fp32.onnx", target, name, "fp32", say
                    )
                    entry["fallback"] = f"engines/{target}/{name}.{key}.fp32.onnx"
                entries[name] = entry
                continue
            staged = tmp / f"{name}.{key}.recipe.onnx"
            _recipe_engine(source, staged, target, name, prec, say)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = str(tmp / f"{name}.{key}.onnx")
            so.log_severity_level = 3
            if staged.with_name(staged.name + ".data").is_file():  # over 2 GB: keep it external
                so.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    f"{name}.{key}.onnx.data",
                )
            try:
                ort.InferenceSession(str(staged), so, providers=ORT_TARGETS[target])
            except Exception as e:
                raise BackendError(f"building {name} for {target} failed: {e}") from None
            for p in (staged, staged.with_name(staged.name + ".data")):
                p.unlink(missing_ok=True)
            entries[name] = entry
        (tmp / ENGINE_INDEX).write_text(json.dumps({"components": entries}, indent=2))
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _recipes():
    try:
        from latentrt.graphs import recipes
    except ImportError as e:  # the graphs passes need the onnx package
        raise BackendError(f"building engines needs the onnx package ({e})") from None
    return recipes


def _copy_engine(path: Path, dest: Path) -> None:
    """Copy an engine (and its external data) into the staging folder."""
    for p in (path, path.with_name(path.name + ".data")):
        if p.is_file():
            shutil.copyfile(p, dest / p.name)


def _recipe_engine(
    source: Path, out: Path, target: str, name: str, precision: str, say: Callable[[str], None]
) -> None:
    """Run `target`'s recipe on `source` and save it to `out` (external data over 2 GB)."""
    import onnx

    from latentrt.graphs._graph import check_model
    from latentrt.graphs.recipes import optimize

    model = onnx.load(str(source), load_external_data=True)
    model = optimize(model, target, component=name, precision=precision, log=say)
    check_model(model)
    large = sum(t.ByteSize() for t in model.graph.initializer) > 2**31 - 2**26
    if large:
        onnx.save_model(
            model,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=out.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(out))


def _read_index(dest: Path) -> dict:
    try:
        return json.loads((dest / ENGINE_INDEX).read_text())["components"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {}
