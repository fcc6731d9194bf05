"""GPU tests: the plugin CUDA kernels against PyTorch in float64 (marker `gpu`).

Each case draws fresh random inputs and poisons the output with NaN before the launch; the
error is max|out - ref| / max|ref|: fp32 <= 1e-5, fp16/bf16 <= 1e-2. Kernels run through the
NVRTC harness and, once per op, through the nvcc-built C launchers a TensorRT plugin calls.
"""

from __future__ import annotations

import ctypes
from functools import partial

import pytest

from latentrt.errors import InputError

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.gpu

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOL = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
_SUF = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


@pytest.fixture(scope="module")
def harness():
    pytest.importorskip("cupy")
    from latentrt.plugins import harness as h

    return h


@pytest.fixture
def gen():
    g = torch.Generator(device="cuda")
    g.seed()
    return g


def _rand(shape, dtype, gen, scale=1.0, offset=0.0):
    t = torch.randn(shape, device="cuda", dtype=torch.float32, generator=gen) * scale + offset
    return t.to(DTYPES[dtype])


def _poisoned(shape, dtype):
    return torch.full(shape, float("nan"), device="cuda", dtype=DTYPES[dtype])


def _check(out, ref, dtype):
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "unwritten (NaN) or non-finite outputs"
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err.item() <= TOL[dtype], f"relative error {err.item():.3e} > {TOL[dtype]}"


def _gn_ref(x, gamma, beta, groups, eps, act, channels_last):
    xd = x.double()
    if channels_last:
        xd = xd.movedim(-1, 1)
    y = F.group_norm(xd, groups, gamma.double(), beta.double(), eps)
    y = F.silu(y) if act else y
    return y.movedim(1, -1).contiguous() if channels_last else y


