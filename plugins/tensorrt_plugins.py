"""TensorRT registration of the `latentrt` plugins (GroupNormSiLU, Conv3d) as Python IPluginV3s.

The ONNX parser imports a node it has no importer for through the plugin registry, looking the
creator up by the node's op type, `plugin_version` "1" and namespace "" and handing it the
node's attributes as plugin fields. The plugins' `enqueue` calls the C launchers of the
nvcc-built plugin library (`plugins/cuda/*.cu`, `harness.build_shared_library`) through ctypes.

Everything TensorRT-independent lives at module level so that it is testable without
TensorRT: the attribute (de)serialization, the output-shape arithmetic (written once over an
abstract dimension algebra: ints on the CPU, IDimensionExpr inside TensorRT), the supported
format combinations, the workspace size and the launches. TensorRT itself is imported lazily.

Formats: both plugins take TensorRT's LINEAR (NCHW / NCDHW). For fp16 and bf16 with channels in
eights they also take the channel-vectorized formats, HWC8 at rank 4 and DHWC8 at rank 5, which then
hold exactly NHWC / NDHWC: the layout the C launchers' channels-last kernels read. GroupNormSiLU
takes them for x and y (gamma and beta stay LINEAR), so TensorRT needs no reformat around it between
convolutions that run channels-last. Conv3d takes DHWC8 where its input and output channel counts
are multiples of 8 (on Hopper, the TMA-fed kernel where Cin is a multiple of 64 and strides and
dilations are 1, else the cp.async wgmma kernel).

Tactics: GroupNormSiLU's default tactic (0) is the launchers' planner; it also advertises every
other tile and cluster size its kernels run (`groupnorm_tactics`), so TensorRT times them at each
profile's optimum shape and keeps the fastest, on whatever GPU builds the engine (the planner's
rules were tuned on an H100).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from latentrt.errors import BackendError, InputError
from latentrt.plugins.harness import MAX_TILE_GROUPS
from latentrt.plugins.reference import resolve_conv3d_pads

__all__ = [
    "CONV3D",
    "GROUPNORM_SILU",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "Conv3dAttrs",
    "GroupNormSiLUAttrs",
    "IntDimOps",
    "PluginLibrary",
    "build_plugin_library",
    "conv3d_channels_last_positions",
    "conv3d_output_dims",
    "conv3d_workspace_bytes",
    "format_supported",
    "groupnorm_channels_last_positions",
    "groupnorm_tactic_plan",
    "groupnorm_tactics",
    "import_tensorrt",
    "layout_of",
    "register_plugins",
    "run_conv3d",
    "run_groupnorm_silu",
    "sources_digest",
]

GROUPNORM_SILU = "GroupNormSiLU"
CONV3D = "Conv3d"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""  # the ONNX parser's default for nodes without a plugin_namespace attribute
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
_SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_LAYOUT_CHANNELS_FIRST = 0  # TensorFormat.LINEAR: NCHW / NCDHW
_LAYOUT_CHANNELS_LAST = 1  # TensorFormat.HWC8 / DHWC8 with channels % 8 == 0: NHWC / NDHWC
# The channel-vectorized format whose vector axis is the channel axis of an (N, C, ...) tensor of
# that rank: TensorRT vectorizes axis -3 in HWC8 and axis -4 in DHWC8.
_CHANNELS_LAST_FORMAT = {4: "HWC8", 5: "DHWC8"}
_WORKSPACE_ALIGN = 256
CUDA_DIR = Path(__file__).resolve().parent / "cuda"


def import_tensorrt() -> Any:
    """`import tensorrt`, or a BackendError that says what is missing."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # the bindings without libnvinfer fail with OSError
        raise BackendError(
            f"TensorRT is not available ({e}); install TensorRT 10 (pip install tensorrt) on a "
            "machine with an NVIDIA GPU, or use the ort-cpu / ort-cuda backends"
        ) from None
    return tensorrt


# --- attributes <-> plugin fields ---------------------------------------------------------------


def _fields_dict(fields: Iterable[tuple[str, Any]]) -> dict[str, np.ndarray]:
    return {str(name): np.asarray(data).reshape(-1) for name, data in fields}


def _scalar(fields: dict[str, np.ndarray], name: str, default: Any, op: str) -> Any:
    if name not in fields:
        if default is None:
            raise InputError(f"{op}: required attribute {name!r} is missing")
        return default
    value = fields[name]
    if value.size != 1:
        raise InputError(f"{op}: attribute {name!r} must be one value, got {value.tolist()}")
    return value[0].item()


