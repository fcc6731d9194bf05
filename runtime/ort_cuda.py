"""`ort-cuda` backend: ONNX Runtime's CUDA provider with IOBinding and CUDA graphs.

Each component is a `CudaComponent`, callable like `OrtComponent` (`component(**inputs) ->
dict of numpy outputs`), with what the GPU path adds:

- inputs are uploaded into device buffers bound with IOBinding; an input that is the very
  array of the last call and read-only (what `CFGDenoiser` passes for the text embeddings at
  every step of a generation) is not copied again, so embeddings stay resident on the GPU and
  a step moves only the latents and timesteps in and the model output back;
- the UNet is captured as a CUDA graph per fixed input shape: its session pins the symbolic
  dims (batch, height, width, sequence) so ORT folds every shape computation away, binds
  fixed device buffers, and replays the graph for every later step of that shape;
- every output is checked for NaN/Inf. A component built in fp16 with an fp32 engine beside
  it (the VAE) switches to that engine for good and recomputes; otherwise `NumericsError`
  names the component, its precision and what to do.

`run_device(**ortvalues)` is the device-resident fast path: OrtValues in, OrtValues out.

Before its first session the backend sets `CUBLAS_WORKSPACE_CONFIG` to `CUBLAS_WORKSPACE`
unless the environment already sets it or PyTorch is loaded: cuBLAS's default workspace per
handle, times a handle per session, was 280 MiB of an SD 1.5 generation's peak on an H100.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from latentrt.errors import BackendError, BundleError, InputError, NumericsError
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.ort_backend import ENGINE_INDEX, ORT_TYPES, cast_feeds, engine_key

TARGET = "ort-cuda"
GRAPH_COMPONENTS = ("unet",)  # captured as CUDA graphs (called many times at one shape)
# symbolic dims of the exported graphs, pinned per shape for CUDA-graph sessions
_DIM_NAMES = {
    "sample": {0: "batch", 2: "height", 3: "width"},
    "encoder_hidden_states": {0: "batch", 1: "sequence"},
}


# CUDA provider options every session gets unless the caller overrides them.
DEFAULT_OPTIONS = {
    "arena_extend_strategy": "kSameAsRequested",  # grow by what is asked for (peak memory)
    "cudnn_conv_algo_search": "EXHAUSTIVE",
    "cudnn_conv_use_max_workspace": "1",
    "do_copy_in_default_stream": "1",
    # NHWC convolutions: ORT's layout pass then cancels the transposes around the NHWC-only
    # fused GroupNorms.
    "prefer_nhwc": "1",
}
_SHARED_ARENAS: dict[int, int | None] = {}
# cuBLAS workspace per handle as CUBLAS_WORKSPACE_CONFIG (":KiB:count" pairs): two 4 MiB
# buffers instead of cuBLAS's default, which every session's handle holds. Measured on an
# H100 (BENCHMARKS.md): SD 1.5 load + generate peak 4014 -> 3734 MiB with the UNet step
# unchanged (7.18 ms); SDXL step 34.2 ms with it. None leaves cuBLAS's default.
CUBLAS_WORKSPACE: str | None = ":4096:2"


def _check_cublas_spec(spec: str | None) -> None:
    if spec is not None and not re.fullmatch(r"(:\d+:\d+)+", spec):
        raise InputError(f"cuBLAS workspace {spec!r} is not ':KiB:count' pairs, e.g. ':4096:2'")


def limit_cublas_workspace(spec: str | None) -> str | None:
    """Set CUBLAS_WORKSPACE_CONFIG to `spec` unless the environment sets it already; returns
    the value in effect. The variable is process-wide and read when cuBLAS starts, so this
    precedes the first CUDA session. It is left alone where PyTorch is loaded: PyTorch sizes
    its own workspace from it, and its SDXL UNet step ran 2x slower with this one."""
    _check_cublas_spec(spec)
    if spec is not None and "torch" not in sys.modules:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", spec)
    return os.environ.get("CUBLAS_WORKSPACE_CONFIG")


def provider_options(device_id: int = 0, cuda_graph: bool = False, **extra: str) -> dict:
    """CUDA provider options: `DEFAULT_OPTIONS`, the device, CUDA graphs, then `extra`."""
    opts = {"device_id": str(device_id), **DEFAULT_OPTIONS}
    if cuda_graph:
        opts["enable_cuda_graph"] = "1"
    opts.update({k: str(v) for k, v in extra.items()})
    return opts


def _require_cuda() -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError(
            "backend ort-cuda needs onnxruntime-gpu with CUDAExecutionProvider; this "
            f"onnxruntime ({ort.__version__}) has {ort.get_available_providers()}"
        )


def _register_shared_arena(device_id: int, max_dead_bytes: int | None = None) -> None:
    """One CUDA arena in ORT's environment that the sessions without a CUDA graph allocate
    from, instead of an arena per session (each keeps its own high-water mark).

    `max_dead_bytes` is the most a freed chunk may exceed a request by before the arena
    splits it (ORT's default, 128 MiB, lets a 64 MiB VAE activation sit in a 127 MiB chunk);
    per-session arenas cannot be given this setting from Python."""
    if device_id in _SHARED_ARENAS:
        if _SHARED_ARENAS[device_id] != max_dead_bytes:
            raise BackendError(
                f"the shared arena of device {device_id} is registered with max_dead_bytes "
                f"{_SHARED_ARENAS[device_id]}, not {max_dead_bytes}: one setting per process"
            )
        return
    mem = ort.OrtMemoryInfo(
        "Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, device_id, ort.OrtMemType.DEFAULT
    )
    cfg = {"arena_extend_strategy": 1}  # kSameAsRequested
    if max_dead_bytes is not None:
        cfg["max_dead_bytes_per_chunk"] = max_dead_bytes
    ort.create_and_register_allocator_v2(
        "CUDAExecutionProvider", mem, {"device_id": str(device_id)}, ort.OrtArenaCfg(cfg)
    )
    _SHARED_ARENAS[device_id] = max_dead_bytes


def _session(
    path: Path,
    device_id: int,
    cuda_graph: bool,
    dims: dict[str, int],
    extra: dict,
    shared_arena: bool = False,
    mem_pattern: bool = False,
    arena_max_dead_bytes: int | None = None,
) -> ort.InferenceSession:
    """A session on CUDA. A CUDA-graph session never joins the shared arena: its captured
    addresses must stay its own between replays, and capture cannot grow an arena."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_mem_pattern = mem_pattern
    if shared_arena and not cuda_graph:
        _register_shared_arena(device_id, arena_max_dead_bytes)
        so.add_session_config_entry("session.use_env_allocators", "1")
    for name, value in dims.items():
        so.add_free_dimension_override_by_name(name, int(value))
    providers = [("CUDAExecutionProvider", provider_options(device_id, cuda_graph, **extra))]
    if not cuda_graph:
        providers.append("CPUExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


@dataclass
class _Bound:
    """Device buffers of one input shape (and, for CUDA graphs, its session and outputs)."""

    session: ort.InferenceSession
    binding: ort.IOBinding
    inputs: dict[str, ort.OrtValue] = field(default_factory=dict)
    last: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, ort.OrtValue] = field(default_factory=dict)


class CudaComponent:
    """One component on CUDAExecutionProvider; callable(**inputs) -> dict of numpy outputs."""

    def __init__(
        self,
        name: str,
        path: Path,
        precision: str = "fp32",
        fallback: Path | None = None,
        cuda_graph: bool = False,
        device_id: int = 0,
        check_numerics: bool = True,
        shared_arena: bool = False,
        mem_pattern: bool = False,
        shrink_arena: bool = False,
        arena_max_dead_bytes: int | None = None,
        cublas_workspace: str | None = "default",
        **options: str,
    ) -> None:
        _require_cuda()
        self.arena_max_dead_bytes = arena_max_dead_bytes
        self.cublas_workspace = (
            CUBLAS_WORKSPACE if cublas_workspace == "default" else cublas_workspace
        )
        self._run_options = ort.RunOptions()
        if shrink_arena:  # hand unused arena chunks back after each run (not for CUDA graphs)
            self._run_options.add_run_config_entry(
                "memory.enable_memory_arena_shrinkage", f"gpu:{device_id}"
            )
        self.shrink_arena = shrink_arena
        # a graph component keeps its own arena for its metadata session too: what a dropped
        # session freed would stay in the shared arena
        self.shared_arena = shared_arena and not cuda_graph
        self.mem_pattern = mem_pattern
        self.name = name
        self.path = Path(path)
        self.precision = precision
        self.fallback = Path(fallback) if fallback else None
        self.cuda_graph = cuda_graph
        self.device_id = device_id
        self.check_numerics = check_numerics
        self.options = options
        self.info: dict[str, object] = {"precision": precision, "cuda_graph": cuda_graph}
        self.session: ort.InferenceSession | None = None
        self._bound: dict[tuple, _Bound] = {}
        self._dtypes: dict[str, type] | None = None
        self._cast_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.output_names: list[str] = []
        self._out_specs: list[tuple[list, type]] = []

    def _metadata(self) -> None:
        """Input dtypes and output specs, read from a plain session on the first call.

        Sessions are created on first use, so a component a generation never calls (the VAE
        encoder of a txt2img service) holds no GPU memory. A CUDA-graph component drops the
        plain session afterwards: its per-shape graph sessions hold the weights.
        """
        session = self._plain()
        self.output_names = [o.name for o in session.get_outputs()]
        self._out_specs = [(o.shape, ORT_TYPES[o.type]) for o in session.get_outputs()]
        self._dtypes = {i.name: ORT_TYPES[i.type] for i in session.get_inputs()}
        if self.cuda_graph:
            self.session = None

    def _new_session(self, cuda_graph: bool, dims: dict[str, int]) -> ort.InferenceSession:
        self.info["cublas_workspace"] = limit_cublas_workspace(self.cublas_workspace)
        return _session(
            self.path,
            self.device_id,
            cuda_graph,
            dims,
            self.options,
            self.shared_arena,
            self.mem_pattern,
            self.arena_max_dead_bytes,
        )

    def _plain(self) -> ort.InferenceSession:
        """The session without a CUDA graph (created on first use)."""
        if self.session is None:
            try:
                self.session = self._new_session(False, {})
            except Exception as e:  # ORT raises its own exception types per failure
                raise BackendError(
                    f"cannot load {self.name} from {self.path} on CUDA: {e}"
                ) from None
        return self.session

    # --- binding ------------------------------------------------------------------------------

    def _graph_dims(self, feeds: dict[str, np.ndarray]) -> dict[str, int]:
        dims: dict[str, int] = {}
        for name, axes in _DIM_NAMES.items():
            if name in feeds:
                for axis, sym in axes.items():
                    dims[sym] = feeds[name].shape[axis]
        return dims

    def _bind(self, feeds: dict[str, np.ndarray]) -> _Bound:
        key = tuple((k, v.shape) for k, v in sorted(feeds.items()))
        b = self._bound.get(key)
        if b is not None:
            return b
        session = None
        dims = self._graph_dims(feeds)
        if self.cuda_graph:
            try:
                session = self._new_session(True, dims)
            except Exception as e:  # e.g. a node ORT keeps on CPU: run without a graph
                self.info["cuda_graph"] = False
                self.info["cuda_graph_error"] = str(e).splitlines()[0][:300]
                self.cuda_graph = False
        session = session or self._plain()
        b = _Bound(session, session.io_binding())
        for k, v in feeds.items():
            b.inputs[k] = ort.OrtValue.ortvalue_from_numpy(v, "cuda", self.device_id)
            b.last[k] = v
            b.binding.bind_ortvalue_input(k, b.inputs[k])
        if self.cuda_graph:  # outputs at fixed addresses, shaped from the pinned dims
            for o, (shape, dtype) in zip(self.output_names, self._out_shapes(b, dims), strict=True):
                b.outputs[o] = ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, dtype, "cuda", self.device_id
                )
                b.binding.bind_ortvalue_output(o, b.outputs[o])
        else:
            for o in self.output_names:
                b.binding.bind_output(o, "cuda", self.device_id)
        self._bound[key] = b
        return b

    def _out_shapes(self, b: _Bound, dims: dict[str, int]) -> list[tuple[list[int], type]]:
        """Output shapes and types: declared dims resolved by name, else one plain run."""
        specs = [
            ([d if isinstance(d, int) else dims.get(d) for d in shape], dtype)
            for shape, dtype in self._out_specs
        ]
        if all(all(isinstance(d, int) for d in shape) for shape, _ in specs):
            return specs
        probe = self._plain().io_binding()
        for k, v in b.inputs.items():
            probe.bind_ortvalue_input(k, v)
        for o in self.output_names:
            probe.bind_output(o, "cuda", self.device_id)
        self._plain().run_with_iobinding(probe)
        return [(v.shape(), _np_type(v.data_type())) for v in probe.get_outputs()]

    def _upload(self, b: _Bound, feeds: dict[str, np.ndarray]) -> None:
        for k, v in feeds.items():
            if v is b.last.get(k) and _immutable(v):
                continue  # the same read-only array as last call: still resident (embeddings)
            b.inputs[k].update_inplace(v)
            b.last[k] = v

    # --- calls --------------------------------------------------------------------------------

    def _cast(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs in the graph's dtypes; a read-only input is cast once and the cast reused
        (a read-only cast, so `_upload` keeps it resident too)."""
        if self._dtypes is None:
            self._metadata()
        reused = {}
        for k, v in feeds.items():
            src, done = self._cast_cache.get(k, (None, None))
            reused[k] = done if src is v and _immutable(v) else v
        cast = cast_feeds(self.name, self._dtypes, reused)
        for k, v in feeds.items():
            if cast[k] is not v and cast[k] is not reused[k] and _immutable(v):
                cast[k].flags.writeable = False
                self._cast_cache[k] = (v, cast[k])
        return cast

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        cast = self._cast(feeds)
        try:
            b = self._bind(cast)
            self._upload(b, cast)
            graph = self.cuda_graph and b.session is not self.session
            b.session.run_with_iobinding(b.binding, None if graph else self._run_options)
            outs = [v.numpy() for v in b.binding.get_outputs()]
        except Exception as e:
            shapes = {k: v.shape for k, v in cast.items()}
            raise BackendError(f"{self.name} failed on CUDA with inputs {shapes}: {e}") from None
        result = dict(zip(self.output_names, outs, strict=True))
        if self.check_numerics:
            bad = [k for k, v in result.items() if not np.isfinite(v).all()]
            if bad:
                return self._numerics(bad, feeds)
        return result

    def run_device(self, **feeds: ort.OrtValue) -> dict[str, ort.OrtValue]:
        """Device fast path: OrtValues already on the GPU in, OrtValues on the GPU out."""
        if self._dtypes is None:
            self._metadata()
        session = self._plain()
        binding = session.io_binding()
        for k, v in feeds.items():
            binding.bind_ortvalue_input(k, v)
        for o in self.output_names:
            binding.bind_output(o, "cuda", self.device_id)
        session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.get_outputs(), strict=True))

    def _numerics(self, bad: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.precision == "fp16" and self.fallback is not None:
            self.info["fallback"] = "fp32 after NaN/Inf in fp16"
            self.path, self.session, self._bound = self.fallback, None, {}
            self.precision, self.fallback, self.cuda_graph = "fp32", None, False
            self._metadata()
            self.info["precision"] = "fp32"
            return self(**feeds)
        hint = (
            f"rebuild it in fp32: build_engines(bundle, 'ort-cuda', precision={{'{self.name}': 'fp32'}})"
            if self.precision == "fp16"
            else "the inputs or weights are out of range"
        )
        raise NumericsError(
            f"{self.name} ({self.precision}) returned NaN/Inf in {', '.join(bad)} for inputs "
            f"{ {k: np.shape(v) for k, v in feeds.items()} }; {hint}"
        )


def _immutable(a: np.ndarray) -> bool:
    """Whether `a` cannot change behind our back: read-only and owning its data (a read-only
    view could still change through a writable base)."""
    return not a.flags.writeable and a.flags.owndata


def _np_type(ort_type: str) -> type:
    return ORT_TYPES[ort_type]


def _index(bundle: Bundle) -> dict:
    path = bundle.root / "engines" / TARGET / ENGINE_INDEX
    try:
        return json.loads(path.read_text())["components"]
    except (OSError, KeyError, json.JSONDecodeError):
        return {}


def _engine(bundle: Bundle, name: str, entry: dict | None, file_key: str = "file") -> Path | None:
    if not entry or entry.get("key") != engine_key(bundle, name, TARGET, entry.get("options", {})):
        return None
    try:
        return bundle.path(entry[file_key], must_exist=True)
    except (BundleError, KeyError):
        return None


def load_components(
    bundle: Bundle | str | Path,
    cuda_graph: bool = True,
    device_id: int = 0,
    shared_arena: bool = False,
    mem_pattern: bool = False,
    shrink_arena: bool = False,
    arena_max_dead_mib: float | None = None,
    cublas_workspace: str | None = "default",
    **options: str,
) -> dict[str, CudaComponent]:
    """A CudaComponent per bundle component: built ort-cuda engines where current, else the
    bundle's ONNX files (fp32 or as exported). The UNet is CUDA-graph captured per shape.

    `options` override `DEFAULT_OPTIONS` (CUDA provider options, e.g. prefer_nhwc="0");
    `shared_arena` makes the sessions without a CUDA graph (text encoders, VAE) allocate from
    one arena registered in ORT's environment, `arena_max_dead_mib` its chunk-split threshold;
    `mem_pattern=True` turns on ORT's pre-planned activation block per shape (off by default:
    measured 537 MiB lower peak on SD 1.5 without it, BENCHMARKS.md); `shrink_arena` hands
    unused arena chunks back to the device after each run of a session without a CUDA graph;
    `cublas_workspace` is the CUBLAS_WORKSPACE_CONFIG set unless the environment has one
    ("default": `CUBLAS_WORKSPACE`; None: cuBLAS's own). Sessions are created on each
    component's first call."""
    if arena_max_dead_mib is not None and not shared_arena:
        raise InputError("arena_max_dead_mib configures the shared arena: pass shared_arena too")
    dead = None if arena_max_dead_mib is None else int(float(arena_max_dead_mib) * 2**20)
    if cublas_workspace != "default":
        _check_cublas_spec(cublas_workspace)
    _require_cuda()
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    index = _index(b)
    out = {}
    for name in b.manifest["components"]:
        entry = index.get(name)
        path = _engine(b, name, entry)
        precision = entry["options"].get("precision", "fp32") if path else "as exported"
        fallback = _engine(b, name, entry, "fallback") if path else None
        out[name] = CudaComponent(
            name,
            path or b.component_path(name),
            precision=precision,
            fallback=fallback,
            cuda_graph=cuda_graph and name in GRAPH_COMPONENTS,
            device_id=device_id,
            shared_arena=shared_arena,
            mem_pattern=mem_pattern,
            shrink_arena=shrink_arena,
            arena_max_dead_bytes=dead,
            cublas_workspace=cublas_workspace,
            **options,
        )
    return out
