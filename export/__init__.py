"""latentrt.export: the PyTorch reference tree, checkpoint loading and the ONNX/bundle writer."""

from __future__ import annotations

__all__ = ["export_bundle", "load_components"]


def __getattr__(name: str):
    if name == "export_bundle":
        from latentrt.export.bundle import export_bundle

        return export_bundle
    if name == "load_components":
        from latentrt.export.checkpoint import load_components

        return load_components
    raise AttributeError(f"module 'latentrt.export' has no attribute {name!r}")