def _ints(fields: dict[str, np.ndarray], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if name not in fields:
        return default
    return tuple(int(v) for v in fields[name])


@dataclass(frozen=True)
class GroupNormSiLUAttrs:
    """Attributes of `latentrt::GroupNormSiLU` (semantics: reference.groupnorm_silu_ref)."""

    num_groups: int
    epsilon: float = 1e-5
    activation: int = 1

    FIELDS: ClassVar[tuple[tuple[str, type], ...]] = (
        ("num_groups", np.int32),
        ("epsilon", np.float32),
        ("activation", np.int32),
    )

    def __post_init__(self) -> None:
        if int(self.num_groups) <= 0:
            raise InputError(f"GroupNormSiLU: num_groups must be positive, got {self.num_groups}")
        if int(self.activation) not in (0, 1):
            raise InputError(f"GroupNormSiLU: activation must be 0 or 1, got {self.activation}")
        eps = float(np.float32(self.epsilon))  # the kernel takes a float; keep what it sees
        if not eps > 0.0:
            raise InputError(f"GroupNormSiLU: epsilon must be positive, got {self.epsilon}")
        object.__setattr__(self, "num_groups", int(self.num_groups))
        object.__setattr__(self, "activation", int(self.activation))
        object.__setattr__(self, "epsilon", eps)

    def to_fields(self) -> list[tuple[str, np.ndarray]]:
        """(name, 1-D array) per attribute, in the field types the creator declares."""
        return [
            ("num_groups", np.array([self.num_groups], np.int32)),
            ("epsilon", np.array([self.epsilon], np.float32)),
            ("activation", np.array([self.activation], np.int32)),
        ]

    @classmethod
    def from_fields(cls, fields: Iterable[tuple[str, Any]]) -> GroupNormSiLUAttrs:
        """Parse plugin fields (from the ONNX parser or a serialized engine); defaults as ONNX."""
        f = _fields_dict(fields)
        return cls(
            num_groups=int(_scalar(f, "num_groups", None, GROUPNORM_SILU)),
            epsilon=float(_scalar(f, "epsilon", 1e-5, GROUPNORM_SILU)),
            activation=int(_scalar(f, "activation", 1, GROUPNORM_SILU)),
        )

    def timing_id(self) -> str:
        """Timing-cache suffix: instances with other attributes are timed separately."""
        return f"g{self.num_groups}_e{self.epsilon!r}_a{self.activation}"


@dataclass(frozen=True)
class Conv3dAttrs:
    """Attributes of `latentrt::Conv3d` (ONNX pad order d0 h0 w0 d1 h1 w1; reference.conv3d_ref)."""

    pads: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    strides: tuple[int, ...] = (1, 1, 1)
    dilations: tuple[int, ...] = (1, 1, 1)
    causal_time: int = 0

    FIELDS: ClassVar[tuple[tuple[str, type], ...]] = (
        ("pads", np.int32),
        ("strides", np.int32),
        ("dilations", np.int32),
        ("causal_time", np.int32),
    )

    def __post_init__(self) -> None:
        pads = tuple(int(v) for v in self.pads)
        strides = tuple(int(v) for v in self.strides)
        dilations = tuple(int(v) for v in self.dilations)
        if len(pads) != 6 or min(pads) < 0:
            raise InputError(f"Conv3d: pads must be 6 non-negative ints, got {list(pads)}")
        if len(strides) != 3 or min(strides) <= 0:
            raise InputError(f"Conv3d: strides must be 3 positive ints, got {list(strides)}")
        if len(dilations) != 3 or min(dilations) <= 0:
            raise InputError(f"Conv3d: dilations must be 3 positive ints, got {list(dilations)}")
        if int(self.causal_time) not in (0, 1, 2):
            raise InputError(f"Conv3d: causal_time must be 0, 1 or 2, got {self.causal_time}")
        object.__setattr__(self, "pads", pads)
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "dilations", dilations)
        object.__setattr__(self, "causal_time", int(self.causal_time))

    def to_fields(self) -> list[tuple[str, np.ndarray]]:
        """(name, 1-D int32 array) per attribute."""
        return [
            ("pads", np.array(self.pads, np.int32)),
            ("strides", np.array(self.strides, np.int32)),
            ("dilations", np.array(self.dilations, np.int32)),
            ("causal_time", np.array([self.causal_time], np.int32)),
        ]

    @classmethod
    def from_fields(cls, fields: Iterable[tuple[str, Any]]) -> Conv3dAttrs:
        """Parse plugin fields; absent attributes take the ONNX defaults."""
        f = _fields_dict(fields)
        return cls(
            pads=_ints(f, "pads", (0, 0, 0, 0, 0, 0)),
            strides=_ints(f, "strides", (1, 1, 1)),
            dilations=_ints(f, "dilations", (1, 1, 1)),
            causal_time=int(_scalar(f, "causal_time", 0, CONV3D)),
        )

    def timing_id(self) -> str:
        """Timing-cache suffix over all attributes."""
        p, s, d = (",".join(map(str, v)) for v in (self.pads, self.strides, self.dilations))
        return f"p{p}_s{s}_d{d}_c{self.causal_time}"