def _check_channels_last(harness, gen, shape, dtype, **forced):
    """One channels-last launch (32 groups, SiLU, `forced` plan overrides) against float64
    PyTorch. The groups' means differ (a per-channel offset), so elements folded into the wrong
    group's statistics show."""
    c = shape[-1]
    offset = (torch.arange(c, device="cuda") // (c // 32) % 5).to(torch.float32) * 3.0
    x = (_rand(shape, "float32", gen, 1.5) + offset).to(DTYPES[dtype])
    gamma, beta = _rand((c,), dtype, gen), _rand((c,), dtype, gen)
    out = _poisoned(shape, dtype)
    harness.groupnorm_silu(x, gamma, beta, 32, 1e-5, 1, "NHWC", out=out, **forced)
    _check(out, _gn_ref(x, gamma, beta, 32, 1e-5, 1, True), dtype)


GN_SHAPES = [
    (2, 320, 64, 64),
    (2, 640, 32, 32),
    (2, 1280, 16, 16),
    (1, 512, 128, 128),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", GN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_groupnorm_silu_unet_shapes(harness, gen, shape, layout, dtype):
    last = layout == "NHWC"
    xshape = (shape[0], *shape[2:], shape[1]) if last else shape
    x = _rand(xshape, dtype, gen, 1.5, 0.3)
    gamma = _rand((shape[1],), dtype, gen)
    beta = _rand((shape[1],), dtype, gen)
    out = _poisoned(xshape, dtype)
    harness.groupnorm_silu(x, gamma, beta, 32, 1e-5, 1, layout, out=out)
    _check(out, _gn_ref(x, gamma, beta, 32, 1e-5, 1, last), dtype)


@pytest.mark.parametrize(
    ("shape", "groups", "layout", "act", "dtype"),
    [
        ((1, 96, 9, 33, 33), 32, "NCHW", 1, "float16"),  # 5-D, odd spatial: scalar path
        ((1, 9, 33, 33, 96), 32, "NHWC", 1, "bfloat16"),
        ((2, 64, 17, 17), 32, "NCHW", 0, "float32"),  # identity activation
        ((1, 32, 512, 512), 2, "NCHW", 1, "float32"),  # 16 MB groups: two-read fallback
        ((1, 512, 512, 32), 2, "NHWC", 1, "float16"),
        ((3, 6, 5, 7), 3, "NCHW", 1, "float32"),  # tiny: cluster slices partly empty
    ],
)
def test_groupnorm_silu_edge_cases(harness, gen, shape, groups, layout, act, dtype):
    x = _rand(shape, dtype, gen, 2.0, 1.0)
    c = shape[-1] if layout == "NHWC" else shape[1]
    gamma, beta = _rand((c,), dtype, gen), _rand((c,), dtype, gen)
    out = _poisoned(shape, dtype)
    harness.groupnorm_silu(x, gamma, beta, groups, 1e-6, act, layout, out=out)
    _check(out, _gn_ref(x, gamma, beta, groups, 1e-6, act, layout == "NHWC"), dtype)


@pytest.mark.parametrize(
    ("shape", "dtype", "cluster"),
    [
        ((2, 9, 31, 320), "float32", None),  # 10 fp32 channels: tiles of 2 groups, 5 vectors a row
        ((1, 17, 23, 960), "float16", None),  # 30 channels: tiles of 4 groups, 15 vectors a row
        ((2, 16, 16, 1920), "bfloat16", None),  # 60 channels: tiles of 2 groups
        ((1, 33, 33, 128), "bfloat16", 2),  # 4 channels: every vector holds two groups
        ((1, 9, 11, 64), "float32", 4),  # 2 channels: two fp32 groups a vector
        ((2, 7, 13, 320), "float16", 1),
        ((2, 7, 13, 320), "float16", 2),
        ((2, 7, 13, 320), "bfloat16", 4),
        ((2, 7, 13, 320), "float16", 8),  # 91 rows over 8 blocks
        ((1, 3, 1, 640), "float16", 8),  # 3 rows: five blocks of the cluster have none
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_groupnorm_silu_straddling_vectors(harness, gen, shape, dtype, cluster):
    """Channels-last tiles read in 16-byte vectors that straddle two groups."""
    c = shape[-1]
    itemsize = DTYPES[dtype].itemsize
    props = torch.cuda.get_device_properties(0)
    plan = harness.groupnorm_plan(shape[0], c, shape[1] * shape[2], 32, True, itemsize, True,
                                  props.multi_processor_count,
                                  props.shared_memory_per_block_optin, cluster=cluster)  # fmt: skip
    assert plan.vec == 16 // itemsize and (c // 32) % plan.vec and plan.tile > 1
    _check_channels_last(harness, gen, shape, dtype, cluster=cluster)


@pytest.mark.parametrize(
    ("shape", "layout", "cluster", "per_sm", "dtype"),
    [
        ((1, 512, 128, 128), "NCHW", 8, 4, "float16"),  # 3072 of 4096 vectors cached
        ((1, 256, 64, 64), "NCHW", 1, 4, "float32"),
        ((1, 96, 65, 129), "NCHW", 1, 4, "float16"),  # scalars: all but ~600 of 25155 cached
        ((1, 128, 128, 128), "NHWC", 2, 4, "bfloat16"),  # tiles of 8 groups: whole rows cached
        ((1, 512, 128, 128), "NHWC", 4, 3, "float32"),
        ((1, 256, 64, 64), "NCHW", 2, None, "float16"),  # cache=0: everything read twice
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_groupnorm_silu_partial_cache(harness, gen, shape, layout, cluster, per_sm, dtype):
    """Slices larger than their cache: the head cached, the tail read again after the statistics
    (or, with no cache, all of it)."""
    last = layout == "NHWC"
    n, c = shape[0], shape[-1] if last else shape[1]
    spatial = shape[1] * shape[2] if last else shape[2] * shape[3]
    props = torch.cuda.get_device_properties(0)
    forced = {"per_sm": per_sm} if per_sm else {"cache": 0}
    plan = harness.groupnorm_plan(n, c, spatial, 32, last, DTYPES[dtype].itemsize, True,
                                  props.multi_processor_count,
                                  props.shared_memory_per_block_optin, cluster=cluster, **forced)  # fmt: skip
    slice_ = -(-(c // 32 * spatial // plan.vec) // cluster)
    assert plan.cap < slice_ and (plan.cap > 0) == bool(per_sm)
    x = _rand(shape, dtype, gen, 1.5, 0.3)
    gamma, beta = _rand((c,), dtype, gen), _rand((c,), dtype, gen)
    out = _poisoned(shape, dtype)
    harness.groupnorm_silu(x, gamma, beta, 32, 1e-5, 1, layout, out=out, cluster=cluster, **forced)
    _check(out, _gn_ref(x, gamma, beta, 32, 1e-5, 1, last), dtype)


@pytest.mark.parametrize(
    ("shape", "dtype", "tile", "cluster"),
    [
        ((1, 128, 128, 512), "float16", 2, 8),  # 16 channels a group: 64-byte rows, whole cache
        ((1, 128, 128, 512), "bfloat16", 4, 8),  # 128-byte rows, read twice (no cache)
        ((2, 32, 32, 640), "float16", 2, 4),  # 20 channels: 16-byte vectors straddle groups
        ((2, 16, 16, 1280), "float32", 4, 2),  # 40 channels: 640-byte rows
        ((2, 64, 64, 320), "float16", 2, 8),  # 10 channels: 40-byte rows of 4-byte vectors
        ((2, 64, 64, 320), "bfloat16", 1, 2),  # one group per cluster where tiles are planned
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_groupnorm_silu_forced_tiles(harness, gen, shape, dtype, tile, cluster):
    """Channels-last tiles forced beside the planner's (the --gn-tiles sweep)."""
    _check_channels_last(harness, gen, shape, dtype, cluster=cluster, tile=tile)


@pytest.mark.parametrize(
    ("shape", "dtype", "tile", "cluster"),
    [
        ((1, 512, 512, 128), "float16", 4, 8),  # read twice: tiles of 4 groups keep 8 clusters
        ((1, 512, 512, 128), "bfloat16", 4, 8),
        ((1, 256, 256, 256), "float32", 2, 8),  # read twice: 32-byte runs in 64-byte rows
        ((8, 64, 64, 320), "float16", 4, 2),  # 128 KB tile slices: pairs, all resident
        ((8, 64, 64, 320), "bfloat16", 4, 2),
        ((2, 128, 128, 320), "float32", 4, 8),  # 40-byte fp32 runs: 160-byte rows, clusters of 8
        ((8, 64, 64, 320), "float32", 4, 8),
        ((2, 64, 64, 1280), "float16", 1, 8),  # one group: clusters of 4 made 8, TMA boxes
        ((1, 64, 64, 512), "float32", 1, 8),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_groupnorm_silu_channels_last_planned_tiles(harness, gen, shape, dtype, tile, cluster):
    # The planner's channels-last tiles and clusters where its H100 rules pick them: groups read
    # twice, tiles' slices that fill an SM, fp32 straddling tiles, one-group clusters of 8.
    n, c = shape[0], shape[-1]
    itemsize = DTYPES[dtype].itemsize
    props = torch.cuda.get_device_properties(0)
    sms, optin = props.multi_processor_count, props.shared_memory_per_block_optin
    plan = harness.groupnorm_plan(n, c, shape[1] * shape[2], 32, True, itemsize, True, sms, optin)
    if sms == 132:  # H100 SXM: the plans these cases were chosen for
        assert (plan.tile, plan.cluster) == (tile, cluster)
    _check_channels_last(harness, gen, shape, dtype)


@pytest.mark.parametrize("cache", [2, 3], ids=["tma-in", "tma-in-out"])
@pytest.mark.parametrize(
    ("shape", "cluster", "dtype"),
    [
        ((1, 128, 128, 512), 8, "float16"),  # the VAE's: boxes of 256 positions x 32 bytes
        ((1, 128, 128, 512), 8, "bfloat16"),
        ((1, 128, 128, 512), 8, "float32"),
        ((2, 16, 16, 1280), 1, "float16"),  # 40 channels: 80-byte rows
        ((2, 32, 32, 640), 2, "float32"),  # 20 fp32 channels: 80-byte rows, two samples' rows
        ((2, 24, 40, 512), 4, "float16"),  # 240 positions a block: boxes of 16
        ((3, 8, 15, 512), 1, "bfloat16"),  # 120 positions: boxes of 8
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_groupnorm_silu_channels_last_tma(harness, gen, shape, cluster, dtype, cache):
    """Channels-last slices moved by 2-D TMA boxes (and written back by TMA stores)."""
    c = shape[-1]
    props = torch.cuda.get_device_properties(0)
    plan = harness.groupnorm_plan(shape[0], c, shape[1] * shape[2], 32, True,
                                  DTYPES[dtype].itemsize, True, props.multi_processor_count,
                                  props.shared_memory_per_block_optin, cluster=cluster,
                                  cache=cache)  # fmt: skip
    assert plan.box >= 8 and plan.cached == cache
    _check_channels_last(harness, gen, shape, dtype, cluster=cluster, cache=cache)


@pytest.mark.parametrize("cache", [2, 3], ids=["bulk-in", "bulk-in-out"])
@pytest.mark.parametrize(
    ("shape", "cluster", "dtype"),
    [
        ((2, 320, 64, 64), 2, "float16"),
        ((1, 512, 128, 128), 8, "bfloat16"),
        ((2, 1280, 16, 16), 1, "float32"),
        ((2, 64, 24, 10), 4, "float16"),  # 15-vector slices: pieces of 4, 4, 4 and 3
        ((1, 32, 2, 8), 8, "float32"),  # 4 vectors a group, 8 blocks: empty slices and pieces
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_groupnorm_silu_bulk_copies(harness, gen, shape, cluster, dtype, cache):
    """The slice cached by the TMA's bulk copies (and written back by bulk stores)."""
    x = _rand(shape, dtype, gen, 1.5, 0.3)
    gamma, beta = _rand((shape[1],), dtype, gen), _rand((shape[1],), dtype, gen)
    out = _poisoned(shape, dtype)
    harness.groupnorm_silu(x, gamma, beta, 32, 1e-5, 1, "NCHW", out=out, cluster=cluster,
                           cache=cache)  # fmt: skip
    _check(out, _gn_ref(x, gamma, beta, 32, 1e-5, 1, False), dtype)


def _conv_ref(x, w, b, pads, strides, dil, causal, channels_last):
    xd = x.double().movedim(-1, 1) if channels_last else x.double()
    kt = w.shape[2]
    d0, h0, w0, d1, h1, w1 = pads
    if causal:
        d0, d1 = dil[0] * (kt - 1), 0
    if causal == 2:
        xd = F.pad(xd, (0, 0, 0, 0, d0, 0), mode="replicate")
        d0 = 0
    xd = F.pad(xd, (w0, w1, h0, h1, d0, d1))
    y = F.conv3d(xd, w.double(), None if b is None else b.double(), stride=strides, dilation=dil)
    return y.movedim(1, -1).contiguous() if channels_last else y


CONV_CASES = [
    # (N, Cin, D, H, W), Cout, kernel, pads, strides, dilations, causal
    ((1, 96, 9, 64, 64), 96, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    ((1, 96, 9, 64, 64), 96, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 2),
    ((1, 384, 5, 32, 32), 384, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    ((1, 3, 17, 64, 64), 128, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 2),
    ((1, 128, 9, 32, 32), 128, (3, 3, 3), (0, 0, 0, 0, 1, 1), (2, 2, 2), (1, 1, 1), 1),
    ((2, 64, 7, 16, 16), 64, (3, 3, 3), (2, 2, 2, 2, 2, 2), (1, 1, 1), (2, 2, 2), 0),
    ((1, 40, 6, 12, 10), 24, (3, 1, 3), (0, 0, 1, 0, 0, 1), (1, 1, 2), (2, 1, 1), 2),
]


def _conv_inputs(case, last, dtype, gen):
    """Fresh random x (NDHWC when `last`), w and b for a Conv3d case, and the float64 reference."""
    shape, cout, k, pads, strides, dil, causal = case
    x = _rand((shape[0], *shape[2:], shape[1]) if last else shape, dtype, gen)
    w = _rand((cout, shape[1], *k), dtype, gen, (shape[1] * k[0] * k[1] * k[2]) ** -0.5)
    b = _rand((cout,), dtype, gen, 0.1)
    return x, w, b, _conv_ref(x, w, b, pads, strides, dil, causal, last)


def _case_id(case):
    shape, cout, k, _, s, d, causal = case
    return f"{'x'.join(map(str, shape))}-{cout}-k{''.join(map(str, k))}-s{s[0]}-d{d[0]}-c{causal}"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", ["NCDHW", "NCDHW-kept", "NDHWC"])
@pytest.mark.parametrize("case", CONV_CASES, ids=_case_id)
def test_conv3d_video_vae_shapes(harness, gen, case, layout, dtype):
    """NCDHW runs through channels-last copies where they pay (on Hopper, most 16-bit cases);
    NCDHW-kept keeps the channels-first kernels."""
    shape, cout, k, pads, strides, dil, causal = case
    kept, layout = layout.endswith("-kept"), layout.removesuffix("-kept")
    last = layout == "NDHWC"
    x, w, b, ref = _conv_inputs(case, last, dtype, gen)
    out = _poisoned(tuple(ref.shape), dtype)
    harness.conv3d(
        x, w, b, pads, strides, dil, causal, layout, out=out, layout_change=not kept and None
    )
    _check(out, ref, dtype)


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.skipif(not HOPPER, reason="the wgmma kernel needs an sm_90 GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("tile_n", "stages"), [(64, None), (96, None), (128, None), (128, 6)])
def test_conv3d_wgmma_every_tile(harness, gen, tile_n, stages, dtype):
    # Cin 72: K steps of 64 straddle taps; 1200 positions: a partial last M tile; Cout 192;
    # every tile width and pipeline, forced (at 132 SMs the grid alone would pick the deep one).
    shape, cout, k = (2, 72, 5, 12, 20), 192, (3, 3, 3)
    pads, strides, dil = (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1)
    x = _rand((shape[0], *shape[2:], shape[1]), dtype, gen)
    w = _rand((cout, shape[1], *k), dtype, gen, (shape[1] * 27) ** -0.5)
    b = _rand((cout,), dtype, gen, 0.1)
    stages = harness.wgmma_stages(tile_n) if stages is None else stages
    plan = harness.conv3d_plan(dtype, True, 2, 72, cout, 27, 1200, True, 132, True, tile_n, stages)
    name = f"latentrt_conv3d_wgmma_ndhwc_{_SUF[dtype]}_n{tile_n}"
    assert plan.kernel == name + (f"_s{stages}" if stages != harness.wgmma_stages(tile_n) else "")
    ref = _conv_ref(x, w, b, pads, strides, dil, 2, True)
    out = _poisoned(tuple(ref.shape), dtype)
    harness.conv3d(x, w, b, pads, strides, dil, 2, "NDHWC", out=out, tile_n=tile_n, stages=stages)
    _check(out, ref, dtype)


SMALLC_CASES = [
    # (N, Cin, D, H, W), Cout, kernel, pads, strides, dilations, causal, for the small-Cin kernel
    # (taps * Cin <= 256): 4 channels, batch 2, spatial stride 2 and 200 outputs (two 128-wide
    # tiles, the second part idle); 5 channels, dilation 2, replicate padding, 20 outputs (stores
    # without 16-byte vectors); 1 channel, a (2, 3, 3) kernel, 70-wide frames (channels-first rows
    # that are not a multiple of 8); a pointwise conv on 3 channels (K 3 padded to 16, 64-wide).
    ((2, 4, 5, 13, 19), 200, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 2, 2), (1, 1, 1), 1),
    ((1, 5, 6, 11, 9), 20, (3, 3, 3), (0, 2, 2, 0, 2, 2), (1, 1, 1), (2, 2, 2), 2),
    ((1, 1, 4, 20, 70), 136, (2, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    ((3, 3, 3, 16, 16), 64, (1, 1, 1), (0, 0, 0, 0, 0, 0), (1, 1, 1), (1, 1, 1), 0),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NCDHW", "NDHWC"])
@pytest.mark.parametrize("case", [*SMALLC_CASES, CONV_CASES[3]], ids=_case_id)
def test_conv3d_small_cin(harness, gen, case, layout, dtype):
    shape, cout, k, pads, strides, dil, causal = case
    last = layout == "NDHWC"
    x, w, b, ref = _conv_inputs(case, last, dtype, gen)
    out_dhw = tuple(ref.shape[1:4] if last else ref.shape[2:5])
    plan = harness.conv3d_smallc_plan(
        dtype, last, shape[0], shape[1], cout, k, out_dhw, strides, dil, 132
    )
    assert plan is not None and "smallc" in plan.kernel
    out = _poisoned(tuple(ref.shape), dtype)
    harness.conv3d(x, w, b, pads, strides, dil, causal, layout, out=out)
    _check(out, ref, dtype)


NARROW_CASES = [
    # Few output channels (the narrow-output kernel, channels-last): a VAE decoder's RGB output
    # conv (Cin chunks of 32); 16 channels into 3 with spatial stride 2 and batch 2 (chunks of
    # 16); 24 channels (chunks of 8, 18 taps), dilation 2, replicate padding; a (2, 3, 3) kernel
    # into 12 over 70-wide frames.
    ((1, 128, 9, 32, 32), 3, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    ((2, 16, 5, 13, 19), 3, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 2, 2), (1, 1, 1), 1),
    ((1, 24, 6, 11, 9), 5, (2, 3, 3), (0, 2, 2, 0, 2, 2), (1, 1, 1), (2, 2, 2), 2),
    ((1, 64, 4, 20, 70), 12, (2, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    # The RGB output conv of a 17 x 64 x 64 latent video: 544 boxes, more than two CTAs per SM
    # hold on any GPU of up to 271 SMs, so stream-K shares (box, chunk) units out.
    ((1, 128, 17, 64, 64), 3, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["NDHWC", "NCDHW"])
@pytest.mark.parametrize("case", NARROW_CASES, ids=_case_id)
def test_conv3d_narrow_output(harness, gen, case, layout, dtype):
    """Channels-last directly; channels-first through channels-last copies (Cout 5 and 3 x 5 x 9
    outputs make odd transposes, element by element)."""
    shape, cout, k, pads, strides, dil, causal = case
    last = layout == "NDHWC"
    x, w, b, ref = _conv_inputs(case, last, dtype, gen)
    out_dhw = tuple(ref.shape[1:4] if last else ref.shape[2:5])
    args = (dtype, True, shape[0], shape[1], cout, k, out_dhw, strides, dil)
    plan = harness.conv3d_narrow_plan(*args)
    assert plan is not None and "narrow" in plan.kernel
    out = _poisoned(tuple(ref.shape), dtype)
    harness.conv3d(
        x, w, b, pads, strides, dil, causal, layout, out=out, layout_change=not last or None
    )
    _check(out, ref, dtype)


# (case, CTAs): 72 boxes of 4 Cin chunks (1 x 128 x 9 x 32 x 32) or 12 boxes of 3 chunks (24
# channels, dilation 2) shared by fewer CTAs than boxes.
NARROW_STREAM_K = [(0, 1), (0, 7), (0, 50), (0, 71), (2, 1), (2, 5), (2, 11)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("case", "ctas"), NARROW_STREAM_K, ids=lambda v: str(v))
def test_conv3d_narrow_output_stream_k(harness, gen, case, ctas, dtype):
    """Stream-K forced below one CTA per box, so ranges start and end inside boxes and a CTA
    both finishes its predecessor's box and hands a partial on; the workspace's flags are left
    zero for the next launch, which reuses the workspace."""
    case = NARROW_CASES[case]
    shape, cout, k, pads, strides, dil, causal = case
    x, w, b, ref = _conv_inputs(case, True, dtype, gen)
    out_dhw = tuple(ref.shape[1:4])
    plan = harness.conv3d_narrow_plan(
        dtype, True, shape[0], shape[1], cout, k, out_dhw, strides, dil, ctas=ctas
    )
    assert plan.grid[0] == ctas and plan.workspace == harness.narrow_workspace_bytes(ctas)
    ws = torch.full((plan.workspace // 4,), 0.0, device="cuda", dtype=torch.float32)
    for _ in range(2):
        out = _poisoned(tuple(ref.shape), dtype)
        harness.conv3d(x, w, b, pads, strides, dil, causal, "NDHWC", out=out, narrow_ctas=ctas,
                       workspace=ws)  # fmt: skip
        _check(out, ref, dtype)
    assert int(ws[ctas * 2048 :].view(torch.int32).abs().sum()) == 0


TMA_CASES = [
    # (N, Cin, D, H, W), Cout, kernel, pads, causal: partial boxes (12 x 20 frames in 4 x 32 or
    # 8 x 16 boxes, 8 x 32 or 16 x 16 at m256), Cout 192 (an idle half tile at n128, zero-filled
    # B rows at n256), replicate and zero causal padding; a (1, 3, 3) kernel with symmetric pads
    # and no causal time; and an odd count of position tiles (3), so a cluster's partner tile lies
    # past the batch. 12 x 40 frames take tiles of four 4 x 8 boxes (eight at m256): 3 frames x
    # 15 boxes leave the last tile one box (five at m256); with replicate padding, each box clamps
    # its own frame.
    ((2, 128, 5, 12, 20), 192, (3, 3, 3), (0, 1, 1, 0, 1, 1), 1),
    ((2, 128, 5, 12, 20), 192, (3, 3, 3), (0, 1, 1, 0, 1, 1), 2),
    ((1, 64, 4, 9, 33), 64, (1, 3, 3), (0, 1, 1, 0, 1, 1), 0),
    ((1, 64, 3, 8, 16), 64, (1, 3, 3), (0, 1, 1, 0, 1, 1), 0),
    ((1, 64, 3, 12, 40), 64, (1, 3, 3), (0, 1, 1, 0, 1, 1), 0),
    ((1, 128, 4, 12, 40), 192, (3, 3, 3), (0, 1, 1, 0, 1, 1), 2),
]


def _check_tma_case(harness, gen, case, dtype, **forced) -> None:
    """One TMA_CASES case through the TMA kernel with a forced plan (A in boxes unless im2col is
    forced), against PyTorch."""
    forced.setdefault("im2col", False)
    shape, cout, k, pads, causal = case
    one = (1, 1, 1)
    x, w, b, ref = _conv_inputs((shape, cout, k, pads, one, one, causal), True, dtype, gen)
    out = _poisoned(tuple(ref.shape), dtype)
    harness.conv3d(x, w, b, pads, causal_time=causal, layout="NDHWC", out=out, tma=True, **forced)
    _check(out, ref, dtype)


@pytest.mark.skipif(not HOPPER, reason="the TMA kernel needs an sm_90 GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cluster", [1, 2], ids=["c1", "c2"])
# One cluster per unit of tiles; stream-K for the last 7 units (up to 132 CTAs of a few K steps,
# ranges that straddle units, several partials handed to one tile); stream-K for all of them.
@pytest.mark.parametrize("streamk", [0, 7, 10**6], ids=["dp", "dp+sk7", "sk"])
@pytest.mark.parametrize(
    ("tile_m", "tile_n", "stages"),
    [(128, 128, 3), (128, 192, 5), (128, 256, 4), (256, 128, 4)],
)
@pytest.mark.parametrize("case", TMA_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-c{c[4]}")
def test_conv3d_tma_every_variant(
    harness, gen, case, tile_m, tile_n, stages, streamk, cluster, dtype
):
    _check_tma_case(harness, gen, case, dtype, tile_n=tile_n, stages=stages, tile_m=tile_m,
                    streamk=streamk, cluster=cluster)  # fmt: skip


@pytest.mark.skipif(not HOPPER, reason="the TMA kernel needs an sm_90 GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("streamk", [0, 7, 10**6], ids=["dp", "dp+sk7", "sk"])
@pytest.mark.parametrize(("tile_n", "stages"), [(192, 5), (256, 4)])
@pytest.mark.parametrize(
    "case", [TMA_CASES[i] for i in (0, 1, 5)], ids=lambda c: f"{'x'.join(map(str, c[0]))}-c{c[4]}"
)
def test_conv3d_tma_clusters_of_four(harness, gen, case, tile_n, stages, streamk, dtype):
    """Four position tiles share B by multicast (a quarter of its rows each); position tiles
    are rounded up to fours, so some of a cluster's tiles lie past the batch."""
    _check_tma_case(harness, gen, case, dtype, tile_n=tile_n, stages=stages, tile_m=128,
                    streamk=streamk, cluster=4)  # fmt: skip


IM2COL_CASES = [TMA_CASES[i] for i in (0, 2, 3, 4)] + [
    ((1, 64, 4, 9, 33), 128, (3, 3, 3), (1, 1, 1, 1, 1, 1), 0),  # time padded both sides
]


@pytest.mark.skipif(not HOPPER, reason="the TMA kernel needs an sm_90 GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("tile_m", "tile_n", "stages", "cluster", "streamk"),
    [(128, 128, 3, 1, 0), (128, 192, 5, 2, 10**6), (128, 256, 4, 2, 0), (256, 128, 4, 1, 7)],
    ids=["m128n128-dp", "m128n192-c2-sk", "m128n256-c2-dp", "m256n128-dp+sk7"],
)
@pytest.mark.parametrize("case", IM2COL_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-c{c[4]}")
def test_conv3d_tma_im2col(harness, gen, case, tile_m, tile_n, stages, cluster, streamk, dtype):
    """A tiles loaded by TMA's im2col mode: each tile is tile_m consecutive output positions,
    across rows, frames and the batch (the last tile and a cluster partner's past the end)."""
    _check_tma_case(harness, gen, case, dtype, tile_n=tile_n, stages=stages, tile_m=tile_m,
                    streamk=streamk, cluster=cluster, im2col=True)  # fmt: skip


@pytest.mark.skipif(not HOPPER, reason="the TMA kernel needs an sm_90 GPU")
def test_conv3d_tma_im2col_needs_zero_padding(harness, gen):
    with pytest.raises(InputError, match="im2col"):
        _check_tma_case(harness, gen, TMA_CASES[1], "float16", im2col=True)  # replicate


@pytest.mark.skipif(not HOPPER, reason="the TMA kernel needs an sm_90 GPU")
def test_conv3d_captures_into_a_cuda_graph_without_a_workspace(harness, gen):
    """Channels-first through the channels-last copies, stream-K for every tile: the copies and
    stream-K's workspace come from torch's allocator, so the launch captures on a fresh stream;
    the graph replays on new inputs. CuPy inputs get a clear error instead of a failed capture."""
    case = ((1, 128, 4, 12, 40), 192, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    x, w, b, _ = _conv_inputs(case, False, "float16", gen)
    packed = harness.pack_conv3d_weights(w)
    out = _poisoned((1, 192, 4, 12, 40), "float16")
    call = partial(
        harness.conv3d, x, packed, b, case[3], causal_time=1, out=out, weights_packed=True,
        layout_change=True, streamk=10**6,
    )  # fmt: skip
    call()  # warm-up outside the capture: modules compiled and loaded
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        call(stream=stream)
    x.copy_(_rand(x.shape, "float16", gen))
    out.fill_(float("nan"))
    graph.replay()
    _check(out, _conv_ref(x, w, b, case[3], case[4], case[5], 1, False), "float16")

    cupy = pytest.importorskip("cupy")
    xc, pc = cupy.asarray(x), cupy.asarray(packed)
    cs = cupy.cuda.Stream(non_blocking=True)
    with cs:
        cs.begin_capture()
        try:
            with pytest.raises(InputError, match="CUDA graph capture"):
                harness.conv3d(xc, pc, None, case[3], causal_time=1, weights_packed=True)
        finally:
            cs.end_capture()


def test_conv3d_without_bias_and_prepacked_weights(harness, gen):
    x = _rand((1, 64, 5, 16, 16), "float16", gen)
    w = _rand((64, 64, 3, 3, 3), "float16", gen, 0.05)
    packed = harness.pack_conv3d_weights(w)
    torch.testing.assert_close(packed, w.permute(0, 2, 3, 4, 1).contiguous(), rtol=0, atol=0)
    ref = _conv_ref(x, w, None, (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1, False)
    out = _poisoned(tuple(ref.shape), "float16")
    harness.conv3d(x, packed, None, (0, 1, 1, 0, 1, 1), causal_time=1, out=out, weights_packed=True)
    _check(out, ref, "float16")


@pytest.fixture(scope="module")
def launcher_lib(tmp_path_factory, harness):
    arch = "sm_90a" if torch.cuda.get_device_capability() == (9, 0) else "sm_90"
    path = harness.build_shared_library(
        tmp_path_factory.mktemp("plugin") / "liblatentrt.so", arch=arch
    )
    lib = ctypes.CDLL(str(path))
    vp, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    ip = ctypes.POINTER(ctypes.c_int)
    for suf in ("f32", "f16", "bf16"):
        gn = getattr(lib, f"latentrt_groupnorm_silu_{suf}")
        gn.argtypes = [vp, vp, vp, vp, i, i, ctypes.c_longlong, i, f, i, i, i, i, vp]
        gn.restype = i
        cv = getattr(lib, f"latentrt_conv3d_{suf}")
        cv.argtypes = [vp, vp, vp, vp] + [i] * 9 + [ip, ip, ip, i, i, vp, ctypes.c_longlong, vp]
        cv.restype = i
        pk = getattr(lib, f"latentrt_conv3d_pack_weights_{suf}")
        pk.argtypes = [vp, vp, i, i, i, vp]
        pk.restype = i
    lib.latentrt_conv3d_streamk_workspace_bytes.restype = ctypes.c_longlong
    lib.latentrt_conv3d_workspace_bytes.argtypes = [i] * 10 + [ip, ip, ip, i, i]
    lib.latentrt_conv3d_workspace_bytes.restype = ctypes.c_longlong
    return lib


@pytest.mark.parametrize(
    ("shape", "layout", "dtype", "forced"),
    [
        ((2, 320, 64, 64), "NCHW", "float16", (0, 0)),
        ((1, 16, 16, 640), "NHWC", "bfloat16", (0, 0)),
        ((2, 32, 32, 960), "NHWC", "bfloat16", (0, 0)),  # 30 channels: 4-byte vectors
        ((1, 32, 512, 512), "NCHW", "float32", (0, 0)),
        ((1, 512, 128, 128), "NCHW", "bfloat16", (0, 0)),  # clusters of 8: bulk copies in and out
        ((1, 128, 128, 512), "NHWC", "float16", (0, 0)),  # clusters of 8: TMA boxes in and out
        ((1, 128, 128, 512), "NHWC", "float32", (0, 0)),  # TMA boxes in
        ((1, 512, 512, 128), "NHWC", "bfloat16", (0, 0)),  # read twice, tiles of 4 groups
        ((1, 256, 256, 256), "NHWC", "float32", (0, 0)),  # read twice, tiles of 2 groups
        ((8, 64, 64, 320), "NHWC", "float16", (0, 0)),  # tiles of 4 groups in pairs
        ((8, 64, 64, 320), "NHWC", "bfloat16", (8, 4)),  # a TensorRT tactic: tiles of 8 groups
        ((1, 128, 128, 512), "NHWC", "float16", (1, 4)),  # clusters of 4: no TMA boxes
        ((2, 320, 64, 64), "NCHW", "float32", (0, 8)),  # the planner's tile, clusters of 8
    ],
)
def test_c_launcher_groupnorm_silu(launcher_lib, gen, shape, layout, dtype, forced):
    last = layout == "NHWC"
    c = shape[-1] if last else shape[1]
    spatial = (shape[1] * shape[2]) if last else shape[2] * shape[3]
    groups = 32 if c % 32 == 0 else 2
    x = _rand(shape, dtype, gen, 1.5, 0.3)
    gamma, beta = _rand((c,), dtype, gen), _rand((c,), dtype, gen)
    out = _poisoned(shape, dtype)
    stream = torch.cuda.current_stream().cuda_stream
    rc = getattr(launcher_lib, f"latentrt_groupnorm_silu_{_SUF[dtype]}")(
        x.data_ptr(),
        gamma.data_ptr(),
        beta.data_ptr(),
        out.data_ptr(),
        shape[0],
        c,
        spatial,
        groups,
        1e-5,
        1,
        int(last),
        *forced,  # tile, cluster (0: the planner's)
        stream,
    )
    assert rc == 0
    _check(out, _gn_ref(x, gamma, beta, groups, 1e-5, 1, last), dtype)


# 12 x 40 frames would take tiles of four boxes: on Hopper the TMA kernel's im2col loads.
IM2COL_LAUNCHER_CASE = ((2, 128, 3, 12, 40), 192, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1),
                        (1, 1, 1), 1)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "layout", "dtype", "ws_mode"),
    [
        (CONV_CASES[0], "NCDHW", "float16", "streamk"),
        (CONV_CASES[2], "NDHWC", "bfloat16", "streamk"),
        (CONV_CASES[2], "NDHWC", "float16", None),
        (CONV_CASES[3], "NCDHW", "float32", "full"),
        (CONV_CASES[3], "NDHWC", "float16", "full"),
        (CONV_CASES[6], "NDHWC", "float16", "streamk"),
        (CONV_CASES[1], "NDHWC", "float16", "streamk"),
        (SMALLC_CASES[1], "NCDHW", "bfloat16", None),
        (NARROW_CASES[2], "NDHWC", "float16", None),
        (CONV_CASES[0], "NCDHW", "bfloat16", "full"),
        (CONV_CASES[2], "NCDHW", "float16", "full"),
        (NARROW_CASES[2], "NCDHW", "bfloat16", "full"),
        (NARROW_CASES[4], "NDHWC", "float16", "streamk"),
        (NARROW_CASES[4], "NCDHW", "bfloat16", "full"),
        (NARROW_CASES[4], "NDHWC", "bfloat16", None),
        (IM2COL_LAUNCHER_CASE, "NDHWC", "float16", "streamk"),
        (IM2COL_LAUNCHER_CASE, "NDHWC", "bfloat16", None),
    ],
    # On Hopper (sm_90a library): 384 channels run the TMA kernel (with a workspace in clusters
    # of two with stream-K, without one CTA per tile), 96 the cp.async wgmma one. A "full"
    # workspace (latentrt_conv3d_workspace_bytes) also lets channels-first inputs run through
    # channels-last copies; a stream-K-sized one keeps them channels-first. The RGB output conv's
    # 544 boxes take the narrow kernel's stream-K where a workspace is given.
    ids=[
        "tc-ncdhw",
        "tma-streamk-or-tc-ndhwc",
        "tma-or-tc-ndhwc-no-workspace",
        "direct-ncdhw",
        "smallc-ndhwc",
        "wgmma-or-direct-ndhwc",
        "wgmma-or-tc-ndhwc-replicate",
        "smallc-ncdhw-dilated",
        "narrow-ndhwc-dilated",
        "ncdhw-via-wgmma-or-tc",
        "ncdhw-via-tma-or-tc",
        "ncdhw-via-narrow",
        "narrow-ndhwc-streamk",
        "ncdhw-via-narrow-streamk",
        "narrow-ndhwc-no-workspace",
        "tma-im2col-streamk-ndhwc",
        "tma-im2col-ndhwc-no-workspace",
    ],  # fmt: skip
)
def test_c_launcher_conv3d(launcher_lib, gen, case, layout, dtype, ws_mode):
    shape, cout, k, pads, strides, dil, causal = case
    last = layout == "NDHWC"
    x, w, b, ref = _conv_inputs(case, last, dtype, gen)
    stream = torch.cuda.current_stream().cuda_stream
    packed = torch.empty((cout, *k, shape[1]), device="cuda", dtype=DTYPES[dtype])
    suf = _SUF[dtype]
    rc = getattr(launcher_lib, f"latentrt_conv3d_pack_weights_{suf}")(
        w.data_ptr(), packed.data_ptr(), cout, shape[1], k[0] * k[1] * k[2], stream
    )
    assert rc == 0
    out = _poisoned(tuple(ref.shape), dtype)
    arr = ctypes.c_int * 6
    geometry = (*shape, cout, *k, arr(*pads), (ctypes.c_int * 3)(*strides))
    geometry += ((ctypes.c_int * 3)(*dil), causal)
    if ws_mode == "full":
        size = 4 if dtype == "float32" else 2
        ws_bytes = launcher_lib.latentrt_conv3d_workspace_bytes(size, *geometry, int(last))
        if HOPPER and size == 2 and not last:  # the layout change's copies on top of stream-K
            assert ws_bytes > launcher_lib.latentrt_conv3d_streamk_workspace_bytes()
    elif ws_mode == "streamk":
        ws_bytes = launcher_lib.latentrt_conv3d_streamk_workspace_bytes()
    else:
        ws_bytes = 0
    assert ws_bytes >= 0
    ws = torch.empty(ws_bytes, device="cuda", dtype=torch.uint8)
    for _ in range(2):  # the stream-K flags are left at zero for the next launch
        out.fill_(float("nan"))
        rc = getattr(launcher_lib, f"latentrt_conv3d_{suf}")(
            x.data_ptr(), packed.data_ptr(), b.data_ptr(), out.data_ptr(), *geometry, int(last),
            ws.data_ptr() if ws_bytes else None, ws_bytes, stream,
        )  # fmt: skip
        assert rc == 0
        _check(out, ref, dtype)


def test_c_launcher_rejects_inconsistent_causal_pads(launcher_lib):
    t = torch.zeros(1, device="cuda")
    three = (ctypes.c_int * 3)(1, 1, 1)
    rc = launcher_lib.latentrt_conv3d_f32(
        t.data_ptr(),
        t.data_ptr(),
        None,
        t.data_ptr(),
        1,
        4,
        4,
        4,
        4,
        4,
        3,
        3,
        3,
        (ctypes.c_int * 6)(1, 1, 1, 1, 1, 1),
        three,
        three,
        1,
        0,
        None,
        0,
        None,
    )
    assert rc != 0
