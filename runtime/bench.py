"""`latentrt bench`: per-component latency, per-step latency, end-to-end time and peak memory.

Components are timed on the bundle's own input specs at the requested size (the UNet at the
classifier-free-guidance batch 2B, the VAE decoder at B), each call synchronous (outputs are
back on the host when it returns), alternating two input sets that differ in the latents and
timesteps and share the conditioning (as consecutive steps do), warm-up calls first, then the
median of `repeats`. The
end-to-end run is `Pipeline.generate` with the same components; the runtime's overhead is its
time over the sum of component times (text encoder + steps x UNet + VAE decode). Peak GPU
memory is sampled through NVML (this process's usage, or the device's rise over its idle
level where the process is not visible); on CPU the peak resident set is reported.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from latentrt.errors import BackendError
from latentrt.runtime.bundle import Bundle

CONDITIONING = ("input_ids", "encoder_hidden_states", "text_embeds", "time_ids")
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


class NvmlMemory:
    """Samples GPU memory in a background thread through NVML (ctypes, no extra package).

    `start()`/`stop()` (or `with`) bracket what is measured; `peak` holds across brackets. The
    sampler competes with the measured code for the GIL and the driver, so timings are taken
    with it stopped.
    """

    def __init__(self, device: int = 0, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self.window_peak = 0
        self.baseline = 0
        self.process_level = False
        self._stop = threading.Event()
        self._lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self._lib.nvmlInit_v2() != 0:
            raise BackendError("NVML could not be initialized")
        self._handle = ctypes.c_void_p()
        if self._lib.nvmlDeviceGetHandleByIndex_v2(device, ctypes.byref(self._handle)) != 0:
            raise BackendError(f"NVML has no device {device}")
        self.baseline = self._device_used()
        self.process_level = self._process_used() is not None
        self._thread: threading.Thread | None = None

    def _device_used(self) -> int:
        class Memory(ctypes.Structure):
            _fields_ = [(n, ctypes.c_ulonglong) for n in ("total", "free", "used")]

        m = Memory()
        self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(m))
        return int(m.used)

    def _process_used(self) -> int | None:
        class Proc(ctypes.Structure):
            _fields_ = [
                ("pid", ctypes.c_uint),
                ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint),
                ("computeInstanceId", ctypes.c_uint),
            ]

        count = ctypes.c_uint(64)
        procs = (Proc * 64)()
        fn = getattr(self._lib, "nvmlDeviceGetComputeRunningProcesses_v3", None)
        if fn is None or fn(self._handle, ctypes.byref(count), procs) != 0:
            return None
        for p in procs[: count.value]:
            if p.pid == os.getpid():
                return int(p.usedGpuMemory)
        return None

    def current(self) -> int:
        """Bytes in use now by this process (or the device's rise over its idle level)."""
        if self.process_level:
            used = self._process_used()
            if used is not None:
                return used
        return max(self._device_used() - self.baseline, 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self.current()
            self.peak = max(self.peak, used)
            self.window_peak = max(self.window_peak, used)
            time.sleep(self.interval)

    @property
    def running(self) -> bool:
        """Whether the sampler thread is on (between `start()` and `stop()`)."""
        return self._thread is not None

    def window(self) -> int:
        """The peak since the last `window()` call (or start), including now; starts a new one."""
        peak = max(self.window_peak, self.current())
        self.window_peak = 0
        return peak

    def start(self) -> NvmlMemory:
        """Start sampling (a fresh thread)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling; the reading taken now counts towards `peak`."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.peak = max(self.peak, self.current())

    def __enter__(self) -> NvmlMemory:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def time_calls(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of `repeats` synchronous calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _alternate(component: Callable, feeds: list[dict]) -> Callable[[], object]:
    """A call that feeds `feeds[0]`, `feeds[1]`, `feeds[0]`, ... on successive calls."""
    turn = [0]

    def call():
        turn[0] ^= 1
        return component(**feeds[turn[0]])

    return call


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "min_ms": float(a.min()),
        "runs": len(ms),
    }


def _feeds(spec: dict, dims: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of one component from its manifest spec with symbolic dims resolved."""
    out = {}
    for name, s in spec["inputs"].items():
        shape = tuple(dims[d] if isinstance(d, str) else int(d) for d in s["shape"])
        dtype = _DTYPES[s["dtype"]]
        if np.issubdtype(dtype, np.integer):
            ids = np.zeros(shape, dtype)
            if ids.ndim == 2:
                ids[:, 0], ids[:, -1] = 49406, 49407
            out[name] = ids
        elif name == "timestep":
            out[name] = np.full(shape, 500.0, dtype)
        else:
            out[name] = rng.standard_normal(shape).astype(dtype)
    return out


class _Timed:
    """A component wrapper that adds up the wall time spent inside its calls.

    While `mem` is set, its first call also records GPU memory (MiB) before it, the peak
    during it and what stays after it: where a generation's peak comes from (session
    creation, weights, CUDA-graph capture and the activations each component keeps).
    """

    def __init__(self, component: Callable, mem: NvmlMemory | None = None) -> None:
        self.component = component
        self.seconds = 0.0
        self.calls = 0
        self.mem = mem
        self.first_call_mib: dict[str, float] | None = None

    def __call__(self, **feeds):
        probe = self.mem is not None and self.first_call_mib is None
        if probe:
            self.mem.window()
            before = self.mem.current()
        t0 = time.perf_counter()
        try:
            return self.component(**feeds)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            if probe:
                peak, after = self.mem.window(), self.mem.current()
                self.first_call_mib = {
                    k: v / 2**20 for k, v in (("before", before), ("peak", peak), ("after", after))
                }


def load(bundle: Bundle, backend: str, **options) -> dict[str, Callable]:
    """The backend's components; `options` go to ort-cuda (provider options, shared_arena)."""
    if backend == "ort-cuda":
        from latentrt.runtime import ort_cuda

        return ort_cuda.load_components(bundle, **options)
    if options:
        raise BackendError(f"backend options {sorted(options)} apply to ort-cuda only")
    if backend == "ort-cpu":
        from latentrt.runtime import ort_backend

        return ort_backend.load_components(bundle, "ort-cpu")
    raise BackendError(f"bench supports ort-cuda and ort-cpu, not {backend!r}")


def bench(
    bundle_path: str | Path,
    backend: str = "ort-cuda",
    width: int | None = None,
    height: int | None = None,
    batch: int = 1,
    steps: int = 30,
    repeats: int = 20,
    warmup: int = 3,
    e2e_repeats: int = 3,
    prompt: str = "a photograph of an astronaut riding a horse",
    components: dict[str, Callable] | None = None,
    options: dict | None = None,
) -> dict:
    """Measure a bundle on a backend; returns a JSON-ready dict (see `format_table`).

    Order: load and a first generation with GPU memory sampled (the peak of load + generate,
    comparable to another runtime doing the same generation; the first call also creates the
    sessions and CUDA graphs), then the timed generations and each component alone with the
    sampler stopped, then one more call of every component sampled (components a txt2img
    never runs, such as the VAE encoder, add their sessions there).
    """
    from latentrt.runtime.pipeline import Pipeline

    b = Bundle.open(bundle_path)
    gpu = backend != "ort-cpu"
    mem = NvmlMemory() if gpu else None
    if mem is not None:
        mem.start()
    try:
        comps = components or load(b, backend, **(options or {}))
        after_load = mem.current() / 2**20 if mem is not None else 0.0
        timed = {k: _Timed(c, mem) for k, c in comps.items()}
        pipe = Pipeline(b, timed, backend)
        default = b.manifest.get("default_size", 512 if b.family == "sd1" else 1024)
        width, height = width or default, height or default
        f = pipe.latent["downscale"]
        rng = np.random.default_rng(0)
        result: dict = {
            "backend": backend,
            "bundle": str(b.root),
            "family": b.family,
            "width": width,
            "height": height,
            "batch": batch,
            "steps": steps,
            "host": platform.node(),
            "components": {},
        }
        if gpu:
            result["device"] = _gpu_name()
            result["options"] = dict(options or {})
        stamps: list[float] = []
        e2e = []
        inside: list[dict[str, float]] = []
        for i in range(e2e_repeats + 1):
            if i == 1 and mem is not None:  # load + the first generation sampled; time the rest
                _end_sampling(mem, timed, after_load, result)
            stamps.clear()
            for c in timed.values():
                c.seconds, c.calls = 0.0, 0
            t0 = time.perf_counter()
            pipe.generate(
                prompt,
                width=width,
                height=height,
                steps=steps,
                batch=batch,
                seed=0,
                output="np",
                callback=lambda _i: stamps.append(time.perf_counter()),
            )
            e2e.append(time.perf_counter() - t0)
            inside.append({k: c.seconds for k, c in timed.items() if c.calls})
        e2e, inside = e2e[1:], inside[1:]  # the first generation creates sessions and graphs
        if mem is not None and "peak_gpu_mib" not in result:  # no timed generations
            _end_sampling(mem, timed, after_load, result)
        if gpu:  # as the first calls resolved it (a graph capture can fail and fall back)
            result["cuda_graph"] = {
                k: getattr(c, "info", {}).get("cuda_graph") for k, c in comps.items()
            }
        dims = {"height": height // f, "width": width // f, "sequence": 77}
        plan = []
        for name in b.manifest["components"]:
            if name.startswith("text_encoder"):
                plan.append((name, {"batch": 2 * batch}))
            elif name == "unet":
                plan.append((name, {"batch": 2 * batch}))
            elif name == "vae_decoder":
                plan.append((name, {"batch": batch}))
            elif name == "vae_encoder":
                enc = {"batch": batch, "height": height, "width": width}
                plan.append((name, enc))
        all_feeds = {}
        for name, extra in plan:
            # two input sets that differ where a generation's inputs change between calls
            # (latents, timesteps, images) and share the conditioning, so each call pays
            # its real per-step copies
            feeds = _feeds(b.component(name), {**dims, **extra}, rng)
            other = _feeds(b.component(name), {**dims, **extra}, rng)
            for k in CONDITIONING:  # read-only, as CFGDenoiser passes them: kept resident
                if k in feeds:
                    feeds[k].flags.writeable = False
            other = {k: feeds[k] if k in CONDITIONING else v for k, v in other.items()}
            if "timestep" in other:
                other["timestep"] = other["timestep"] + np.float32(1.0)
            ms = time_calls(_alternate(comps[name], [feeds, other]), repeats, warmup)
            result["components"][name] = _stats(ms)
            all_feeds[name] = feeds
        if mem is not None:
            mem.start()
            for name, feeds in all_feeds.items():
                comps[name](**feeds)
            mem.stop()

        step_ms = np.diff(stamps) * 1e3 if len(stamps) > 1 else np.array([np.nan])
        c = result["components"]
        text = sum(v["median_ms"] for k, v in c.items() if k.startswith("text_encoder"))
        parts = text + steps * c["unet"]["median_ms"] + c["vae_decoder"]["median_ms"]
        result["per_step_ms"] = float(np.median(step_ms))
        result["e2e_s"] = float(np.median(e2e))
        # where a generation's time went: inside each component's calls, and the rest (the
        # numpy runtime: tokenizer, samplers, CFG, pre/post-processing)
        result["e2e_inside_ms"] = {
            k: float(np.median([r[k] for r in inside])) * 1e3 for k in inside[0]
        }
        host = [t - sum(r.values()) for t, r in zip(e2e, inside, strict=True)]
        result["e2e_host_ms"] = float(np.median(host)) * 1e3
        result["sum_components_s"] = parts / 1e3
        result["overhead"] = result["e2e_s"] / result["sum_components_s"]
    finally:
        if mem is not None:
            mem.stop()
    if mem is not None:
        result["peak_gpu_mib_with_components"] = mem.peak / 2**20
        result["memory_scope"] = "process" if mem.process_level else "device rise over idle"
    else:
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _end_sampling(mem: NvmlMemory, timed: dict, after_load: float, result: dict) -> None:
    """Stop sampling after load + the first generation: its peak and the per-component
    breakdown of first calls (`load` is what loading left before any call)."""
    mem.stop()
    result["peak_gpu_mib"] = mem.peak / 2**20
    result["first_call_mib"] = {"load": after_load}
    for name, c in timed.items():
        if c.first_call_mib:
            result["first_call_mib"][name] = c.first_call_mib
        c.mem = None


def _gpu_name() -> str:
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        lib.nvmlInit_v2()
        h = ctypes.c_void_p()
        lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h))
        buf = ctypes.create_string_buffer(96)
        lib.nvmlDeviceGetName(h, buf, 96)
        return buf.value.decode()
    except OSError:
        return "unknown GPU"


def format_table(r: dict) -> str:
    """The bench result as a text table."""
    lines = [
        f"{r['family']} bundle on {r['backend']} ({r.get('device', r['host'])}), "
        f"{r['width']}x{r['height']} batch {r['batch']}, {r['steps']} steps",
        f"{'component':<16} {'median ms':>10} {'p90 ms':>10} {'runs':>5}",
    ]
    for name, s in r["components"].items():
        lines.append(f"{name:<16} {s['median_ms']:>10.2f} {s['p90_ms']:>10.2f} {s['runs']:>5}")
    lines.append(f"{'per step (e2e)':<16} {r['per_step_ms']:>10.2f}")
    lines.append(
        f"end to end {r['e2e_s']:.3f} s; components sum {r['sum_components_s']:.3f} s; "
        f"ratio {r['overhead']:.3f}"
    )
    inside = ", ".join(f"{k} {v:.1f}" for k, v in r["e2e_inside_ms"].items())
    lines.append(f"in the generation (ms): {inside}; runtime host {r['e2e_host_ms']:.1f}")
    if "peak_gpu_mib" in r:
        lines.append(
            f"peak GPU memory {r['peak_gpu_mib']:.0f} MiB for load + generate, "
            f"{r['peak_gpu_mib_with_components']:.0f} MiB with every component timed "
            f"({r['memory_scope']})"
        )
        parts = [f"load {r['first_call_mib']['load']:.0f}"] + [
            f"{k} {v['before']:.0f} -> peak {v['peak']:.0f} -> {v['after']:.0f}"
            for k, v in r["first_call_mib"].items()
            if k != "load"
        ]
        lines.append("GPU MiB over the first calls: " + "; ".join(parts))
    else:
        lines.append(f"peak resident memory {r['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)
