"""Peak memory and time of the chunked video-VAE decode (ORT CPU) as the video grows.

    python benchmarks/bench_video.py [--config tiny|small] [--frames 9 33 81] [--pixels 64]

Builds a Wan 2.1-layout VAE with seeded weights, exports the chunk graphs (latentrt::Conv3d
lowered to standard ONNX), then runs every case in a fresh process and reads its peak resident
memory: after the model is loaded the kernel's high-water mark is reset (`/proc/self/clear_refs`
= 5, Linux) so the peak read from VmHWM is the decode's own. Cases: the streaming ORT decode (`VideoVAE.iter_decode`, frames written to a PNG
sequence as they come, nothing kept), and for contrast PyTorch's full-sequence decode.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "tiny": {"base_dim": 8, "dim_mult": (1, 2, 2, 2), "num_res_blocks": 1, "z_dim": 4},
    "small": {"base_dim": 16, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2, "z_dim": 16},
}


def build(config: str, out: Path) -> Path:
    """Seeded model saved as safetensors (for the torch worker) and its exported chunk graphs."""
    import torch
    from safetensors.torch import save_file

    from latentrt.export.models.vae3d import AutoencoderKLWan, WanVAEConfig
    from latentrt.export.video_export import export_video_vae

    torch.manual_seed(0)
    cfg = WanVAEConfig(**CONFIGS[config], latents_mean=(), latents_std=())
    model = AutoencoderKLWan(cfg).eval()
    (out / "src").mkdir(parents=True)
    (out / "src" / "config.json").write_text(json.dumps(cfg.to_diffusers()))
    save_file(model.state_dict(), str(out / "src" / "diffusion_pytorch_model.safetensors"))
    export_video_vae(model, out / "onnx")
    return out


def worker(kind: str, root: Path, frames: int, pixels: int, threads: int) -> None:
    """One measured case; prints a JSON line with seconds and peak RSS."""
    cfg = json.loads((root / "src" / "config.json").read_text())
    sf = 2 ** (len(cfg["dim_mult"]) - 1)
    tf = 2 ** sum(cfg["temperal_downsample"])
    latent_frames = 1 + (frames - 1) // tf
    z = (
        np.random.default_rng(0)
        .standard_normal((1, cfg["z_dim"], latent_frames, pixels // sf, pixels // sf))
        .astype(np.float32)
    )
    if kind == "ort":
        from latentrt.runtime.video import VideoVAE, save_png_sequence, to_uint8_frames

        vae = VideoVAE.load(root / "onnx", threads=threads)
        base = reset_peak()
        t0 = time.perf_counter()
        out_dir = Path(tempfile.mkdtemp(dir=root))
        n = 0
        for chunk in vae.iter_decode(z):
            n += len(save_png_sequence(to_uint8_frames(chunk)[0], out_dir / f"{n:05d}"))
    else:
        import torch

        from latentrt.export.models.vae3d import load_wan_vae

        torch.set_num_threads(threads)
        model = load_wan_vae(root / "src")
        base = reset_peak()
        t0 = time.perf_counter()
        with torch.no_grad():
            n = model.decode(torch.from_numpy(z)).shape[2]
    seconds = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    print(
        json.dumps(
            {"frames": n, "seconds": seconds, "peak_mb": peak / 1024, "base_mb": base / 1024}
        )
    )


def status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak() -> int:
    """Reset the peak-RSS mark (VmHWM) to the current RSS; returns that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--frames", type=int, nargs="+", default=[9, 33, 81])
    p.add_argument("--pixels", type=int, default=64, help="square frame side in pixels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "ROOT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, root = args.worker
        worker(kind, Path(root), args.frames[0], args.pixels, args.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = build(args.config, Path(tmp))
        print(f"config {args.config} {CONFIGS[args.config]}, {args.pixels}x{args.pixels} px, ")
        print(f"{platform.processor() or platform.machine()}, {args.threads} threads\n")
        print(
            "| frames | decode | seconds | RSS before decode MB | peak RSS during decode MB | growth MB |"
        )
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for frames in args.frames:
            for kind in ("ort", "torch"):
                if kind == "torch" and args.skip_torch:
                    continue
                cmd = [sys.executable, __file__, "--worker", kind, str(root)]
                cmd += ["--frames", str(frames), "--pixels", str(args.pixels)]
                cmd += ["--threads", str(args.threads)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
                name = "ORT chunked (streaming)" if kind == "ort" else "PyTorch full sequence"
                print(
                    f"| {r['frames']} | {name} | {r['seconds']:.2f} | {r['base_mb']:.0f} "
                    f"| {r['peak_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
