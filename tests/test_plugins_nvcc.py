"""Both plugin .cu files compile with nvcc for sm_90 and sm_90a (wgmma) with every warning an error."""

from __future__ import annotations

import subprocess

import pytest

from latentrt.plugins.harness import CUDA_DIR, find_nvcc


@pytest.mark.skipif(
    find_nvcc() is None, reason="nvcc (CUDA toolkit) is not installed on this machine"
)
@pytest.mark.parametrize("arch", ["sm_90", "sm_90a"])
@pytest.mark.parametrize("name", ["groupnorm_silu.cu", "conv3d.cu"])
def test_compiles_for_sm90_without_warnings(name, arch, tmp_path):
    cmd = [
        find_nvcc(),
        f"-arch={arch}",
        *(["-DLATENTRT_SM90A"] if arch == "sm_90a" else []),
        "-std=c++17",
        "-Werror",
        "all-warnings",
        "-Xcompiler",
        "-Wall,-Wextra,-Werror",
        "-c",
        str(CUDA_DIR / name),
        "-o",
        str(tmp_path / "k.o"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert "warning" not in output.lower(), output
    assert (tmp_path / "k.o").stat().st_size > 0
