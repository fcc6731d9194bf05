"""Test helper: k-diffusion's sampling.py / external.py (the oracle) and an analytic denoiser.

k-diffusion 0.1.1 is installed without its dependencies, so its package __init__ fails. This loads
``utils.py``, ``sampling.py`` and ``external.py`` from the installed wheel under a private package
name, with throwaway stand-ins for the two imports they never use here (torchvision in utils,
torchdiffeq for log_likelihood); the stand-ins are removed from sys.modules afterwards.

The Gaussian-mixture denoiser is exact: each element of x0 is drawn independently from
sum_k w_k N(mu_k, s_k^2), so D(x, sigma) = E[x0 | x0 + sigma * eps = x] is closed-form.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

_PKG = "_kdiff_oracle"
_CACHE: dict[str, types.ModuleType] = {}


def _kdiff_dir() -> Path:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """(sampling, external) modules of the installed k-diffusion."""
    if "sampling" in _CACHE:
        return _CACHE["sampling"], _CACHE["external"]
    root = _kdiff_dir()
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [str(root)]
    sys.modules[_PKG] = pkg
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tvt = types.ModuleType("torchvision.transforms")
        tvt.functional = types.ModuleType("torchvision.transforms.functional")
        tv.transforms = tvt
        stubs.update({"torchvision": tv, "torchvision.transforms": tvt})
        stubs["torchvision.transforms.functional"] = tvt.functional
    if importlib.util.find_spec("torchdiffeq") is None:
        td = types.ModuleType("torchdiffeq")

        def odeint(*args, **kwargs):
            raise NotImplementedError("torchdiffeq is not installed")

        td.odeint = odeint
        stubs["torchdiffeq"] = td
    added = [name for name in stubs if name not in sys.modules]
    sys.modules.update({name: stubs[name] for name in added})
    try:
        for name in ("utils", "sampling", "external"):
            spec = importlib.util.spec_from_file_location(f"{_PKG}.{name}", root / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[f"{_PKG}.{name}"] = mod
            spec.loader.exec_module(mod)
            setattr(pkg, name, mod)
            _CACHE[name] = mod
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return _CACHE["sampling"], _CACHE["external"]


class GaussianMixture:
    """Elementwise 1-D Gaussian mixture data with the exact denoiser in numpy and torch."""

    def __init__(self, weights=(0.3, 0.5, 0.2), means=(-1.5, 0.2, 1.8), stds=(0.3, 0.5, 0.25)):
        self.w = np.asarray(weights, dtype=np.float64)
        self.mu = np.asarray(means, dtype=np.float64)
        self.s = np.asarray(stds, dtype=np.float64)

    @property
    def mean(self) -> float:
        return float(np.sum(self.w * self.mu))

    @property
    def var(self) -> float:
        return float(np.sum(self.w * (self.s**2 + self.mu**2)) - self.mean**2)

    def moment4(self) -> float:
        """Fourth central moment (for the standard error of the sample variance)."""
        m = self.mean
        c = self.mu - m
        return float(np.sum(self.w * (c**4 + 6 * c**2 * self.s**2 + 3 * self.s**4)))

    def denoise_np(self, x: np.ndarray, sigma: float) -> np.ndarray:
        v = self.s**2 + sigma**2
        xe = x[..., None]
        logp = np.log(self.w) - 0.5 * np.log(v) - 0.5 * (xe - self.mu) ** 2 / v
        logp -= logp.max(axis=-1, keepdims=True)
        r = np.exp(logp)
        r /= r.sum(axis=-1, keepdims=True)
        post = self.mu + (self.s**2 / v) * (xe - self.mu)
        return np.sum(r * post, axis=-1)

    def denoise_torch(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1)[0].to(torch.float64)
        w, mu, s = (torch.tensor(a, dtype=torch.float64) for a in (self.w, self.mu, self.s))
        v = s**2 + sigma**2
        xe = x.to(torch.float64)[..., None]
        logp = torch.log(w) - 0.5 * torch.log(v) - 0.5 * (xe - mu) ** 2 / v
        r = torch.softmax(logp, dim=-1)
        post = mu + (s**2 / v) * (xe - mu)
        return torch.sum(r * post, dim=-1).to(x.dtype)


class NoiseTable:
    """Identical noise for both sides: the n-th call returns the n-th precomputed normal array."""

    def __init__(self, shape: tuple[int, ...], seed: int, count: int = 256) -> None:
        self.table = np.random.default_rng(seed).standard_normal((count, *shape))

    def numpy(self):
        calls = {"n": 0}

        def sampler(sigma, sigma_next):
            out = self.table[calls["n"]]
            calls["n"] += 1
            return out

        sampler.calls = calls
        return sampler

    def torch(self):
        calls = {"n": 0}

        def sampler(sigma, sigma_next):
            out = torch.from_numpy(self.table[calls["n"]].copy())
            calls["n"] += 1
            return out

        sampler.calls = calls
        return sampler
