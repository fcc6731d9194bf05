"""Chunked ONNX export of the Wan video VAE and the torch-free streaming runtime (ORT CPU).

The graphs are exported with `latentrt::Conv3d` nodes (counted against the model's causal
convolutions) and lowered to standard ONNX. Oracles: the full-sequence PyTorch decode/encode
(itself checked against diffusers in test_vae3d.py) and diffusers' `tiled_decode` /
`tiled_encode` for spatial tiling; diffusers' `VideoProcessor` for the uint8 frame conversion.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import pytest
import torch
from diffusers.video_processor import VideoProcessor
from PIL import Image

from latentrt.errors import BackendError, InputError
from latentrt.export.models.vae3d import CausalConv3d, Resample, load_wan_vae
from latentrt.export.video_export import export_video_vae
from latentrt.graphs.lower_plugins import count_plugin_nodes
from latentrt.runtime import video as rv
from latentrt.runtime.video import Tiling, VideoVAE
from tests.test_vae3d import save_oracle

TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan")
    oracle = save_oracle("wan", folder)
    model = load_wan_vae(folder)
    out = tmp_path_factory.mktemp("export") / "wan-onnx"
    manifest = export_video_vae(model, out)
    return oracle, model, out, manifest, VideoVAE.load(out)


def _time_convs(module: torch.nn.Module, mode: str) -> int:
    return sum(isinstance(m, Resample) and m.mode == mode for m in module.modules())


def test_plugin_nodes_counted_and_lowered(setup):
    _, model, out, manifest, _ = setup
    n_enc = sum(isinstance(m, CausalConv3d) for m in model.encoder.modules()) + 1  # quant_conv
    n_dec = sum(isinstance(m, CausalConv3d) for m in model.decoder.modules()) + 1
    down, up = _time_convs(model, "downsample3d"), _time_convs(model, "upsample3d")
    assert down == up == 2
    counts = {name: g["plugin_nodes"] for name, g in manifest["graphs"].items()}
    # The first chunk skips the temporal resamplers' time convs (frame 0 passes through).
    assert counts == {
        "encoder_first": {"Conv3d": n_enc - down},
        "encoder_step": {"Conv3d": n_enc},
        "decoder_first": {"Conv3d": n_dec - up},
        "decoder_step": {"Conv3d": n_dec},
    }
    assert manifest["ops"] == "standard"
    for name in counts:
        graph = onnx.load(str(out / f"{name}.onnx"))
        assert count_plugin_nodes(graph) == {}
        assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
        assert graph.ir_version <= 13
        onnx.checker.check_model(graph, full_check=True)


@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_onnx_decode_equals_full_torch_decode(setup, chunk):
    oracle, model, _, _, vae = setup
    torch.manual_seed(0)
    z = torch.randn(1, 4, 5, 3, 5)
    with torch.no_grad():
        want = model.decode(z).numpy()
        diffusers_out = oracle.decode(z).sample.numpy()
    chunks = list(vae.iter_decode(z.numpy(), chunk=chunk))
    assert [c.shape[2] for c in chunks] == [1] + [4 * min(chunk, 4 - t) for t in range(0, 4, chunk)]
    got = np.concatenate(chunks, axis=2)
    assert got.shape == want.shape == (1, 3, 17, 24, 40)
    assert np.abs(got - want).max() <= TOL
    assert np.abs(got - diffusers_out).max() <= TOL


def test_chunked_onnx_encode_equals_full_torch_encode(setup):
    _, model, _, _, vae = setup
    torch.manual_seed(1)
    x = torch.rand(2, 3, 9, 24, 32) * 2 - 1
    with torch.no_grad():
        mean, logvar = model.encode(x)
    for chunk in (1, 2):
        got_mean, got_std = vae.encode(x.numpy(), chunk=chunk)
        assert got_mean.shape == (2, 4, 3, 3, 4)
        assert np.abs(got_mean - mean.numpy()).max() <= TOL
        assert np.abs(got_std - torch.exp(0.5 * logvar).numpy()).max() <= TOL


def test_tiled_decode_and_encode_match_diffusers(setup):
    oracle, _, _, _, vae = setup
    oracle.enable_tiling(32, 32, 24, 24)
    torch.manual_seed(2)
    z = torch.randn(1, 4, 2, 5, 6)
    x = torch.rand(1, 3, 5, 40, 48) * 2 - 1
    with torch.no_grad():
        want = oracle.decode(z).sample.numpy()
        dist = oracle.encode(x).latent_dist
    got = vae.decode(z.numpy(), tiling=Tiling(32, 24))
    assert got.shape == want.shape == (1, 3, 5, 40, 48)
    assert np.abs(got - want).max() <= TOL
    untiled = vae.decode(z.numpy())
    assert np.abs(untiled - want).max() > 1e-2  # tiles really were blended, not bypassed
    mean, std = vae.encode(x.numpy(), tiling=Tiling(32, 24))
    assert np.abs(mean - dist.mean.numpy()).max() <= TOL
    assert np.abs(std - dist.std.numpy()).max() <= TOL


def test_bad_inputs_get_input_errors(setup):
    _, _, _, _, vae = setup
    with pytest.raises(InputError, match="1 \\+ 4k frames"):
        vae.encode(np.zeros((1, 3, 8, 16, 16), np.float32))
    with pytest.raises(InputError, match="multiples of 8"):
        vae.encode(np.zeros((1, 3, 5, 12, 16), np.float32))
    with pytest.raises(InputError, match="latents must be"):
        vae.decode(np.zeros((1, 5, 2, 2, 2), np.float32))
    with pytest.raises(InputError, match="multiple of 4 frames"):
        vae.encode_step(np.zeros((1, 3, 3, 16, 16), np.float32), [])
    with pytest.raises(InputError, match="multiples of 8"):
        vae.decode(np.zeros((1, 4, 2, 2, 2), np.float32), tiling=Tiling(20, 16))
    z = np.zeros((1, 4, 1, 2, 3), np.float32)
    _, caches = vae.decode_first(z)
    frames, _ = vae.decode_step(z, caches)
    assert frames.shape == (1, 3, 4, 16, 24)
    with pytest.raises(InputError, match="cache 0 has shape"):
        vae.decode_step(np.zeros((1, 4, 1, 3, 3), np.float32), caches)  # other tile size
    with pytest.raises(InputError, match="takes .* caches"):
        vae.decode_step(z, caches[:-1])
    swapped = [caches[-1], *caches[1:-1], caches[0]]
    with pytest.raises(InputError, match="has shape"):
        vae.decode_step(z, swapped)


def test_unlowered_export_is_refused_by_ort(setup, tmp_path):
    _, model, _, _, _ = setup
    manifest = export_video_vae(model, tmp_path / "raw", lower=False)
    assert manifest["ops"] == "latentrt"
    raw = onnx.load(str(tmp_path / "raw" / "decoder_step.onnx"))
    assert count_plugin_nodes(raw) == manifest["graphs"]["decoder_step"]["plugin_nodes"]
    assert any(o.domain == "latentrt" for o in raw.opset_import)
    with pytest.raises(BackendError, match="lower"):
        VideoVAE.load(tmp_path / "raw")


def test_runtime_runs_without_torch(setup):
    _, _, out, _, vae = setup
    z = np.random.default_rng(0).standard_normal((1, 4, 2, 2, 2)).astype(np.float32)
    code = (
        "import sys, numpy as np; sys.modules['torch'] = None\n"
        "from latentrt.runtime.video import VideoVAE\n"
        f"v = VideoVAE.load({str(out)!r})\n"
        f"np.save(sys.argv[1], v.decode(np.load(sys.argv[2])))\n"
        "assert sys.modules['torch'] is None\n"
    )
    d = Path(out).parent
    np.save(d / "z.npy", z)
    subprocess.run([sys.executable, "-c", code, str(d / "o.npy"), str(d / "z.npy")], check=True)
    assert np.abs(np.load(d / "o.npy") - vae.decode(z)).max() == 0


# --- frame output --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(5)
    video = np.clip(rng.standard_normal((1, 3, 5, 16, 24)).astype(np.float32), -1, 1)
    return video


def test_uint8_frames_match_diffusers_video_processor(clip):
    frames = rv.to_uint8_frames(clip)
    pil = VideoProcessor().postprocess_video(torch.from_numpy(clip), output_type="pil")[0]
    assert frames.shape == (1, 5, 16, 24, 3)
    for ours, theirs in zip(frames[0], pil, strict=True):
        assert np.array_equal(ours, np.asarray(theirs))


def test_png_gif_webp_writers(clip, tmp_path):
    frames = rv.to_uint8_frames(clip)[0]
    paths = rv.save_png_sequence(iter(frames[None]), tmp_path / "png")
    assert [p.name for p in paths[:2]] == ["frame_00000.png", "frame_00001.png"]
    assert rv.save_video(frames, tmp_path / "png2") == tmp_path / "png2"
    back = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "png").iterdir())])
    assert np.array_equal(back, frames)
    webp = Image.open(rv.save_video(frames, tmp_path / "a.webp", fps=8))
    assert webp.n_frames == 5
    webp.seek(3)
    assert np.array_equal(np.asarray(webp.convert("RGB")), frames[3])  # lossless
    gif = Image.open(rv.save_video(frames, tmp_path / "a.gif", fps=10))
    assert gif.n_frames == 5 and gif.info["duration"] == 100  # GIF counts 10 ms units
    with pytest.raises(InputError, match="unknown video format"):
        rv.save_video(frames, tmp_path / "a.avi")


def test_mp4_needs_ffmpeg(clip, tmp_path, monkeypatch):
    frames = rv.to_uint8_frames(clip)[0]
    monkeypatch.setattr(rv.shutil, "which", lambda name: None)
    with pytest.raises(BackendError, match="ffmpeg"):
        rv.save_video(frames, tmp_path / "a.mp4")


def test_mp4_with_ffmpeg(clip, tmp_path):
    """MP4 through a real ffmpeg (the one on PATH, else the binary imageio-ffmpeg ships)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    exe = rv.shutil.which("ffmpeg") or imageio_ffmpeg.get_ffmpeg_exe()
    frames = rv.to_uint8_frames(clip)[0]
    path = rv.save_mp4(frames, tmp_path / "a.mp4", fps=8, ffmpeg=exe)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    decoded = [np.frombuffer(f, np.uint8) for f in reader]
    h, w = frames[0].shape[:2]
    assert meta["size"] == (w + w % 2, h + h % 2) and meta["codec"] == "h264"
    assert len(decoded) == len(frames)
