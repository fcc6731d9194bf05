"""Shared pytest configuration: marker handling for GPU and TensorRT tests."""

from __future__ import annotations

import shutil

import pytest


def _has_cuda() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _has_tensorrt() -> bool:
    # A bindings-only install imports but has no libnvinfer: that counts as absent.
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except (ImportError, OSError):
        return False


def pytest_collection_modifyitems(config, items):
    has_cuda = _has_cuda()
    has_trt = _has_tensorrt()
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    skip_trt = pytest.mark.skip(reason="TensorRT is not installed (see README: not run here)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
