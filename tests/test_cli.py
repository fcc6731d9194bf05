"""The command line end to end: export, build (engine cache), generate, check, errors."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from latentrt.cli import main
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.ort_backend import _engine_path
from tests import sd_fixtures


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return sd_fixtures.sd_pipeline(tmp_path_factory.mktemp("cli") / "src", "sd1", seed=9)


def test_export_build_generate_check(source, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["export", str(source), str(bundle)]) == 0
    mtime = (bundle / "manifest.json").stat().st_mtime_ns
    assert main(["export", str(source), str(bundle), "--skip-unchanged"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (bundle / "manifest.json").stat().st_mtime_ns == mtime

    assert main(["build", str(bundle), "--target", "ort-cpu"]) == 0
    b = Bundle.open(bundle)
    index = json.loads((bundle / "engines" / "ort-cpu" / "index.json").read_text())
    assert set(index["components"]) == set(b.manifest["components"])
    engine = _engine_path(b, "unet", "ort-cpu")
    assert engine is not None and engine.is_file()
    assert main(["build", str(bundle), "--target", "ort-cpu"]) == 0  # reuses the engines

    out = tmp_path / "img.png"
    args = ["generate", str(bundle), "--prompt", "a lighthouse", "--steps", "3"]
    args += ["--width", "64", "--height", "64", "--seed", "5", "-o", str(out)]
    assert main(args) == 0
    im = Image.open(out)
    assert im.size == (64, 64)
    umask = os.umask(0)
    os.umask(umask)  # written aside then renamed, but with the modes a plain write would give
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert bundle.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (bundle / "engines" / "ort-cpu").stat().st_mode & 0o777 == 0o777 & ~umask
    assert "Seed: 5" in im.text["parameters"] and "Steps: 3" in im.text["parameters"]

    capsys.readouterr()
    assert main(["check", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["components"]) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert all(r["ok"] and r["max_abs_err"] < 1e-4 for r in report["components"].values())


def test_stale_engine_is_not_loaded(source, tmp_path):
    bundle = tmp_path / "bundle"
    main(["export", str(source), str(bundle)])
    main(["build", str(bundle), "--target", "ort-cpu"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["components"]["unet"]["sha256"] = "0" * 64  # the ONNX file changed since the build
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    b = Bundle.open(bundle)
    assert _engine_path(b, "unet", "ort-cpu") is None
    assert _engine_path(b, "vae_decoder", "ort-cpu") is not None


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not a bundle directory" in capsys.readouterr().err
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04junk")
    assert main(["export", str(tmp_path / "model.ckpt"), str(tmp_path / "b")]) == 2
    assert "pickle checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_bench_passes_ort_cuda_session_options(monkeypatch):
    """`latentrt bench` hands provider options, session flags and the shared arena's split
    threshold to the backend; the threshold alone (no shared arena) is refused."""
    from latentrt.errors import InputError
    from latentrt.runtime import bench as bench_mod
    from latentrt.runtime import ort_cuda

    seen = {}

    def fake_bench(bundle, **kw):
        seen.update(kw["options"])
        raise InputError("stop here")

    monkeypatch.setattr(bench_mod, "bench", fake_bench)
    argv = ["bench", "b", "--shared-arena", "--arena-max-dead-mib", "2", "--option", "a=1"]
    assert main([*argv, "--cublas-workspace", ":4096:8"]) == 2
    assert seen == {
        "shared_arena": True,
        "arena_max_dead_mib": 2.0,
        "a": "1",
        "cublas_workspace": ":4096:8",
    }
    assert main(["bench", "b", "--cublas-workspace", "none"]) == 2
    assert seen["cublas_workspace"] is None
    with pytest.raises(InputError, match="shared_arena"):
        ort_cuda.load_components("b", arena_max_dead_mib=2)
    with pytest.raises(InputError, match="KiB:count"):
        ort_cuda.load_components("b", cublas_workspace="4096")


def test_cublas_workspace_is_set_unless_the_environment_sets_it(monkeypatch):
    """The ort-cuda backend's cuBLAS workspace goes into CUBLAS_WORKSPACE_CONFIG only where the
    user has not set one and PyTorch (which reads it too) is not loaded; None leaves the
    environment alone."""
    import sys

    from latentrt.runtime.ort_cuda import CUBLAS_WORKSPACE, limit_cublas_workspace

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch", object()))
    assert limit_cublas_workspace(":4096:2") is None
    monkeypatch.delitem(sys.modules, "torch")
    assert limit_cublas_workspace(None) is None
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert limit_cublas_workspace(CUBLAS_WORKSPACE) == CUBLAS_WORKSPACE == ":4096:2"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:2"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert limit_cublas_workspace(":4096:2") == ":16:8"
