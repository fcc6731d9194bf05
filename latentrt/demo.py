"""The embedded default: prepare a small bundle on this machine and generate one PNG with it.

No weights can be downloaded, so the default model is written locally as a diffusers folder,
exported to a bundle through the normal export path (needs torch), and run on ORT CPU.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = Path("out/default")


def prepare_default_bundle(workdir: Path = DEFAULT_DIR) -> Path:
    """Write the default checkpoint and export it once; later calls reuse the bundle."""
    from latentrt.export.bundle import export_bundle, is_current
    from latentrt.export.tiny import build_models, write_diffusers_folder

    source = workdir / "checkpoint"
    bundle = workdir / "bundle"
    if not (source / "model_index.json").is_file():
        write_diffusers_folder(source, *build_models("tiny", seed=0))
    if not is_current(source, bundle, "fp32"):
        export_bundle(source, bundle)
    return bundle


def run_demo(output: str | Path, prompt: str, seed: int = 0) -> Path:
    """Generate `prompt` with the default bundle into `output` (a PNG with its parameters)."""
    from latentrt.runtime.pipeline import Pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(prepare_default_bundle(), backend="ort-cpu")
    (image,) = pipe.generate(prompt, width=64, height=64, steps=20, seed=seed, sampler="euler")
    return pipe.save(image, output)
