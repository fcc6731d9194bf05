"""The public entry point: ``sample(name, denoise, x, sigmas, ...)`` and the SAMPLERS registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from latentrt.errors import SamplerError

from . import cfg_pp, dpm_solver, k_samplers, multistep, sa_solver, unipc
from ._core import Denoiser, Run
from .noise import NoiseSampler

# name -> (implementation, default noise is a Brownian tree, needs the unconditional x0)
_REGISTRY: dict[str, tuple[Callable[..., np.ndarray], bool, bool]] = {
    "euler": (k_samplers.euler, False, False),
    "euler_ancestral": (k_samplers.euler_ancestral, False, False),
    "heun": (k_samplers.heun, False, False),
    "heunpp2": (k_samplers.heunpp2, False, False),
    "dpm_2": (k_samplers.dpm_2, False, False),
    "dpm_2_ancestral": (k_samplers.dpm_2_ancestral, False, False),
    "lms": (multistep.lms, False, False),
    "dpm_fast": (dpm_solver.dpm_fast, False, False),
    "dpm_adaptive": (dpm_solver.dpm_adaptive, False, False),
    "dpmpp_2s_ancestral": (k_samplers.dpmpp_2s_ancestral, False, False),
    "dpmpp_sde": (k_samplers.dpmpp_sde, True, False),
    "dpmpp_2m": (multistep.dpmpp_2m, False, False),
    "dpmpp_2m_sde": (multistep.dpmpp_2m_sde, True, False),
    "dpmpp_2m_sde_heun": (multistep.dpmpp_2m_sde_heun, True, False),
    "dpmpp_3m_sde": (multistep.dpmpp_3m_sde, True, False),
    "ddpm": (k_samplers.ddpm, False, False),
    "ddim": (k_samplers.ddim, False, False),
    "lcm": (k_samplers.lcm, False, False),
    "ipndm": (multistep.ipndm, False, False),
    "ipndm_v": (multistep.ipndm_v, False, False),
    "deis": (multistep.deis, False, False),
    "uni_pc": (unipc.uni_pc, False, False),
    "uni_pc_bh2": (unipc.uni_pc_bh2, False, False),
    "sa_solver": (sa_solver.sa_solver, False, False),
    "res_multistep": (multistep.res_multistep, False, False),
    "euler_cfg_pp": (cfg_pp.euler_cfg_pp, False, True),
    "euler_ancestral_cfg_pp": (cfg_pp.euler_ancestral_cfg_pp, False, True),
    "dpmpp_2s_ancestral_cfg_pp": (cfg_pp.dpmpp_2s_ancestral_cfg_pp, False, True),
    "dpmpp_2m_cfg_pp": (cfg_pp.dpmpp_2m_cfg_pp, False, True),
}


def sampler_options(name: str) -> dict[str, Any]:
    """The options a sampler accepts, with their defaults."""
    fn = _lookup(name)[0]
    params = list(inspect.signature(fn).parameters.values())[3:]
    return {p.name: p.default for p in params}


def _lookup(name: str) -> tuple[Callable[..., np.ndarray], bool, bool]:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise SamplerError(f"unknown sampler {name!r}; valid: {', '.join(_REGISTRY)}")
    return entry


def check_sigmas(sigmas: Any) -> np.ndarray:
    """A float64 copy of a sigma table, validated: >= 2 values, finite, >= 0, strictly decreasing."""
    table = np.array(sigmas, dtype=np.float64).reshape(-1) if np.ndim(sigmas) <= 1 else None
    if table is None:
        raise SamplerError(f"sigmas must be 1-D, got shape {np.shape(sigmas)}")
    if table.size < 2:
        raise SamplerError(f"steps must be >= 1: sigmas needs >= 2 values, got {table.size}")
    if not np.all(np.isfinite(table)):
        raise SamplerError("sigmas contain NaN or Inf")
    if np.any(table < 0):
        raise SamplerError(f"sigmas must be non-negative, got min {table.min():.6g}")
    bad = np.nonzero(np.diff(table) >= 0)[0]
    if bad.size:
        j = int(bad[0])
        raise SamplerError(
            f"sigmas must be strictly decreasing: sigmas[{j}]={table[j]:.6g} <= "
            f"sigmas[{j + 1}]={table[j + 1]:.6g}"
        )
    return table


def sample(
    name: str,
    denoise: Denoiser,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    noise_sampler: NoiseSampler | None = None,
    seed: int | np.random.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
    flow: bool = False,
    **options: Any,
) -> np.ndarray:
    """Run sampler ``name`` from latent ``x`` at sigmas[0] down the sigma table; returns the result.

    ``denoise(x, sigma) -> x0`` is the x0 estimate in k-diffusion variables (x = x0 + sigma * eps).
    The CFG++ samplers (``*_cfg_pp``) instead call ``denoise(x, sigma, with_uncond=True)`` and expect
    a tuple ``(x0_guided, x0_uncond)``. Noise comes from ``noise_sampler(sigma, sigma_next)`` if
    given, else from ``seed`` (int or numpy Generator): iid normals, or a Brownian tree for the
    SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_2m_sde_heun, dpmpp_3m_sde). ``callback(info)`` gets
    k-diffusion's per-step dict ("x", "i", "sigma", "sigma_hat", "denoised"). ``flow=True`` selects
    the rectified-flow noise formulas (x = (1 - s) x0 + s eps) of the ancestral and SDE samplers.
    ``options`` are the sampler's own (eta, s_noise, s_churn, order, solver_type, r, variant, ...).
    """
    fn, brownian, needs_uncond = _lookup(name)
    valid = sampler_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SamplerError(
            f"sampler {name!r} has no option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid) if valid else '(none)'}"
        )
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise SamplerError(f"x must be a floating-point numpy array, got {type(x).__name__}")
    if not callable(denoise):
        raise SamplerError("denoise must be callable: denoise(x, sigma) -> x0")
    if callback is not None and not callable(callback):
        raise SamplerError("callback must be callable or None")
    table = check_sigmas(sigmas)
    if flow and table[0] > 1.0:
        raise SamplerError(f"flow sigmas must lie in [0, 1], got sigmas[0]={table[0]:.6g}")
    run = Run(
        name,
        denoise,
        x,
        table,
        noise_sampler=noise_sampler,
        seed=seed,
        callback=callback,
        brownian=brownian,
        flow=flow,
    )
    return fn(run, x, table, **options)


class _Sampler:
    """A registry entry: calling it is ``sample(name, ...)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        fn = _REGISTRY[name][0]
        self.__doc__ = fn.__doc__
        self.needs_uncond = _REGISTRY[name][2]

    def __call__(self, denoise: Denoiser, x: np.ndarray, sigmas: np.ndarray, **kwargs: Any):
        return sample(self.name, denoise, x, sigmas, **kwargs)

    def __repr__(self) -> str:
        return f"<sampler {self.name}>"


SAMPLERS: dict[str, _Sampler] = {name: _Sampler(name) for name in _REGISTRY}
