"""TensorRT backend: the plans `latentrt build --target tensorrt` wrote, one context each.

`load_components(bundle)` gives the same interface as the ONNX Runtime backend:
`components[name](**inputs) -> dict of numpy outputs`. Inputs go to device buffers (CuPy) on
the component's own stream, their shapes are set per call (checked against the plan's
optimization profile first), and the outputs come back as numpy arrays. A plan whose key no
longer matches its ONNX file, build options, TensorRT version or GPU is refused, never run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from latentrt.errors import BackendError, BundleError, InputError
from latentrt.plugins.tensorrt_plugins import import_tensorrt, register_plugins
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.tensorrt_build import (
    TARGET,
    device_signature,
    engine_key,
    read_index,
)

ProfileRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError:
        raise BackendError(
            "the TensorRT backend needs CuPy for device buffers (pip install cupy-cuda12x or "
            "cupy-cuda13x)"
        ) from None
    return cupy


def engine_files(bundle: Bundle, tensorrt_version: str, device: dict) -> tuple[dict, dict]:
    """(index, component -> plan path) when every plan is built and current, else BackendError."""
    dest = bundle.root / "engines" / TARGET
    rebuild = f"run `latentrt build {bundle.root} --target tensorrt`"
    index = read_index(dest)
    entries = index.get("components")
    if not isinstance(entries, dict):
        raise BackendError(f"{bundle.root}: no TensorRT engines; {rebuild}")
    plans = {}
    for name in bundle.manifest["components"]:
        entry = entries.get(name)
        if not isinstance(entry, dict) or "file" not in entry:
            raise BackendError(f"{bundle.root}: no TensorRT engine for {name}; {rebuild}")
        key = engine_key(
            bundle, name, entry.get("options", {}), tensorrt_version=tensorrt_version, device=device
        )
        if entry.get("key") != key:
            if entry.get("tensorrt") != tensorrt_version:
                why = f"it was built with TensorRT {entry.get('tensorrt')}, this is {tensorrt_version}"
            elif entry.get("device") != device:
                why = f"it was built for {entry.get('device')}, this GPU is {device}"
            else:
                why = "the ONNX file or the build options changed since"
            raise BackendError(
                f"{bundle.root}: the TensorRT engine for {name} is stale ({why}); {rebuild}"
            )
        try:
            plans[name] = bundle.path(entry["file"], must_exist=True)
        except BundleError as e:
            raise BackendError(f"{e}; {rebuild}") from None
    return index, plans


def check_profile_shapes(
    component: str, shapes: Mapping[str, tuple[int, ...]], profile: Mapping[str, ProfileRange]
) -> None:
    """InputError when an input's shape lies outside the plan's optimization profile."""
    for name, shape in shapes.items():
        lo, _, hi = profile[name]
        fits = len(shape) == len(lo) and all(
            a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)
        )
        if not fits:
            raise InputError(
                f"{component}: input {name} has shape {tuple(shape)}, outside the TensorRT "
                f"engine's profile {tuple(lo)}..{tuple(hi)} (fewer prompt windows, a smaller "
                "batch or size, or another backend)"
            )


def _numpy_dtype(trt: Any, engine_name: str, tensor: str, dtype: Any) -> np.dtype:
    """The numpy dtype of an engine's I/O tensor; bfloat16 (numpy has none) is refused by name."""
    if dtype == trt.DataType.BF16:
        raise BackendError(
            f"{engine_name}: tensor {tensor!r} is bfloat16, which numpy cannot hold; build the "
            "engine with fp32 inputs and outputs (latentrt build does for bf16 engines)"
        )
    return np.dtype(trt.nptype(dtype))


class TrtComponent:
    """One component's TensorRT engine and execution context, called with named numpy inputs."""

    def __init__(self, name: str, engine: Any, runtime: Any, trt: Any, cupy: Any) -> None:
        self.name = name
        self.engine = engine
        self._runtime = runtime  # the runtime must outlive its engines
        self._trt = trt
        self._cupy = cupy
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{name}: TensorRT could not create an execution context")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: _numpy_dtype(trt, name, n, engine.get_tensor_dtype(n)) for n in names}
        self.profile = {
            n: tuple(tuple(int(v) for v in s) for s in engine.get_tensor_profile_shape(n, 0))
            for n in self.input_names
        }
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._lock = threading.Lock()

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """Run the engine on named host arrays (cast to the engine's dtypes); numpy outputs."""
        unknown = set(feeds) - set(self.input_names)
        missing = set(self.input_names) - set(feeds)
        if unknown or missing:
            raise BackendError(
                f"{self.name}: inputs do not match the engine (missing {sorted(missing)}, "
                f"unexpected {sorted(unknown)})"
            )
        host = {k: np.ascontiguousarray(v, dtype=self._dtypes[k]) for k, v in feeds.items()}
        check_profile_shapes(self.name, {k: v.shape for k, v in host.items()}, self.profile)
        cupy, ctx = self._cupy, self.context
        with self._lock, self.stream:
            device = {k: cupy.asarray(v) for k, v in host.items()}
            for k, arr in device.items():
                if not ctx.set_input_shape(k, arr.shape):
                    raise BackendError(f"{self.name}: TensorRT rejected shape {arr.shape} for {k}")
                ctx.set_tensor_address(k, arr.data.ptr)
            outputs = {}
            for n in self.output_names:
                shape = tuple(int(s) for s in ctx.get_tensor_shape(n))
                if any(s < 0 for s in shape):
                    raise BackendError(f"{self.name}: output {n} has unresolved shape {shape}")
                outputs[n] = cupy.empty(shape, dtype=self._dtypes[n])
                ctx.set_tensor_address(n, outputs[n].data.ptr)
            if not ctx.execute_async_v3(self.stream.ptr):
                shapes = {k: v.shape for k, v in host.items()}
                raise BackendError(f"{self.name}: TensorRT execution failed on inputs {shapes}")
            result = {n: cupy.asnumpy(a, stream=self.stream) for n, a in outputs.items()}
            self.stream.synchronize()
        return result

    def refit(self, onnx_path: str | Path) -> None:
        """Replace the engine's weights with those of an ONNX file of the same graph (LoRA)."""
        trt = self._trt
        logger = trt.Logger(trt.Logger.WARNING)
        with self._lock:
            self.stream.synchronize()
            refitter = trt.Refitter(self.engine, logger)
            parser = trt.OnnxParserRefitter(refitter, logger)
            if not parser.refit_from_file(str(onnx_path)):
                errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise BackendError(f"{self.name}: refit from {onnx_path} failed: {errors}")
            if not refitter.refit_cuda_engine():
                raise BackendError(f"{self.name}: TensorRT could not refit the engine")


def load_components(bundle: Bundle) -> dict[str, TrtComponent]:
    """An execution context for every component's current plan (see engine_files)."""
    trt = import_tensorrt()
    cupy = _import_cupy()
    index, plans = engine_files(bundle, trt.__version__, device_signature())
    if index.get("plugin_library"):
        try:
            register_plugins(bundle.path(index["plugin_library"], must_exist=True))
        except BundleError as e:
            raise BackendError(f"{e}; rebuild the TensorRT engines") from None
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    out = {}
    for name, path in plans.items():
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT could not deserialize {path}; rebuild the engines")
        out[name] = TrtComponent(name, engine, runtime, trt, cupy)
    return out
