"""latentrt: latent diffusion models from PyTorch weights to ONNX/TensorRT and a numpy runtime."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import latentrt` stays cheap and never pulls torch or onnxruntime.
    if name == "Pipeline":
        from latentrt.runtime.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'latentrt' has no attribute {name!r}")
