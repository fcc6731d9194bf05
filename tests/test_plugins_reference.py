"""numpy references of the plugin ops against PyTorch (F.group_norm + F.silu; F.pad + F.conv3d).

Also checks the harness imports without CuPy and plans launches the way the kernels expect.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentrt.errors import BackendError, InputError
from latentrt.plugins import harness
from latentrt.plugins.reference import (
    conv3d_output_shape,
    conv3d_ref,
    groupnorm_silu_ref,
    resolve_conv3d_pads,
)

RTOL = 1e-5


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(out.astype(np.float64) - ref)) / np.max(np.abs(ref)))


def _torch_gn(x, gamma, beta, groups, eps, activation):
    y = F.group_norm(
        torch.from_numpy(x).double(),
        groups,
        torch.from_numpy(gamma).double(),
        torch.from_numpy(beta).double(),
        eps,
    )
    return (F.silu(y) if activation else y).numpy()


@pytest.mark.parametrize(
    ("shape", "groups", "eps", "activation", "offset"),
    [
        ((2, 32, 8, 8), 8, 1e-5, 1, 0.0),
        ((1, 16, 3, 4, 5), 4, 1e-6, 1, 0.0),
        ((2, 12, 7, 5), 3, 1e-5, 0, 0.0),
        ((1, 8, 6, 6), 1, 1e-5, 1, 40.0),  # large mean: variance must not cancel
    ],
)
def test_groupnorm_silu_ref_matches_torch(shape, groups, eps, activation, offset):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(np.float32)
    gamma = rng.standard_normal(shape[1]).astype(np.float32)
    beta = rng.standard_normal(shape[1]).astype(np.float32)
    ref = _torch_gn(x, gamma, beta, groups, eps, activation)
    out = groupnorm_silu_ref(x, gamma, beta, groups, eps, activation, "NCHW")
    assert out.dtype == np.float32
    assert _rel(out, ref) <= RTOL
    # Channels-last input gives the channels-last view of the same result.
    out_last = groupnorm_silu_ref(
        np.moveaxis(x, 1, -1), gamma, beta, groups, eps, activation, "NHWC"
    )
    assert _rel(np.moveaxis(out_last, -1, 1), ref) <= RTOL


def test_groupnorm_silu_ref_rejects_bad_groups():
    x = np.zeros((1, 10, 2, 2), np.float32)
    with pytest.raises(InputError, match="groups"):
        groupnorm_silu_ref(x, np.ones(10, np.float32), np.zeros(10, np.float32), 4)


def _torch_conv(x, w, b, pads, strides, dilations, causal):
    xt, wt = torch.from_numpy(x).double(), torch.from_numpy(w).double()
    bt = None if b is None else torch.from_numpy(b).double()
    kt = w.shape[2]
    d0, h0, w0, d1, h1, w1 = pads
    if causal:
        d0, d1 = dilations[0] * (kt - 1), 0
    if causal == 2:
        xt = F.pad(xt, (0, 0, 0, 0, d0, 0), mode="replicate")
        d0 = 0
    xt = F.pad(xt, (w0, w1, h0, h1, d0, d1))
    return F.conv3d(xt, wt, bt, stride=strides, dilation=dilations).numpy()


CONV_CASES = [
    # (x shape, Cout, kernel, pads, strides, dilations, causal, bias)
    ((1, 4, 5, 6, 7), 6, (3, 3, 3), (0, 0, 0, 0, 0, 0), (1, 1, 1), (1, 1, 1), 0, True),
    ((2, 3, 6, 7, 5), 5, (3, 3, 3), (1, 1, 1, 1, 1, 1), (1, 1, 1), (1, 1, 1), 0, False),
    ((1, 4, 6, 8, 8), 4, (3, 3, 3), (0, 1, 2, 1, 0, 1), (1, 2, 1), (1, 1, 1), 0, True),
    ((1, 5, 7, 6, 6), 3, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 1, True),
    ((1, 5, 7, 6, 6), 3, (3, 3, 3), (0, 1, 1, 0, 1, 1), (1, 1, 1), (1, 1, 1), 2, True),
    ((1, 3, 9, 9, 8), 4, (3, 3, 2), (4, 2, 0, 0, 1, 1), (2, 2, 1), (2, 1, 2), 1, True),
    ((1, 3, 9, 9, 8), 4, (3, 1, 3), (0, 0, 2, 0, 0, 2), (2, 1, 2), (2, 1, 2), 2, False),
]


@pytest.mark.parametrize(
    ("shape", "cout", "k", "pads", "strides", "dil", "causal", "bias"), CONV_CASES
)
def test_conv3d_ref_matches_torch(shape, cout, k, pads, strides, dil, causal, bias):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((cout, shape[1], *k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    ref = _torch_conv(x, w, b, pads, strides, dil, causal)
    out = conv3d_ref(x, w, b, pads, strides, dil, causal, "NCDHW")
    assert out.shape == ref.shape
    assert out.shape[2:] == conv3d_output_shape(shape[2:], k, pads, strides, dil, causal)
    assert _rel(out, ref) <= RTOL
    out_last = conv3d_ref(np.moveaxis(x, 1, -1), w, b, pads, strides, dil, causal, "NDHWC")
    assert _rel(np.moveaxis(out_last, -1, 1), ref) <= RTOL


def test_replicate_differs_from_zero_padding():
    # Guards the oracle itself: the two causal modes must not coincide on non-zero input.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 4, 4, 4)).astype(np.float32) + 1.0
    w = rng.standard_normal((2, 2, 3, 1, 1)).astype(np.float32)
    zero = conv3d_ref(x, w, causal_time=1)
    rep = conv3d_ref(x, w, causal_time=2)
    assert np.abs(zero[:, :, :2] - rep[:, :, :2]).max() > 1e-2
    np.testing.assert_array_equal(zero[:, :, 2:], rep[:, :, 2:])


def test_causal_pads_must_agree():
    assert resolve_conv3d_pads((3, 3, 3), (0, 1, 1, 0, 1, 1), (2, 1, 1), 1)[:4:3] == (4, 0)
    with pytest.raises(InputError, match="causal_time"):
        resolve_conv3d_pads((3, 3, 3), (1, 1, 1, 1, 1, 1), (1, 1, 1), 1)
    with pytest.raises(InputError, match="causal_time"):
        resolve_conv3d_pads((3, 3, 3), (0, 0, 0, 0, 0, 0), (1, 1, 1), 3)


def test_kernel_source_inlines_common_header():
    for name in ("groupnorm_silu.cu", "conv3d.cu"):
        src = harness.kernel_source(name)
        assert '#include "common.cuh"' not in src
        assert "struct alignas(V * sizeof(T)) Pack" in src


def test_conv3d_plan_picks_wgmma_only_where_it_applies():
    sms = 132
    # Video-VAE shapes, channels-last fp16 on Hopper: the wgmma kernel, 96-wide tiles for 96
    # channels, a grid of 128-position tiles.
    p = harness.conv3d_plan("float16", True, 1, 96, 96, 27, 9 * 64 * 64, True, sms, wgmma=True)
    assert p.kernel == "latentrt_conv3d_wgmma_ndhwc_f16_n96"
    assert p.grid == (288, 1, 1) and p.smem == harness.wgmma_smem_bytes(96)
    p = harness.conv3d_plan("bfloat16", True, 2, 40, 24, 9, 1000, True, sms, wgmma=True)
    assert p.kernel.startswith("latentrt_conv3d_wgmma_ndhwc_bf16_n") and p.grid[2] == 2
    # 128-wide tiles that leave at most one CTA per SM: the 6-stage pipeline (120 CTAs here).
    p = harness.conv3d_plan("float16", True, 1, 384, 384, 27, 5 * 32 * 32, True, sms, True)
    assert p.kernel == "latentrt_conv3d_wgmma_ndhwc_f16_n128_s6" and p.grid == (40, 3, 1)
    assert p.smem == harness.wgmma_smem_bytes(128, 6) <= 227 * 1024
    p = harness.conv3d_plan("float16", True, 1, 512, 512, 27, 5 * 32 * 32, True, sms, True)
    assert p.kernel == "latentrt_conv3d_wgmma_ndhwc_f16_n128"  # 160 CTAs: two per SM
    # Not for fp32, channels-first, Cin % 8 != 0 (RGB input), unaligned pointers or pre-Hopper.
    for args in (
        ("float32", True, 1, 96, 96),
        ("float16", False, 1, 96, 96),
        ("float16", True, 1, 3, 128),
    ):
        p = harness.conv3d_plan(*args, 27, 4096, True, sms, wgmma=True)
        assert "wgmma" not in p.kernel
    assert (
        "wgmma"
        not in harness.conv3d_plan("float16", True, 1, 96, 96, 27, 4096, False, sms, True).kernel
    )
    p = harness.conv3d_plan("float16", True, 1, 96, 96, 27, 4096, True, sms)
    assert p.kernel == "latentrt_conv3d_igemm_ndhwc_f16_m64"
    # Two CTAs share an SM's 228 KB (1 KB of each reserved by the driver).
    assert all(2 * (harness.wgmma_smem_bytes(bn) + 1024) <= 228 * 1024 for bn in (64, 96, 128))
    with pytest.raises(InputError, match="tile_n"):
        harness.conv3d_plan("float16", True, 1, 96, 96, 27, 4096, True, sms, True, tile_n=32)
    with pytest.raises(InputError, match="stages"):
        harness.conv3d_plan("float16", True, 1, 96, 96, 27, 4096, True, sms, True, 96, 6)


def test_tma_plan_boxes_tiles_and_streamk():
    # Frames are covered by 128-position boxes with the fewest idle positions, wider on a tie.
    assert harness.tma_box(32, 32) == (5, 8, 1)  # 4 x 32 boxes
    assert harness.tma_box(128, 128) == (7, 128, 1)
    assert harness.tma_box(90, 160) == (5, 23, 5)  # 4 x 32: 92 x 160 covered, not 96 x 256
    # A tile may be 2 or 4 smaller boxes where those leave fewer positions idle: 60 x 104 (Wan's
    # 480p latent) in 4 x 8 boxes, four to a tile, none idle (16 x 8 boxes cover 64 x 104).
    assert harness.tma_boxes(60, 104) == (2, 3, 15, 13)
    assert harness.tma_boxes(90, 160) == (1, 5, 45, 5)  # 2 x 32 boxes, two to a tile
    assert harness.tma_boxes(120, 208) == (0, 4, 15, 13)  # one 8 x 16 box already fits
    assert harness.tma_boxes(32, 32) == (0, 5, 8, 1)
    assert harness.tma_supported("float16", True, 384, 384, (1, 1, 1), (1, 1, 1))
    assert not harness.tma_supported("float16", True, 96, 96, (1, 1, 1), (1, 1, 1))  # Cin % 64
    assert not harness.tma_supported("float16", False, 384, 384, (1, 1, 1), (1, 1, 1))
    assert not harness.tma_supported("float16", True, 128, 128, (2, 2, 2), (1, 1, 1))
    assert not harness.tma_supported("float32", True, 128, 128, (1, 1, 1), (1, 1, 1))
    assert harness.tma_box(32, 32, 256) == (5, 4, 1)  # 8 x 32 boxes
    assert harness.tma_box(128, 128, 256) == (7, 64, 1)
    # Variant: fewest idle output channels, then n256, n192, m256; 128 x 128 for a 128-channel
    # grid under one wave.
    assert harness.tma_tiles_for(512, 1000, 132) == (128, 256, 4)
    assert harness.tma_tiles_for(384, 1000, 132) == (128, 192, 5)
    assert harness.tma_tiles_for(128, 1000, 132) == (256, 128, 4)
    assert harness.tma_tiles_for(320, 1000, 132) == (128, 192, 5)  # 384 computed, as with n128
    assert harness.tma_tiles_for(384, 40, 132) == (128, 192, 5)  # left to clusters + stream-K
    assert harness.tma_tiles_for(128, 40, 132) == (128, 128, 3)  # 40 tiles: one wave
    assert harness.tma_tiles_for(128, 300, 132) == (256, 128, 4)  # 150 m256 tiles
    for bm, bn, st in harness.TMA_VARIANTS:
        assert harness.tma_smem_bytes(bm, bn, st) <= 227 * 1024  # the opt-in limit of one CTA
    assert 2 * harness.tma_smem_bytes(128, 128, 3) <= 228 * 1024  # two CTAs per SM
    # n192/n256 tiles: clusters of two, stream-K over all 144 units (12 past two waves of 66).
    p = harness.conv3d_tma_plan("float16", 1, 256, 256, (3, 3, 3), (9, 64, 64), 132)
    assert p.kernel == "latentrt_conv3d_tma_ndhwc_f16_m128_n256_s4_c2"
    assert (p.tiles_m, p.nk, p.dp_tiles, p.sk_tiles, p.sk_ctas) == (9 * 32, 108, 0, 144, 66)
    assert p.sk_ctas * p.sk_iters >= 144 * 108 > (p.sk_ctas - 1) * p.sk_iters
    assert p.workspace_elems == 2 * 66 * (128 * 256 + 1)  # a partial tile and a flag per CTA
    # A last wave at least 90% full (62 of 66): one cluster per unit (single 16 x 8 boxes here).
    p = harness.conv3d_tma_plan("float16", 1, 384, 384, (3, 3, 3), (5, 64, 104), 132)
    assert p.kernel.endswith("_m128_n192_s5_c2") and (p.dp_tiles, p.sk_tiles) == (260, 0)
    # 60 x 104 frames would take tiles of four 4 x 8 boxes: im2col loads instead, tiles of 128
    # consecutive positions (31200 in 244 tiles), 2 x 122 units of two tiles, stream-K over all.
    p = harness.conv3d_tma_plan("float16", 1, 384, 384, (3, 3, 3), (5, 60, 104), 132)
    assert p.im2col and (p.sub_log2, p.tiles_m) == (0, 244)
    assert (p.cluster, p.dp_tiles, p.sk_tiles) == (2, 0, 244)
    # In boxes: 975 boxes of 4 x 8 in 244 tiles (the last one box short).
    p = harness.conv3d_tma_plan("float16", 1, 384, 384, (3, 3, 3), (5, 60, 104), 132, im2col=False)
    assert (p.sub_log2, p.bw_log2, p.tiles_h, p.tiles_w, p.tiles_m) == (2, 3, 15, 13, 244)
    assert not p.im2col and (p.cluster, p.dp_tiles, p.sk_tiles) == (2, 0, 244)
    # 256-position tiles there: eight 4 x 8 boxes each (one 32 x 8 box would leave 6.7% idle).
    p = harness.conv3d_tma_plan(
        "float16", 1, 384, 384, (3, 3, 3), (5, 60, 104), 132, 128, 4, 256, 0, cluster=1,
        im2col=False,
    )  # fmt: skip
    assert (p.sub_log2, p.bw_log2, p.tiles_h, p.tiles_w, p.tiles_m) == (3, 3, 15, 13, 122)
    # Frames single boxes tile exactly stay in boxes.
    assert not harness.conv3d_tma_plan("float16", 1, 256, 256, (3, 3, 3), (9, 64, 64), 132).im2col
    assert harness.tma_im2col_supported((3, 3, 3), (2, 1, 1, 0, 1, 1), 1)
    assert not harness.tma_im2col_supported((3, 3, 3), (2, 1, 1, 0, 1, 1), 2)  # replicate
    assert not harness.tma_im2col_supported((3, 3, 3), (16, 1, 1, 0, 1, 1), 0)
    assert not harness.tma_im2col_supported((17, 1, 1), (0, 0, 0, 0, 0, 0), 0)
    # Without stream-K (the C launcher): one CTA per tile.
    p = harness.conv3d_tma_plan("float16", 1, 256, 256, (3, 3, 3), (9, 64, 64), 132, streamk=0)
    assert p.kernel.endswith("_m128_n256_s4") and (p.cluster, p.dp_tiles) == (1, 288)
    # 128-channel tiles: one CTA per tile; stream-K only for a tail under a quarter of the SMs
    # after full waves (here 576 = 4 x 132 + 48: none).
    p = harness.conv3d_tma_plan("float16", 1, 128, 128, (3, 3, 3), (9, 128, 128), 132)
    assert p.kernel.endswith("_m256_n128_s4") and (p.dp_tiles, p.sk_tiles) == (576, 0)
    p = harness.conv3d_tma_plan("bfloat16", 1, 128, 128, (3, 3, 3), (9, 64, 64), 132, 128, 3)
    assert p.kernel == "latentrt_conv3d_tma_ndhwc_bf16_m128_n128_s3"
    assert (p.dp_tiles, p.sk_tiles) == (264, 24)  # 288 = 2 x 132 + 24
    # Forced: tile, pipeline, stream-K share.
    p = harness.conv3d_tma_plan("float16", 1, 64, 64, (1, 3, 3), (4, 9, 33), 132, 128, 3, 128, 5)
    assert p.kernel.endswith("_m128_n128_s3") and (p.dp_tiles, p.sk_tiles) == (p.tiles_m - 5, 5)
    assert p.nk == 9 and p.sk_ctas == 45 and p.sk_iters == 1
    with pytest.raises(InputError):
        harness.conv3d_tma_plan("float16", 1, 64, 64, (3, 3, 3), (4, 9, 33), 132, 256, 3)
    # Clusters of two: position tiles rounded up to pairs, units of two tiles, 66 per wave.
    p = harness.conv3d_tma_plan(
        "float16", 1, 64, 64, (1, 3, 3), (3, 8, 16), 132, 128, 3, 128, 0, cluster=2
    )
    assert p.kernel.endswith("_m128_n128_s3_c2") and (p.tiles_m, p.dp_tiles) == (4, 2)
    p = harness.conv3d_tma_plan("float16", 1, 128, 128, (3, 3, 3), (9, 64, 64), 132, cluster=2)
    assert p.kernel.endswith("_m256_n128_s4_c2") and (p.tiles_m, p.sk_tiles) == (144, 72)
    # Stream-K never uses more clusters than are resident at once.
    p = harness.conv3d_tma_plan(
        "float16", 1, 256, 256, (3, 3, 3), (9, 64, 64), 132, streamk=144, cluster=2, resident=60
    )
    assert p.sk_ctas == 60 and p.sk_ctas * p.sk_iters >= 144 * p.nk
    with pytest.raises(InputError, match="cluster"):
        harness.conv3d_tma_plan("float16", 1, 64, 64, (3, 3, 3), (4, 9, 33), 132, cluster=4)
    # Clusters of four (n192, n256): position tiles rounded up to fours, 33 units per wave.
    p = harness.conv3d_tma_plan("float16", 1, 384, 384, (3, 3, 3), (5, 60, 104), 132, cluster=4)
    assert p.kernel == "latentrt_conv3d_tma_ndhwc_f16_m128_n192_s5_c4"
    assert (p.tiles_m, p.dp_tiles + p.sk_tiles) == (244, 122)
    with pytest.raises(InputError, match="cluster"):
        harness.conv3d_tma_plan("float16", 1, 384, 384, (3, 3, 3), (5, 60, 104), 132, cluster=3)


def test_groupnorm_plan_unet_and_fallback():
    # H100: 132 SMs, 227 KB opt-in shared memory per block.
    sms, optin = 132, 232448
    # A UNet group (10 x 64 x 64 fp16, 5120 vectors), 64 groups: clusters of 2, slice cached
    # after gamma/beta.
    p = harness.groupnorm_plan(2, 320, 64 * 64, 32, False, 2, True, sms, optin)
    assert (p.cluster, p.threads, p.vec, p.cached) == (2, 512, 8, True)
    assert p.smem == 2 * 10 * 4 + 10 * 4096 * 2 // 2
    # 256 such groups fill the GPU with one block each.
    assert harness.groupnorm_plan(8, 320, 4096, 32, False, 2, True, sms, optin).cluster == 1
    # A small group (40 x 16 x 16, 1280 vectors): one block.
    assert harness.groupnorm_plan(2, 1280, 256, 32, False, 2, True, sms, optin).cluster == 1
    # A VAE group (16 x 128 x 128 fp32, 65536 vectors): clusters of 8, whose 128 KB slices fit
    # one to an SM, where 14 of the 32 clusters are resident (three waves). Instead three blocks
    # share an SM (one wave), each caching the head of its slice and reading the rest twice.
    p = harness.groupnorm_plan(1, 512, 128 * 128, 32, False, 4, True, sms, optin)
    assert (p.cluster, p.threads, p.cached) == (8, 256, 1)  # fp32: the threads' loads fill it
    assert p.cap == ((optin + 1024) // 3 - 1024 - 8192 - 2 * 16 * 4) // 16 < 8192
    # In fp16 its 64 KB slices fit three to an SM: 256-thread blocks, bulk copies in and out.
    p = harness.groupnorm_plan(1, 512, 128 * 128, 32, False, 2, True, sms, optin)
    assert (p.threads, p.cached) == (256, 3)
    # The same in fp16 at 1 x 256 x 256 x 256 (1 MB groups).
    p = harness.groupnorm_plan(1, 256, 256 * 256, 32, False, 2, True, sms, optin)
    assert (p.cluster, p.threads, p.cached) == (8, 256, 1)
    assert p.cap == ((optin + 1024) // 3 - 1024 - 8192 - 64) // 16 and p.smem == 64 + p.cap * 16
    # A group of 16 x 512 x 512 fp32 (16 MB): less than half of a slice would fit, so all of it
    # is read twice.
    p = harness.groupnorm_plan(1, 32, 512 * 512, 2, False, 4, True, sms, optin)
    assert (p.cluster, p.threads, p.cached, p.cap) == (8, 512, 0, 0)
    # Forced: a partial cache sized for four blocks an SM; tiles cache whole rows.
    p = harness.groupnorm_plan(1, 512, 128 * 128, 32, False, 2, True, sms, optin, per_sm=4)
    assert (p.cached, p.cap) == (1, ((optin + 1024) // 4 - 1024 - 8192 - 128) // 16)
    p = harness.groupnorm_plan(2, 128, 128 * 128, 32, True, 2, True, sms, optin, per_sm=4)
    assert (p.tile, p.vec, p.cluster) == (8, 8, 8)  # rows of 8 x 4 channels = 4 vectors
    assert p.cap % 4 == 0 and p.cap < 128 * 128 // 8 * 4 and p.threads == 256
    assert (
        harness.groupnorm_plan(1, 512, 128 * 128, 32, False, 2, True, sms, optin, cache=0).cap == 0
    )
    with pytest.raises(InputError, match="per_sm"):
        harness.groupnorm_plan(2, 320, 4096, 32, False, 2, True, sms, optin, per_sm=5)
    # Channels-last with 10 channels per group: 16-byte vectors that straddle groups, in tiles of
    # 4 groups (80-byte rows) whose 5 vectors a row 510 threads cover 102 times; each thread's
    # second statistics (for the group its vector ends in) take 4 KB after gamma and beta.
    p = harness.groupnorm_plan(2, 320, 4096, 32, True, 2, True, sms, optin)
    assert (p.vec, p.tile, p.threads, p.cluster, p.cached) == (8, 4, 510, 8, True)
    assert p.smem == 2 * 40 * 4 + 2 * 512 * 4 + 4096 // 8 * 40 * 2
    # Unaligned: scalars, tiles by the sector rule (no straddling).
    p = harness.groupnorm_plan(2, 320, 4096, 32, True, 2, False, sms, optin)
    assert (p.vec, p.tile, p.smem) == (1, 4, 2 * 40 * 4 + 4096 // 8 * 40 * 2)
    # 20 and 60 fp16 channels straddle too (rows of 80 or 240 bytes), where the clusters stay as
    # large as one group's (or at most two blocks); at 2 x 640 x 32 x 32 they would grow from 2
    # to 4 blocks, at 2 x 960 x 64 x 64 (tiles of 4) from 4 to 8. 10 fp32 channels (40-byte
    # runs) take 128-byte rows or more in clusters of 8 wherever they grow, where those blocks
    # hold 512 rows or more; 30 (120 bytes) do not.
    for c, spatial, itemsize, vec, tile, cs in [
        (640, 4096, 2, 8, 2, 4),
        (1920, 1024, 2, 8, 2, 4),
        (320, 4096, 4, 4, 4, 8),
        (320, 128 * 128, 4, 4, 4, 8),  # one group in clusters of 4 before
        (320, 32 * 32, 4, 2, 1, 2),  # blocks of 8 would hold 128 rows: the rule does not apply
        (960, 4096, 4, 2, 1, 4),
        (640, 1024, 2, 2, 1, 2),
        (960, 4096, 2, 2, 1, 4),
    ]:
        p = harness.groupnorm_plan(2, c, spatial, 32, True, itemsize, True, sms, optin)
        assert (p.vec, p.tile, p.cluster) == (vec, tile, cs), (c, spatial, itemsize)
    p = harness.groupnorm_plan(8, 320, 4096, 32, True, 4, True, sms, optin)
    assert (p.vec, p.tile, p.cluster) == (4, 4, 8)
    p = harness.groupnorm_plan(8, 320, 4096, 32, True, 4, True, sms, optin, tile=2)
    assert (p.vec, p.tile, p.cluster) == (4, 2, 8)  # forced tiles of fp32 straddlers alike
    # Tiles of 128 KB slices and more split to two blocks an SM only where all their clusters
    # stay resident: 64 tiles of 4 groups make 59 clusters of 4 at two an SM, so pairs.
    p = harness.groupnorm_plan(8, 320, 4096, 32, True, 2, True, sms, optin)
    assert (p.vec, p.tile, p.cluster, p.cached) == (8, 4, 2, 1)
    # Tiles double only while at least sms / 16 of them remain (8 of 4 groups at batch 1, not 4 of
    # 8, whose clusters would leave most SMs idle), and to 64-byte rows where one group's slice is
    # not cached whole even in a cluster of 8 (fp32 groups of 8 channels: 32-byte runs).
    for n, c, spatial, itemsize, tile, vec in [
        (1, 128, 512 * 512, 2, 4, 8),
        (2, 128, 512 * 512, 2, 8, 8),
        (1, 256, 256 * 256, 4, 2, 4),
        (2, 256, 32 * 32, 4, 1, 4),
    ]:
        p = harness.groupnorm_plan(n, c, spatial, 32, True, itemsize, True, sms, optin)
        assert (p.tile, p.vec) == (tile, vec), (n, c, spatial, itemsize)
    # 3 bf16 channels a group (a 16-byte vector would span three groups): scalars in tiles of 16
    # groups (96-byte rows), 480 threads.
    p = harness.groupnorm_plan(1, 96, 9 * 33 * 33, 32, True, 2, True, sms, optin)
    assert (p.vec, p.tile, p.threads) == (1, 16, 480)
    # Runs of a sector (32 bytes) and more stay one group per cluster; in clusters of 8 whose
    # slices fit, TMA boxes of 256 positions move them (in and out for 16-bit types, in for fp32)
    # and the cache starts at a 128-byte boundary.
    p = harness.groupnorm_plan(1, 512, 128 * 128, 32, True, 2, True, sms, optin)
    assert (p.tile, p.cluster, p.cached, p.box) == (1, 8, 3, 256)
    assert p.smem == 2 * 16 * 4 + 4096 * 16 + 128
    p = harness.groupnorm_plan(1, 512, 128 * 128, 32, True, 4, True, sms, optin)
    assert (p.cluster, p.cached, p.box) == (8, 2, 256)
    assert harness.groupnorm_plan(2, 512, 64 * 64, 32, True, 2, True, sms, optin).box == 0  # cs2
    # Clusters of 4 caching a slice of 16-byte vectors become 8 where a block's slice stays 16 KB
    # or more and TMA boxes fit it; the forced cluster size still wins.
    for n, c, spatial, itemsize, cached, box in [
        (1, 512, 64 * 64, 2, 3, 256),
        (2, 1280, 64 * 64, 4, 2, 256),
        (1, 2560, 32 * 32, 2, 3, 128),
    ]:
        p = harness.groupnorm_plan(n, c, spatial, 32, True, itemsize, True, sms, optin)
        assert (p.tile, p.cluster, p.cached, p.box) == (1, 8, cached, box), (n, c, spatial)
        p = harness.groupnorm_plan(n, c, spatial, 32, True, itemsize, True, sms, optin, cluster=4)
        assert (p.cluster, p.cached, p.box) == (4, 1, 0)
    p = harness.groupnorm_plan(2, 1280, 32 * 32, 32, True, 2, True, sms, optin)  # clusters of 2
    assert (p.cluster, p.box) == (2, 0)
    p = harness.groupnorm_plan(1, 512, 60 * 68, 32, True, 2, True, sms, optin)  # 510 a block
    assert (p.cluster, p.box) == (4, 0)
    assert harness.groupnorm_plan(1, 512, 128 * 128, 32, True, 2, False, sms, optin).box == 0
    assert harness.groupnorm_tma_box(1, 512, 24 * 40, 32, 2, 4) == 16  # 240 positions a block
    assert harness.groupnorm_tma_box(1, 512, 9 * 11, 32, 2, 1) == 0  # 99: boxes of 1
    assert harness.groupnorm_tma_box(1, 320, 4096, 32, 2, 8) == 0  # 20-byte runs
    with pytest.raises(InputError, match="tile"):
        harness.groupnorm_plan(2, 320, 4096, 32, True, 2, True, sms, optin, threads=256)
    with pytest.raises(InputError, match="threads"):
        harness.groupnorm_plan(2, 320, 4096, 32, False, 2, True, sms, optin, threads=1024)
    # Forced tiles (benchmark sweeps): 16-byte vectors where whole ones fill a row, else the
    # group's own width; powers of two that divide the groups, channels-last only.
    p = harness.groupnorm_plan(1, 512, 128 * 128, 32, True, 2, True, sms, optin, tile=2)
    assert (p.tile, p.vec, p.cluster, p.threads, p.cached) == (2, 8, 8, 512, 1)
    assert p.cap == 128 * 128 // 8 * 4  # a slice: 2048 rows of 4 vectors
    p = harness.groupnorm_plan(2, 320, 4096, 32, True, 2, True, sms, optin, tile=2)
    assert (p.tile, p.vec) == (2, 2)  # 20 channels a row: no whole 16-byte vectors
    p = harness.groupnorm_plan(2, 320, 4096, 32, True, 2, True, sms, optin, tile=1)
    assert (p.tile, p.vec) == (1, 2)
    p = harness.groupnorm_plan(2, 320, 4096, 32, True, 2, False, sms, optin, tile=8)
    assert (p.tile, p.vec) == (8, 1)
    for tile, last in [(3, True), (64, True), (0, True), (2, False)]:
        with pytest.raises(InputError, match="tile"):
            harness.groupnorm_plan(2, 320, 4096, 32, last, 2, True, sms, optin, tile=tile)
    # The cache filled by bulk copies: channels-first 16-byte vectors only, where the slice fits.
    assert harness.groupnorm_plan(2, 320, 4096, 32, False, 2, True, sms, optin, cache=3).cached == 3
    for args, cache in [((True, 2, True), 2), ((False, 2, False), 2), ((False, 4, True), 3)]:
        shape = (1, 32, 512 * 512, 2) if args[1] == 4 else (2, 320, 4096, 32)
        with pytest.raises(InputError, match="cache"):  # bulk copies of a partial cache
            harness.groupnorm_plan(*shape, *args, sms, optin, cache=cache)


def test_conv3d_plan_picks_tensor_cores_for_wide_half_convs():
    p = harness.conv3d_plan("float16", False, 1, 384, 384, 27, 5 * 32 * 32, True, 132)
    assert p.kernel.startswith("latentrt_conv3d_igemm_ncdhw_f16")
    assert harness.conv3d_plan("float32", False, 1, 384, 384, 27, 5120, True, 132).kernel == (
        "latentrt_conv3d_direct_ncdhw_f32"
    )
    p = harness.conv3d_plan("bfloat16", True, 1, 3, 128, 27, 17 * 4096, True, 132)
    assert p.kernel == "latentrt_conv3d_direct_ndhwc_bf16" and p.tail[1] == 0  # no vectors


def test_narrow_plan_takes_few_output_channels_in_16_bits():
    plan = harness.conv3d_narrow_plan
    one = (1, 1, 1)
    # A VAE decoder's RGB output conv: 128 channels in chunks of 32, a 2 x 64 box per CTA (4 x 66
    # halo pixels over 3 frames), 17 x 32 boxes.
    p = plan("float16", True, 1, 128, 3, (3, 3, 3), (17, 64, 64), one, one)
    assert p.kernel == "latentrt_conv3d_narrow_ndhwc_f16" and p.grid == (544, 1, 1)
    assert p.tail == (1, 6, 32, 1, 32) and p.smem == harness.narrow_smem_bytes(27, 32, 792)
    assert 2 * (p.smem + 1024) <= 228 * 1024
    assert plan("bfloat16", True, 1, 24, 5, (2, 3, 3), (6, 11, 9), one, (2, 2, 2)).tail[4] == 8
    # Chunks of 8 channels over 27 taps are not whole k16 steps: none.
    assert plan("bfloat16", True, 1, 24, 5, (3, 3, 3), (6, 11, 9), one, (2, 2, 2)) is None
    # Wide halos take narrower chunks, then none; not for fp32, channels-first, Cin % 8 or Cout > 16.
    assert plan("float16", True, 1, 128, 3, (2, 3, 3), (5, 8, 512), (1, 2, 2), one).tail[4] == 16
    assert plan("float16", True, 1, 128, 3, (3, 3, 3), (5, 8, 512), (1, 2, 2), one) is None
    assert plan("float16", True, 1, 128, 3, (3, 3, 3), (5, 8, 512), (1, 8, 8), one) is None
    for args in (
        ("float32", True, 1, 128, 3),
        ("float16", False, 1, 128, 3),
        ("float16", True, 1, 12, 3),
        ("float16", True, 1, 128, 24),
    ):
        assert plan(*args, (3, 3, 3), (17, 64, 64), one, one) is None


def test_smallc_plan_takes_small_reductions_in_16_bits():
    plan = harness.conv3d_smallc_plan
    # The RGB input conv: 64 x 64 frames in 2 x 64 boxes, 17 frames = 544 tiles over two CTAs
    # per SM; K = 27 taps x 3 channels, padded to 96; the halo is 3 frames x 4 rows x 66 columns.
    p = plan("float16", True, 1, 3, 128, (3, 3, 3), (17, 64, 64), (1, 1, 1), (1, 1, 1), 132)
    assert p.kernel == "latentrt_conv3d_smallc_ndhwc_f16_n128"
    assert p.grid == (264, 1, 1) and p.block == 256 and p.tail == (1, 6, 32, 1, 96)
    assert p.smem == harness.smallc_smem_bytes(128, 96, 3 * 4 * 66 * 3)
    assert 2 * (p.smem + 1024) <= 228 * 1024  # two CTAs per SM
    p = plan("bfloat16", False, 2, 4, 36, (3, 3, 3), (5, 7, 10), (1, 2, 2), (1, 1, 1), 132)
    assert p.kernel == "latentrt_conv3d_smallc_ncdhw_bf16_n64" and p.grid == (10, 1, 1)
    assert p.tail == (2, 4, 1, 1, 112)  # 8 x 16 boxes; K 108 padded to 112
    p = plan("float16", True, 1, 3, 200, (3, 3, 3), (9, 64, 64), (1, 1, 1), (1, 1, 1), 132)
    assert p.grid == (132, 2, 1)  # two channel tiles share the SMs
    # Not for fp32, reductions past 256 (16 channels x 27 taps), halos past the shared memory
    # (stride 8 over 128-wide boxes) or a smaller shared-memory limit.
    assert (
        plan("float32", True, 1, 3, 128, (3, 3, 3), (17, 64, 64), (1, 1, 1), (1, 1, 1), 132) is None
    )
    assert (
        plan("float16", True, 1, 16, 128, (3, 3, 3), (9, 64, 64), (1, 1, 1), (1, 1, 1), 132) is None
    )
    assert (
        plan("float16", True, 1, 3, 128, (3, 3, 3), (5, 8, 512), (1, 8, 8), (1, 1, 1), 132) is None
    )
    assert harness.smallc_smem_bytes(128, 96, 3 * 3 * (127 * 8 + 3) * 3) > harness.SMALLC_MAX_SMEM
    args = ("float16", True, 1, 3, 128, (3, 3, 3), (17, 64, 64), (1, 1, 1), (1, 1, 1), 132)
    assert plan(*args, smem_limit=48 * 1024) is None


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_harness_without_cupy_raises_backend_error():
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(BackendError, match="CuPy"):
        harness.groupnorm_silu(x.numpy().view(np.float32), None, None, 2)


def test_fast_divisor_divides_every_32_bit_dividend_exactly():
    # The kernels' per-vector index division (multiply-high, add, shift) against numpy's integer
    # division, for the divisors launches use (spatial sizes, vectors a position) and the
    # extremes, at dividends near multiples of d and at the top of the 32-bit range.
    rng = np.random.default_rng(0)
    ds = [1, 2, 3, 5, 7, 20, 40, 160, 256, 1023, 1024, 4096, 9 * 33 * 33, 64 * 104 * 9]
    ds += [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, *rng.integers(1, 2**32, 40).tolist()]
    for d in ds:
        m, s = harness.fast_divisor(d)
        assert 0 <= m < 2**32 and 0 <= s <= 32
        k = rng.integers(0, 2**32 // d + 1, 4000, dtype=np.uint64)
        n = np.concatenate(
            [k * d, k * d - 1, k * d + 1, rng.integers(0, 2**32, 4000, dtype=np.uint64)]
        )
        n = np.concatenate([n, np.array([0, 2**32 - 1, 2**32 - 2], np.uint64)])
        n = n[n < 2**32]  # k * d - 1 wrapped at k = 0
        q = ((np.uint64(m) * n >> np.uint64(32)) + n) >> np.uint64(s)
        np.testing.assert_array_equal(q, n // np.uint64(d), err_msg=f"d={d}")
    with pytest.raises(InputError, match="divisor"):
        harness.fast_divisor(0)
