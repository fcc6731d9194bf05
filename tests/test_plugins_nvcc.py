"""Both plugin .cu files compile with nvcc for sm_90 and sm_90a (wgmma) with every warning an error;
the nvcc-built C launchers plan GroupNormSiLU and the Conv3d kernels as the Python harness does."""

from __future__ import annotations

import ctypes
import itertools
import math
import subprocess

import pytest

from latentrt.errors import InputError
from latentrt.plugins import harness
from latentrt.plugins.harness import CUDA_DIR, find_nvcc


def _nvcc_without_warnings(*args: str) -> None:
    """Runs nvcc (C++17, every warning an error) and fails on an error or any warning."""
    cmd = [find_nvcc(), "-std=c++17", "-Werror", "all-warnings", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert "warning" not in output.lower(), output


@pytest.mark.skipif(
    find_nvcc() is None, reason="nvcc (CUDA toolkit) is not installed on this machine"
)
@pytest.mark.parametrize("arch", ["sm_90", "sm_90a"])
@pytest.mark.parametrize("name", ["groupnorm_silu.cu", "conv3d.cu"])
def test_compiles_for_sm90_without_warnings(name, arch, tmp_path):
    _nvcc_without_warnings(
        f"-arch={arch}",
        *(["-DLATENTRT_SM90A"] if arch == "sm_90a" else []),
        "-Xcompiler",
        "-Wall,-Wextra,-Werror",
        "-c",
        str(CUDA_DIR / name),
        "-o",
        str(tmp_path / "k.o"),
    )
    assert (tmp_path / "k.o").stat().st_size > 0


@pytest.mark.skipif(
    find_nvcc() is None, reason="nvcc (CUDA toolkit) is not installed on this machine"
)
@pytest.mark.parametrize(
    "define", ["LATENTRT_GN_TRACE", "LATENTRT_GN_NO_STATS", "LATENTRT_GN_NO_L2_HINTS"]
)
def test_groupnorm_profiling_builds_compile_without_warnings(define, tmp_path):
    # The builds benchmarks/bench_plugins.py times (--gn-trace, --gn-attrib, --gn-l2); to PTX,
    # where the front end's warnings are.
    ptx = tmp_path / "k.ptx"
    _nvcc_without_warnings(
        "-arch=sm_90", f"-D{define}", "-ptx", str(CUDA_DIR / "groupnorm_silu.cu"), "-o", str(ptx)
    )
    assert ".entry latentrt_gn_silu_nchw_f16_c1" in ptx.read_text()


@pytest.mark.skipif(
    find_nvcc() is None, reason="nvcc (CUDA toolkit) is not installed on this machine"
)
def test_c_launcher_tma_plan_matches_the_harness(tmp_path):
    # The C launcher (what a TensorRT plugin calls) and the Python harness pick the TMA kernel's
    # tile variant, box, cluster size and stream-K split each in their own code; host-only, so no GPU is needed.
    lib = ctypes.CDLL(str(harness.build_shared_library(tmp_path / "lib.so", arch="sm_90a")))
    plan = lib.latentrt_conv3d_tma_plan
    plan.argtypes = [ctypes.c_int] * 10 + [ctypes.POINTER(ctypes.c_int)]
    plan.restype = ctypes.c_int
    shapes = [  # (N, Cout, Do, Ho, Wo): the benchmark's video-VAE shapes and odd ones
        (1, 384, 5, 32, 32), (1, 128, 9, 128, 128), (1, 256, 9, 64, 64), (1, 512, 5, 32, 32),
        (1, 384, 5, 60, 104), (1, 192, 9, 120, 208), (2, 320, 3, 40, 72), (1, 64, 4, 9, 33),
        (1, 96, 17, 90, 160), (4, 1024, 2, 8, 8), (1, 128, 9, 64, 64), (1, 64, 3, 12, 40),
        (1, 128, 5, 60, 104), (3, 256, 1, 90, 160),
    ]  # fmt: skip
    im2col = set()
    for n, cout, d, h, w in shapes:
        for (streamk, resident), ok in itertools.product(
            ((None, 66), (None, 40), (0, 132)), (1, 0)
        ):
            out = (ctypes.c_int * 12)()
            flag = 1 if streamk is None else 0
            assert plan(n, cout, d, h, w, 132, 54, flag, resident, ok, out) == 0
            p = harness.conv3d_tma_plan(
                "float16", n, 128, cout, (3, 3, 3), (d, h, w), 132, streamk=streamk,
                resident=resident, im2col=None if ok else False,
            )  # fmt: skip
            want = [p.tile_m, p.tile_n, p.bw_log2, p.sub_log2, p.tiles_h, p.tiles_w, p.cluster]
            want += [p.tiles_m, p.dp_tiles, p.sk_tiles, p.sk_ctas, p.im2col]
            assert list(out) == want, (n, cout, d, h, w, streamk, resident, ok)
            im2col.add(p.im2col)
    assert im2col == {False, True}  # 60 x 104 frames (four 4 x 8 boxes a tile) take im2col loads
    assert plan(1, 0, 1, 1, 1, 132, 54, 1, 66, 1, (ctypes.c_int * 12)()) != 0


@pytest.fixture(scope="module")
def sm90_lib(tmp_path_factory):
    """The plugin library built for sm_90 (host-only entry points need no GPU)."""
    if find_nvcc() is None:
        pytest.skip("nvcc (CUDA toolkit) is not installed on this machine")
    path = tmp_path_factory.mktemp("sm90") / "lib.so"
    return ctypes.CDLL(str(harness.build_shared_library(path)))


def test_c_launcher_smallc_plan_matches_the_harness(sm90_lib):
    # The small-Cin kernel's plan (tile width, box, padded K, shared memory, grid), or that it
    # does not apply, in the C launcher and the Python harness alike; host-only.
    plan = sm90_lib.latentrt_conv3d_smallc_plan
    three = ctypes.c_int * 3
    cases = [  # (N, Cin, Cout, kernel, output (Do, Ho, Wo), strides, dilations)
        (1, 3, 128, (3, 3, 3), (17, 64, 64), (1, 1, 1), (1, 1, 1)),
        (2, 4, 200, (3, 3, 3), (5, 7, 10), (1, 2, 2), (1, 1, 1)),
        (1, 5, 20, (3, 3, 3), (6, 11, 9), (1, 1, 1), (2, 2, 2)),
        (1, 1, 136, (2, 3, 3), (4, 20, 70), (1, 1, 1), (1, 1, 1)),
        (3, 3, 64, (1, 1, 1), (3, 16, 16), (1, 1, 1), (1, 1, 1)),
        (1, 3, 96, (3, 3, 3), (33, 240, 416), (1, 1, 1), (1, 1, 1)),
        (1, 16, 128, (3, 3, 3), (9, 64, 64), (1, 1, 1), (1, 1, 1)),
        (1, 3, 128, (3, 3, 3), (5, 8, 512), (1, 8, 8), (1, 1, 1)),
    ]
    for n, cin, cout, k, out_dhw, strides, dil in cases:
        for limit in (harness.SMALLC_MAX_SMEM, 48 * 1024):
            out = (ctypes.c_int * 8)()
            rc = plan(n, cin, cout, *k, three(*strides), three(*dil), *out_dhw, 132, limit, out)
            p = harness.conv3d_smallc_plan(
                "float16", True, n, cin, cout, k, out_dhw, strides, dil, 132, limit
            )
            if p is None:
                assert rc == 1, (n, cin, cout, k, out_dhw, limit)
                continue
            assert rc == 0
            want = [int(p.kernel.rsplit("_n", 1)[1]), *p.tail[1:], p.smem, *p.grid[:2]]
            assert list(out) == want, (n, cin, cout, k, out_dhw, limit)
    assert plan(1, 3, 0, 3, 3, 3, three(1, 1, 1), three(1, 1, 1), 1, 1, 1, 132, 1, out) != 0


def test_c_launcher_narrow_plan_matches_the_harness(sm90_lib):
    # The narrow-output kernel's plan (box, Cin chunk, shared memory, grid) or its absence, in C
    # and Python alike; host-only.
    plan = sm90_lib.latentrt_conv3d_narrow_plan
    three = ctypes.c_int * 3
    cases = [  # (N, Cin, Cout, kernel, output (Do, Ho, Wo), strides, dilations)
        (1, 128, 3, (3, 3, 3), (17, 64, 64), (1, 1, 1), (1, 1, 1)),
        (2, 16, 3, (3, 3, 3), (5, 7, 10), (1, 2, 2), (1, 1, 1)),
        (1, 24, 5, (3, 3, 3), (6, 11, 9), (1, 1, 1), (2, 2, 2)),
        (1, 24, 5, (2, 3, 3), (6, 11, 9), (1, 1, 1), (2, 2, 2)),
        (1, 64, 12, (2, 3, 3), (4, 20, 70), (1, 1, 1), (1, 1, 1)),
        (1, 128, 3, (2, 3, 3), (5, 8, 512), (1, 2, 2), (1, 1, 1)),
        (1, 128, 3, (3, 3, 3), (5, 8, 512), (1, 2, 2), (1, 1, 1)),
        (1, 128, 3, (3, 3, 3), (5, 8, 512), (1, 8, 8), (1, 1, 1)),
        (1, 12, 3, (3, 3, 3), (9, 64, 64), (1, 1, 1), (1, 1, 1)),
        (1, 128, 24, (3, 3, 3), (9, 64, 64), (1, 1, 1), (1, 1, 1)),
    ]
    stream_k = 0
    for n, cin, cout, k, out_dhw, strides, dil in cases:
        for limit, sms in ((harness.SMALLC_MAX_SMEM, 132), (64 * 1024, 132), (64 * 1024, 16)):
            out = (ctypes.c_int * 6)()
            rc = plan(n, cin, cout, *k, three(*strides), three(*dil), *out_dhw, sms, limit, out)
            p = harness.conv3d_narrow_plan(
                "float16", True, n, cin, cout, k, out_dhw, strides, dil, limit, sms
            )
            if p is None:
                assert rc == 1, (n, cin, cout, k, out_dhw, limit)
                continue
            assert rc == 0
            assert list(out) == [*p.tail[1:], p.smem, p.grid[0]], (n, cin, cout, k, out_dhw)
            stream_k += p.workspace > 0
    assert stream_k >= 3  # the RGB output conv on 132 SMs, more cases on 16


def test_c_launcher_layout_change_matches_the_harness(sm90_lib):
    # Whether a channels-first Conv3d runs through channels-last copies, and their bytes, in C
    # and Python alike; host-only (the device facts are arguments).
    fn = sm90_lib.latentrt_conv3d_layout_change_bytes
    ip = ctypes.POINTER(ctypes.c_int)
    fn.argtypes = [ctypes.c_int] * 10 + [ip, ip, ip] + [ctypes.c_int] * 4
    fn.restype = ctypes.c_longlong
    three, six = ctypes.c_int * 3, ctypes.c_int * 6
    cases = [  # (N, Cin, (D, H, W), Cout, kernel, strides, dilations)
        (1, 384, (5, 32, 32), 384, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # TMA on Hopper
        (1, 96, (9, 64, 64), 96, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # wgmma on Hopper
        (1, 128, (9, 32, 32), 128, (3, 3, 3), (2, 2, 2), (1, 1, 1)),
        (1, 40, (6, 12, 10), 24, (3, 1, 3), (1, 1, 2), (2, 1, 1)),
        (1, 128, (17, 64, 64), 3, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # narrow anywhere
        (2, 16, (5, 13, 19), 3, (3, 3, 3), (1, 2, 2), (1, 1, 1)),
        (1, 3, (17, 64, 64), 128, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # small-Cin stays
        (1, 8, (9, 32, 32), 16, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # small-Cin: 216 <= 256
        (1, 36, (9, 32, 32), 64, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # Cin % 8
        (1, 64, (9, 32, 32), 12, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # Cout % 8, <= 16: narrow
        (1, 64, (9, 32, 32), 20, (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # neither
    ]
    for n, cin, dhw, cout, k, strides, dil in cases:
        pads = (k[0] - 1) * dil[0], 1, 1, 0, 1, 1
        out_dhw = tuple(
            (s + pads[i] + pads[i + 3] - dil[i] * (k[i] - 1) - 1) // strides[i] + 1
            for i, s in enumerate(dhw)
        )
        for dtype in ("float16", "float32"):
            for hopper in (0, 1):
                args = (n, cin, cout, k, dhw, out_dhw, strides, dil, 132, 227 * 1024, hopper)
                want = harness.layout_change_bytes(dtype, *args)
                size = 4 if dtype == "float32" else 2
                got = fn(size, n, cin, *dhw, cout, *k, six(*pads), three(*strides), three(*dil), 0,
                         132, 227 * 1024, hopper)  # fmt: skip
                assert got == want, (n, cin, dhw, cout, k, dtype, hopper)
                if hopper and dtype == "float16" and cin in (384, 96):
                    assert want == 2 * n * (cin * math.prod(dhw) + cout * math.prod(out_dhw))
                if cin in (3, 8, 36) or dtype == "float32" or (cout == 20 and hopper == 0):
                    assert want == 0
    assert fn(2, 1, 0, 4, 4, 4, 8, 3, 3, 3, six(2, 1, 1, 0, 1, 1), three(1, 1, 1),
              three(1, 1, 1), 0, 132, 1024, 1) == -1  # fmt: skip


def test_c_launcher_groupnorm_plan_matches_the_harness(sm90_lib):
    # Cluster, block size, vector width, cache fill, shared memory, tile, index-division magic and
    # TMA box of a GroupNormSiLU launch, in C and Python alike, over layouts, dtypes, alignment
    # and two GPUs' limits.
    plan = sm90_lib.latentrt_groupnorm_silu_plan
    plan.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong] + [ctypes.c_int] * 8
    plan.argtypes += [ctypes.POINTER(ctypes.c_uint)]  # int* out10, read as unsigned
    shapes = [  # (N, C, spatial, groups)
        (2, 320, 64 * 64, 32),
        (8, 320, 64 * 64, 32),
        (2, 1280, 16 * 16, 32),
        (1, 512, 128 * 128, 32),
        (1, 256, 256 * 256, 32),
        (1, 32, 512 * 512, 2),  # does not fit on chip: two reads
        (1, 512, 80 * 256, 32),  # clusters in one wave: the slice's head cached
        (1, 96, 9 * 33 * 33, 32),  # odd spatial size, 3 channels a group
        (3, 6, 35, 3),
        (2, 640, 32 * 32, 32),  # channels-last: 16-byte vectors straddle 20 fp16 channels
        (2, 960, 17 * 9, 32),  # 30 fp16 channels: tiles of 4 groups
        (1, 128, 64 * 64, 32),  # 4 fp16 channels: a 16-byte vector holds two groups
        (1, 64, 33 * 33, 32),  # 2 channels: two fp32 groups a vector, four fp16 ones (no)
        (1, 128, 512 * 512, 32),  # uncached channels-last: tiles of 4 groups, not 8 (too few)
        (2, 128, 512 * 512, 32),  # tiles of 8
        (2, 320, 128 * 128, 32),  # 10 fp32 channels: tiles of 4 in clusters of 8
        (2, 320, 32 * 32, 32),  # not at 128 rows a block
        (2, 1280, 64 * 64, 32),  # channels-last clusters of 4 made 8, TMA boxes
        (1, 512, 60 * 68, 32),  # 510 positions a block: no boxes, clusters of 4 stay
    ]
    checked = set()
    for (n, c, spatial, groups), layout, elem, aligned, (sms, optin) in itertools.product(
        shapes, (0, 1), (2, 4), (1, 0), ((132, 232448), (108, 166912))
    ):
        out = (ctypes.c_uint * 10)()
        assert plan(n, c, spatial, groups, layout, elem, aligned, sms, optin, 0, 0, out) == 0
        p = harness.groupnorm_plan(
            n, c, spatial, groups, layout == 1, elem, bool(aligned), sms, optin
        )
        div = harness.groupnorm_divisor(p, c, spatial, groups, layout == 1)
        want = [p.cluster, p.threads, p.vec, p.cached, p.smem, p.tile, p.cap, *div, p.box]
        assert list(out) == want, (n, c, spatial, groups, layout, elem, aligned, sms)
        if p.tile == 1:
            partial = p.cap < -(-(c // groups * spatial // p.vec) // p.cluster)
            checked.add((layout, p.cached, partial, p.box > 0))
    # two reads, the threads' loads filling whole and partial caches, bulk copies in and out;
    # channels-last TMA boxes in (fp32) and in and out (16-bit)
    assert checked >= {(0, 0, True, False), (0, 1, False, False), (0, 1, True, False)}
    assert checked >= {(0, 3, False, False), (1, 2, False, True), (1, 3, False, True)}
    out = (ctypes.c_uint * 10)()
    assert plan(1, 30, 64, 32, 0, 2, 1, 132, 232448, 0, 0, out) != 0  # 30 channels, 32 groups
    assert plan(1, 32, 64, 32, 0, 8, 1, 132, 232448, 0, 0, out) != 0  # 8-byte elements
    # Forced tiles and cluster sizes (TensorRT's tactics), as harness.groupnorm_plan forces them.
    for (n, c, spatial, groups), layout, elem, (tile, cs) in itertools.product(
        shapes[:3] + shapes[9:13], (0, 1), (2, 4), itertools.product((0, 1, 2, 8), (0, 1, 4))
    ):
        forced = {"tile": tile or None, "cluster": cs or None}
        try:
            p = harness.groupnorm_plan(n, c, spatial, groups, layout == 1, elem, True, 132, 232448,
                                       **forced)  # fmt: skip
        except InputError:
            assert plan(n, c, spatial, groups, layout, elem, 1, 132, 232448, tile, cs, out) != 0
            continue
        assert plan(n, c, spatial, groups, layout, elem, 1, 132, 232448, tile, cs, out) == 0
        div = harness.groupnorm_divisor(p, c, spatial, groups, layout == 1)
        want = [p.cluster, p.threads, p.vec, p.cached, p.smem, p.tile, p.cap, *div, p.box]
        assert list(out) == want, (n, c, spatial, groups, layout, elem, tile, cs)
    for tile, cs in ((3, 0), (64, 0), (0, 3), (0, 16)):
        assert plan(2, 320, 4096, 32, 1, 2, 1, 132, 232448, tile, cs, out) != 0
    # The launchers refuse a tactic they cannot run before they touch the GPU.
    gn = sm90_lib.latentrt_groupnorm_silu_f16
    vp, i = ctypes.c_void_p, ctypes.c_int
    gn.argtypes = [vp] * 4 + [i, i, ctypes.c_longlong, i, ctypes.c_float, i, i, i, i, vp]
    gn.restype = i
    assert gn(None, None, None, None, 2, 320, 4096, 32, 1e-5, 1, 0, 2, 0, None) != 0