# --- shapes, formats, workspace -----------------------------------------------------------------


class IntDimOps:
    """The dimension algebra over plain ints (what TensorRT's IExprBuilder does symbolically)."""

    def const(self, v: int) -> int:
        """A constant dimension."""
        return int(v)

    def add(self, a: int, b: int) -> int:
        """a + b."""
        return a + b

    def sub(self, a: int, b: int) -> int:
        """a - b."""
        return a - b

    def mul(self, a: int, b: int) -> int:
        """a * b."""
        return a * b

    def floordiv(self, a: int, b: int) -> int:
        """a // b (TensorRT's FLOOR_DIV)."""
        return a // b


class _ExprDimOps:
    """The same algebra on IDimensionExpr through TensorRT's IExprBuilder."""

    def __init__(self, builder: Any, trt: Any) -> None:
        self.b = builder
        self.op = trt.DimensionOperation

    def const(self, v: int) -> Any:
        return self.b.constant(int(v))

    def add(self, a: Any, b: Any) -> Any:
        return self.b.operation(self.op.SUM, a, b)

    def sub(self, a: Any, b: Any) -> Any:
        return self.b.operation(self.op.SUB, a, b)

    def mul(self, a: Any, b: Any) -> Any:
        return self.b.operation(self.op.PROD, a, b)

    def floordiv(self, a: Any, b: Any) -> Any:
        return self.b.operation(self.op.FLOOR_DIV, a, b)


def conv3d_output_dims(
    spatial: Sequence[Any], kernel: Sequence[Any], attrs: Conv3dAttrs, ops: Any
) -> list[Any]:
    """Output (D, H, W) from input (D, H, W) and kernel (kT, kH, kW) in the algebra `ops`.

    out = (in + pad_front + pad_back - dilation (k - 1) - 1) // stride + 1, where causal_time
    makes the temporal pads (dilation_t (kT - 1), 0) whatever the pads attribute says.
    """
    out = []
    for i in range(3):
        reach = ops.mul(ops.const(attrs.dilations[i]), ops.sub(kernel[i], ops.const(1)))
        if i == 0 and attrs.causal_time:
            pad = reach
        else:
            pad = ops.const(attrs.pads[i] + attrs.pads[i + 3])
        span = ops.sub(ops.sub(ops.add(spatial[i], pad), reach), ops.const(1))
        out.append(ops.add(ops.floordiv(span, ops.const(attrs.strides[i])), ops.const(1)))
    return out


def layout_of(format_name: str, rank: int) -> str:
    """The layout of a tensor in the TensorRT format named `format_name` (TensorFormat's member):
    "linear", "channels_last" (HWC8 at rank 4, DHWC8 at rank 5) or "other"."""
    if format_name == "LINEAR":
        return "linear"
    return "channels_last" if _CHANNELS_LAST_FORMAT.get(rank) == format_name else "other"


def format_supported(
    pos: int,
    dtypes: Sequence[str | None],
    formats: Sequence[str],
    num_inputs: int,
    channels_last: Iterable[int] = (),
) -> bool:
    """supportsFormatCombination: fp32/fp16/bf16 everywhere, all of x's type; "linear", or
    "channels_last" for 16-bit types at the positions `channels_last` lists; the output in x's
    format.

    `dtypes`/`formats` describe inputs then outputs; TensorRT asks position by position with
    the earlier positions already fixed, so comparing with position 0 is enough.
    """
    if not 0 <= pos < len(dtypes) or dtypes[pos] not in SUPPORTED_DTYPES:
        return False
    if pos and dtypes[pos] != dtypes[0]:
        return False
    fmt = formats[pos]
    if fmt == "channels_last":
        if pos not in set(channels_last) or dtypes[pos] == "float32":
            return False
    elif fmt != "linear":
        return False
    return pos != num_inputs or fmt == formats[0]


