"""The embedded default: a small trained model shipped with the package, run on ORT CPU.

`latentrt/default_model/` holds weights trained on synthetic shapes by
`python -m latentrt.export.train` (see BENCHMARKS.md, "The embedded default model") in the diffusers layout. The demo
exports them once to a bundle through the normal export path (needs torch) and generates with
the torch-free runtime.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = Path("out/default")
DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"
# What the model was trained for: 64x64 images; 20 steps are plenty.
WIDTH = HEIGHT = 64
STEPS = 20
GUIDANCE = 3.0


def prepare_default_bundle(workdir: Path = DEFAULT_DIR) -> Path:
    """Export the shipped default model once; later calls reuse the bundle while it is current."""
    from latentrt.export.bundle import export_bundle, is_current

    bundle = Path(workdir) / "bundle"
    if not is_current(DEFAULT_MODEL, bundle, "fp32"):
        export_bundle(DEFAULT_MODEL, bundle)
    return bundle


def run_demo(output: str | Path, prompt: str, seed: int = 0) -> Path:
    """Generate `prompt` with the default bundle into `output` (a PNG with its parameters)."""
    from latentrt.runtime.pipeline import Pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(prepare_default_bundle(), backend="ort-cpu")
    (image,) = pipe.generate(
        prompt,
        width=WIDTH,
        height=HEIGHT,
        steps=STEPS,
        guidance=GUIDANCE,
        seed=seed,
        sampler="euler",
    )
    return pipe.save(image, output)