def groupnorm_channels_last_positions(x_shape: Sequence[int], num_inputs: int) -> tuple[int, ...]:
    """Positions (x, y) where GroupNormSiLU takes channels-last: a 4-D or 5-D x whose channel
    count is a known multiple of 8 (so HWC8 / DHWC8 hold it unpadded)."""
    c = int(x_shape[1]) if len(x_shape) > 1 else -1
    if len(x_shape) in _CHANNELS_LAST_FORMAT and c > 0 and c % 8 == 0:
        return (0, num_inputs)
    return ()


def conv3d_channels_last_positions(w_shape: Sequence[int], num_inputs: int) -> tuple[int, ...]:
    """Positions (x, y) where Conv3d takes channels-last: Cin and Cout known multiples of 8."""
    cout, cin = int(w_shape[0]), int(w_shape[1])
    if cout > 0 and cin > 0 and cout % 8 == 0 and cin % 8 == 0:
        return (0, num_inputs)
    return ()


def conv3d_workspace_bytes(w_shape: Sequence[int], dtype: str, streamk_bytes: int = 0) -> int:
    """Bytes for the repacked (Cout, kT, kH, kW, Cin) weights, rounded to 256-byte alignment,
    then `streamk_bytes` for the Hopper kernel's stream-K hand-over
    (PluginLibrary.streamk_workspace_bytes; 0 runs it one CTA per tile)."""
    n = math.prod(int(s) for s in w_shape) * _ITEMSIZE[dtype]
    return -(-n // _WORKSPACE_ALIGN) * _WORKSPACE_ALIGN + max(streamk_bytes, 0)


# --- the plugin library (C launchers through ctypes) --------------------------------------------


def sources_digest() -> str:
    """sha256 of the kernel sources the plugin library is built from."""
    h = hashlib.sha256()
    for name in ("common.cuh", "groupnorm_silu.cu", "conv3d.cu"):
        h.update(name.encode())
        h.update((CUDA_DIR / name).read_bytes())
    return h.hexdigest()


def build_plugin_library(dest_dir: str | os.PathLike[str], arch: str) -> Path:
    """The plugin library for `arch` in `dest_dir`, built with nvcc unless already there."""
    from latentrt.plugins.harness import build_shared_library, find_nvcc

    dest = Path(dest_dir) / f"liblatentrt_plugins.{sources_digest()[:16]}.{arch}.so"
    if dest.is_file():
        return dest
    if find_nvcc() is None:
        raise BackendError(
            "the latentrt TensorRT plugins need nvcc (CUDA toolkit) to build their library"
        )
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    build_shared_library(tmp, arch=arch)
    os.replace(tmp, dest)
    return dest


_VP = ctypes.c_void_p
_I = ctypes.c_int


class PluginLibrary:
    """The nvcc-built plugin library: typed ctypes entry points for the C launchers."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.lib = ctypes.CDLL(str(self.path))
        except OSError as e:
            raise BackendError(f"cannot load the plugin library {self.path}: {e}") from None
        gn_args = [_VP, _VP, _VP, _VP, _I, _I, ctypes.c_longlong, _I, ctypes.c_float, _I, _I]
        gn_args += [_I, _I, _VP]  # forced tile and cluster size (0: the planner's), stream
        ints = ctypes.POINTER(_I)
        conv_args = [_VP, _VP, _VP, _VP, *([_I] * 9), ints, ints, ints, _I, _I]
        conv_args += [_VP, ctypes.c_longlong, _VP]  # stream-K workspace and its bytes, stream
        for suf in _SUFFIX.values():
            for name, args in (
                (f"latentrt_groupnorm_silu_{suf}", gn_args),
                (f"latentrt_conv3d_{suf}", conv_args),
                (f"latentrt_conv3d_pack_weights_{suf}", [_VP, _VP, _I, _I, _I, _VP]),
            ):
                fn = getattr(self.lib, name)
                fn.argtypes = args
                fn.restype = _I
        self.lib.latentrt_conv3d_streamk_workspace_bytes.argtypes = []
        self.lib.latentrt_conv3d_streamk_workspace_bytes.restype = ctypes.c_longlong
        self.lib.latentrt_conv3d_workspace_bytes.argtypes = [_I] * 10 + [ints, ints, ints, _I, _I]
        self.lib.latentrt_conv3d_workspace_bytes.restype = ctypes.c_longlong

    def streamk_workspace_bytes(self) -> int:
        """Workspace bytes past the packed weights that let Conv3d use stream-K on the current
        device (the bound for its SM count)."""
        n = self.lib.latentrt_conv3d_streamk_workspace_bytes()
        if n < 0:
            raise BackendError("cannot query the current CUDA device for the Conv3d workspace")
        return n

    def conv3d_spare_workspace_bytes(
        self,
        attrs: Conv3dAttrs,
        dtype: str,
        x_shape: Sequence[int],
        w_shape: Sequence[int],
        channels_last: bool,
    ) -> int:
        """Workspace bytes past the packed weights that let this Conv3d run its fastest way on
        the current device: channels-last copies of a channels-first input where a channels-last
        kernel is faster, and stream-K."""
        n, cin, d, h, w = (int(s) for s in x_shape)
        cout, _, kt, kh, kw = (int(s) for s in w_shape)
        nb = self.lib.latentrt_conv3d_workspace_bytes(
            _ITEMSIZE[dtype], n, cin, d, h, w, cout, kt, kh, kw, (_I * 6)(*attrs.pads),
            (_I * 3)(*attrs.strides), (_I * 3)(*attrs.dilations), attrs.causal_time,
            _LAYOUT_CHANNELS_LAST if channels_last else _LAYOUT_CHANNELS_FIRST,
        )  # fmt: skip
        if nb < 0:
            raise BackendError(f"Conv3d: no workspace size for x {tuple(x_shape)}, w {w_shape}")
        return nb

    def call(self, name: str, dtype: str, *args: Any) -> None:
        """Call launcher `latentrt_<name>_<dtype suffix>`; a nonzero cudaError_t raises."""
        fn = getattr(self.lib, f"latentrt_{name}_{_SUFFIX[dtype]}")
        rc = fn(*args)
        if rc != 0:
            raise BackendError(f"latentrt_{name}_{_SUFFIX[dtype]} failed with cudaError_t {rc}")


_TACTIC_TILES = tuple(1 << i for i in range(MAX_TILE_GROUPS.bit_length()))  # 1, 2, ... 32
_TACTIC_CLUSTERS = (1, 2, 4, 8)


def groupnorm_tactics(num_groups: int, channels_last: bool) -> list[int]:
    """GroupNormSiLU's custom tactics for a layout: every cluster size, and channels-last every
    tile of consecutive groups that divides them, each as tile * 16 + cluster (nonzero, as
    TensorRT requires; 0 is its default tactic, the planner's plan)."""
    tiles = [t for t in _TACTIC_TILES if num_groups % t == 0 and (t == 1 or channels_last)]
    return [t * 16 + cs for t in tiles for cs in _TACTIC_CLUSTERS]


def groupnorm_tactic_plan(tactic: int, num_groups: int) -> tuple[int, int]:
    """(tile, cluster) a tactic forces on the launchers; (0, 0), the planner's, for tactic 0."""
    if tactic == 0:
        return 0, 0
    tile, cluster = divmod(tactic, 16)
    if tactic < 0 or tile not in _TACTIC_TILES or cluster not in _TACTIC_CLUSTERS:
        raise BackendError(f"GroupNormSiLU: no tactic {tactic}")
    if num_groups % tile:
        raise BackendError(f"GroupNormSiLU: tactic {tactic} tiles {tile} of {num_groups} groups")
    return tile, cluster


def run_groupnorm_silu(
    lib: PluginLibrary,
    attrs: GroupNormSiLUAttrs,
    dtype: str,
    x_shape: Sequence[int],
    x: int,
    gamma: int,
    beta: int,
    y: int,
    stream: int,
    channels_last: bool = False,
    tactic: int = 0,
) -> None:
    """Launch GroupNormSiLU on device pointers; x, y are (N, C, spatial...) in `dtype`, laid out
    channels-first, or (N, spatial..., C) with `channels_last` (x_shape is logical either way);
    `tactic` forces a tile and cluster size (`groupnorm_tactics`; 0: the planner's)."""
    if len(x_shape) < 2 or x_shape[1] % attrs.num_groups:
        raise InputError(f"GroupNormSiLU: x {tuple(x_shape)} does not split into groups")
    tile, cluster = groupnorm_tactic_plan(tactic, attrs.num_groups)
    if tile > 1 and not channels_last:
        raise BackendError(f"GroupNormSiLU: tactic {tactic} tiles a channels-first tensor")
    n, c = int(x_shape[0]), int(x_shape[1])
    spatial = math.prod(int(s) for s in x_shape[2:])
    lib.call(
        "groupnorm_silu",
        dtype,
        x,
        gamma,
        beta,
        y,
        n,
        c,
        spatial,
        attrs.num_groups,
        attrs.epsilon,
        attrs.activation,
        _LAYOUT_CHANNELS_LAST if channels_last else _LAYOUT_CHANNELS_FIRST,
        tile,
        cluster,
        stream,
    )


def run_conv3d(
    lib: PluginLibrary,
    attrs: Conv3dAttrs,
    dtype: str,
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    x: int,
    w: int,
    b: int | None,
    y: int,
    workspace: int,
    stream: int,
    channels_last: bool = False,
    workspace_bytes: int = 0,
) -> None:
    """Repack w into `workspace` (conv3d_workspace_bytes), then launch Conv3d on x and y in
    NCDHW, or NDHWC with `channels_last` (x_shape is NCDHW either way). Workspace bytes past
    the packed weights (`workspace_bytes` in all) go to the launcher: channels-last copies of a
    channels-first input, stream-K (PluginLibrary.conv3d_spare_workspace_bytes)."""
    n, cin, d, h, wd = (int(s) for s in x_shape)
    cout, wcin, kt, kh, kw = (int(s) for s in w_shape)
    if wcin != cin:
        raise InputError(f"Conv3d: w has {wcin} input channels, x has {cin}")
    lib.call("conv3d_pack_weights", dtype, w, workspace, cout, cin, kt * kh * kw, stream)
    packed = conv3d_workspace_bytes(w_shape, dtype)
    spare = workspace_bytes - packed
    pads = (_I * 6)(*attrs.pads)
    strides = (_I * 3)(*attrs.strides)
    dilations = (_I * 3)(*attrs.dilations)
    lib.call(
        "conv3d",
        dtype,
        x,
        workspace,
        b,
        y,
        n,
        cin,
        d,
        h,
        wd,
        cout,
        kt,
        kh,
        kw,
        pads,
        strides,
        dilations,
        attrs.causal_time,
        _LAYOUT_CHANNELS_LAST if channels_last else _LAYOUT_CHANNELS_FIRST,
        workspace + packed if spare > 0 else None,
        max(spare, 0),
        stream,
    )


# --- TensorRT classes ---------------------------------------------------------------------------


@functools.cache
def _plugin_classes(trt: Any) -> dict[str, tuple[type, type]]:
    """name -> (IPluginV3 class, attrs class), defined once TensorRT is importable."""
    dtype_names = {
        trt.DataType.FLOAT: "float32",
        trt.DataType.HALF: "float16",
        trt.DataType.BF16: "bfloat16",
    }
    field_types = {
        np.dtype(np.int32): trt.PluginFieldType.INT32,
        np.dtype(np.float32): trt.PluginFieldType.FLOAT32,
    }

    def dims(d: Any) -> tuple[int, ...]:
        return tuple(int(v) for v in d)

    format_names = {getattr(trt.TensorFormat, n): n for n in ("LINEAR", "HWC8", "DHWC8")}

    def layout(desc: Any) -> str:
        return layout_of(format_names.get(desc.format, "other"), len(dims(desc.dims)))

    class _Plugin(
        trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime
    ):
        op = ""

        def __init__(self, attrs: Any, library: PluginLibrary) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.attrs = attrs
            self.library = library
            self.num_outputs = 1
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_name = self.op
            self.plugin_version = PLUGIN_VERSION
            self.timing_cache_id = attrs.timing_id()
            # TensorRT reads the serialized fields after get_fields_to_serialize returns, and a
            # PluginField points into its array without owning it: the plugin holds both.
            self._field_arrays = attrs.to_fields()
            self._fields = [
                trt.PluginField(n, a, field_types[a.dtype]) for n, a in self._field_arrays
            ]
            self._field_collection = trt.PluginFieldCollection(self._fields)

        def get_capability_interface(self, type: Any) -> Any:
            return self

        def get_output_data_types(self, input_types: list) -> list:
            return [input_types[0]]

        def channels_last_positions(self, descs: list, num_inputs: int) -> tuple[int, ...]:
            return ()

        def supports_format_combination(self, pos: int, in_out: list, num_inputs: int) -> bool:
            descs = [t.desc for t in in_out]
            return format_supported(
                pos,
                [dtype_names.get(d.type) for d in descs],
                [layout(d) for d in descs],
                num_inputs,
                self.channels_last_positions(descs, num_inputs),
            )

        def on_shape_change(self, inputs: list, outputs: list) -> None:
            return None  # every enqueue gets its shapes in the tensor descriptors

        def get_fields_to_serialize(self) -> Any:
            return self._field_collection

        def set_tactic(self, tactic: int) -> None:
            # One tactic (none advertised): TensorRT still calls this with 0, and the Python
            # binding fails the call where the method is missing.
            if tactic != 0:
                raise BackendError(f"{self.op}: no tactic {tactic}; the plugin advertises none")

        def attach_to_context(self, context: Any) -> Any:
            return self.clone()

        def clone(self) -> Any:
            twin = type(self)(self.attrs, self.library)
            twin.__dict__.update(self.__dict__)
            return twin

    class GroupNormSiLUPlugin(_Plugin):
        op = GROUPNORM_SILU
        channels_last = False  # the format of the latest configure_plugin
        tactic = 0

        def get_output_shapes(self, inputs: list, shape_inputs: list, builder: Any) -> list:
            return [trt.DimsExprs(inputs[0])]

        def configure_plugin(self, inputs: list, outputs: list) -> None:
            if len(inputs) != 3:
                raise InputError(f"GroupNormSiLU takes (x, gamma, beta), got {len(inputs)} inputs")
            x = dims(inputs[0].desc.dims)
            c = x[1] if len(x) > 1 else -1
            if c > 0 and c % self.attrs.num_groups:
                raise InputError(f"GroupNormSiLU: {c} channels in {self.attrs.num_groups} groups")
            for t, name in ((inputs[1], "gamma"), (inputs[2], "beta")):
                shape = dims(t.desc.dims)
                if len(shape) != 1 or (c > 0 and shape[0] not in (c, -1)):
                    raise InputError(f"GroupNormSiLU: {name} must be ({c},), got {shape}")
            self.channels_last = layout(inputs[0].desc) == "channels_last"

        def get_valid_tactics(self) -> list[int]:
            return groupnorm_tactics(self.attrs.num_groups, self.channels_last)

        def set_tactic(self, tactic: int) -> None:
            groupnorm_tactic_plan(tactic, self.attrs.num_groups)  # refuses what it cannot run
            self.tactic = tactic

        def channels_last_positions(self, descs: list, num_inputs: int) -> tuple[int, ...]:
            return groupnorm_channels_last_positions(dims(descs[0].dims), num_inputs)

        def enqueue(self, in_desc, out_desc, inputs, outputs, workspace, stream) -> None:
            run_groupnorm_silu(
                self.library,
                self.attrs,
                dtype_names[in_desc[0].type],
                dims(in_desc[0].dims),
                inputs[0],
                inputs[1],
                inputs[2],
                outputs[0],
                stream,
                channels_last=layout(in_desc[0]) == "channels_last",
                tactic=self.tactic,
            )

    class Conv3dPlugin(_Plugin):
        op = CONV3D

        def get_output_shapes(self, inputs: list, shape_inputs: list, builder: Any) -> list:
            x, w = inputs[0], inputs[1]
            out = trt.DimsExprs(x)
            spatial = conv3d_output_dims(
                [x[2], x[3], x[4]], [w[2], w[3], w[4]], self.attrs, _ExprDimOps(builder, trt)
            )
            out[1] = w[0]
            out[2], out[3], out[4] = spatial
            return [out]

        def configure_plugin(self, inputs: list, outputs: list) -> None:
            if len(inputs) not in (2, 3):
                raise InputError(f"Conv3d takes (x, w[, b]), got {len(inputs)} inputs")
            x, w = dims(inputs[0].desc.dims), dims(inputs[1].desc.dims)
            if len(x) != 5 or len(w) != 5:
                raise InputError(f"Conv3d needs 5-D x (NCDHW) and w, got {x} and {w}")
            if min(w) <= 0:
                raise InputError(f"Conv3d: weights must have a static shape, got {w}")
            if x[1] > 0 and x[1] != w[1]:
                raise InputError(f"Conv3d: w has {w[1]} input channels, x has {x[1]}")
            if w[2] * w[3] * w[4] > 512:
                raise InputError(f"Conv3d: kernel {w[2:]} exceeds the plugin's 512 taps")
            resolve_conv3d_pads(
                w[2:], self.attrs.pads, self.attrs.dilations, self.attrs.causal_time
            )
            if len(inputs) == 3 and dims(inputs[2].desc.dims) not in ((w[0],), (-1,)):
                raise InputError(f"Conv3d: b must be ({w[0]},), got {dims(inputs[2].desc.dims)}")

        def channels_last_positions(self, descs: list, num_inputs: int) -> tuple[int, ...]:
            return conv3d_channels_last_positions(dims(descs[1].dims), num_inputs)

        def get_workspace_size(self, inputs: list, outputs: list) -> int:
            dtype, w_shape = dtype_names[inputs[0].desc.type], dims(inputs[1].max)
            last = layout(inputs[0].desc) == "channels_last"
            spare = self.library.conv3d_spare_workspace_bytes(
                self.attrs, dtype, dims(inputs[0].max), w_shape, last
            )
            return conv3d_workspace_bytes(w_shape, dtype, spare)

        def enqueue(self, in_desc, out_desc, inputs, outputs, workspace, stream) -> None:
            dtype, w_shape = dtype_names[in_desc[0].type], dims(in_desc[1].dims)
            last = layout(in_desc[0]) == "channels_last"
            spare = self.library.conv3d_spare_workspace_bytes(
                self.attrs, dtype, dims(in_desc[0].dims), w_shape, last
            )
            run_conv3d(
                self.library,
                self.attrs,
                dtype_names[in_desc[0].type],
                dims(in_desc[0].dims),
                dims(in_desc[1].dims),
                inputs[0],
                inputs[1],
                inputs[2] if len(inputs) > 2 else None,
                outputs[0],
                workspace,
                stream,
                channels_last=last,
                workspace_bytes=conv3d_workspace_bytes(w_shape, dtype, spare),
            )

    return {
        GROUPNORM_SILU: (GroupNormSiLUPlugin, GroupNormSiLUAttrs),
        CONV3D: (Conv3dPlugin, Conv3dAttrs),
    }


def _make_creator(trt: Any, plugin_cls: type, attrs_cls: type, library: PluginLibrary) -> Any:
    field_types = {np.int32: trt.PluginFieldType.INT32, np.float32: trt.PluginFieldType.FLOAT32}

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name = plugin_cls.op
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self._fields = [  # held, as the collection does not own them (see _Plugin)
                trt.PluginField(n, np.array([], dtype=t), field_types[t])
                for n, t in attrs_cls.FIELDS
            ]
            self.field_names = trt.PluginFieldCollection(self._fields)

        def create_plugin(self, name: str, fc: Any, phase: Any) -> Any:
            attrs = attrs_cls.from_fields((f.name, f.data) for f in fc)
            return plugin_cls(attrs, library)

    return Creator()


_REGISTERED: dict[str, tuple[Path, Any]] = {}


def register_plugins(library: str | os.PathLike[str] | PluginLibrary) -> dict[str, Any]:
    """Register both plugin creators with TensorRT's global registry; returns name -> creator.

    Registering again with the same library is a no-op; another library replaces the creators.
    """
    trt = import_tensorrt()
    lib = library if isinstance(library, PluginLibrary) else PluginLibrary(library)
    registry = trt.get_plugin_registry()
    out = {}
    for name, (plugin_cls, attrs_cls) in _plugin_classes(trt).items():
        old = _REGISTERED.get(name)
        if old is not None and old[0] == lib.path:
            out[name] = old[1]
            continue
        if old is not None:
            registry.deregister_creator(old[1])
        creator = _make_creator(trt, plugin_cls, attrs_cls, lib)
        if not registry.register_creator(creator, PLUGIN_NAMESPACE):
            raise BackendError(
                f"TensorRT refused to register the {name} plugin creator (another creator named "
                f"{name!r}, version {PLUGIN_VERSION} is already registered)"
            )
        _REGISTERED[name] = (lib.path, creator)
        out[name] = creator
    return out
