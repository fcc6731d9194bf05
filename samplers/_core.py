"""Shared machinery of the samplers: the checked denoiser call, noise, callbacks, step formulas."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from latentrt.errors import SamplerError

from .noise import BrownianTreeNoiseSampler, NoiseSampler, default_noise_sampler, make_rng

Denoiser = Callable[..., Any]


class Run:
    """State of one sampling run: the checked denoiser, the noise source and the step callback."""

    def __init__(
        self,
        name: str,
        denoise: Denoiser,
        x: np.ndarray,
        sigmas: np.ndarray,
        *,
        noise_sampler: NoiseSampler | None,
        seed: int | np.random.Generator | None,
        callback: Callable[[dict], None] | None,
        brownian: bool,
        flow: bool,
    ) -> None:
        self.name = name
        self._denoise = denoise
        self.shape = x.shape
        self.dtype = x.dtype
        self.sigmas = sigmas
        self._noise_sampler = noise_sampler
        self._seed = seed
        self._rng: np.random.Generator | None = None
        self._callback = callback
        self._brownian = brownian
        self.flow = flow
        self.step = 0

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = make_rng(self._seed)
        return self._rng

    def _check(self, out: Any, sigma: float, what: str) -> np.ndarray:
        out = np.asarray(out)
        if out.shape != self.shape:
            raise SamplerError(
                f"{self.name}: denoiser returned shape {out.shape} at step {self.step}, "
                f"expected {self.shape}"
            )
        if not np.all(np.isfinite(out)):
            raise SamplerError(
                f"{self.name}: denoiser returned NaN/Inf{what} at step {self.step} "
                f"(sigma={sigma:.6g})"
            )
        return out.astype(self.dtype, copy=False)

    def denoise(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """The x0 estimate at ``sigma``, checked for shape and finiteness."""
        return self._check(self._denoise(x, float(sigma)), sigma, "")

    def denoise_pp(self, x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(guided, unconditional) x0 estimates for the CFG++ samplers."""
        out = self._denoise(x, float(sigma), with_uncond=True)
        if not isinstance(out, tuple) or len(out) != 2:
            raise SamplerError(
                f"{self.name}: a CFG++ sampler needs denoise(x, sigma, with_uncond=True) to return "
                f"(x0_guided, x0_uncond), got {type(out).__name__}"
            )
        return self._check(out[0], sigma, " (guided)"), self._check(out[1], sigma, " (uncond)")

    def noise(self, sigma: float, sigma_next: float) -> np.ndarray:
        """Unit-variance noise for the move sigma -> sigma_next."""
        if self._noise_sampler is None:
            if self._brownian:
                positive = self.sigmas[self.sigmas > 0]
                self._noise_sampler = BrownianTreeNoiseSampler(
                    np.empty(self.shape, self.dtype), positive.min(), positive.max(), self.rng
                )
            else:
                self._noise_sampler = default_noise_sampler(
                    np.empty(self.shape, self.dtype), self.rng
                )
        out = np.asarray(self._noise_sampler(float(sigma), float(sigma_next)))
        if out.shape != self.shape:
            raise SamplerError(
                f"{self.name}: noise_sampler returned shape {out.shape}, expected {self.shape}"
            )
        return out.astype(self.dtype, copy=False)

    def callback(
        self, i: int, x: np.ndarray, sigma: float, sigma_hat: float, denoised: np.ndarray, **extra
    ) -> None:
        """Report a step to the user callback (k-diffusion's keys)."""
        if self._callback is not None:
            info = {"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised}
            info.update(extra)
            self._callback(info)


def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    """Karras ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step: deterministic target and noise to add."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(
        sigma_to,
        eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2),
    )
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def churn(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    i: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[np.ndarray, float]:
    """Karras et al. (2022) Algorithm 2 noise increase: returns (x_hat, sigma_hat)."""
    sigma = float(sigmas[i])
    if s_churn <= 0 or not (s_tmin <= sigma <= s_tmax):
        return x, sigma
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1)
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        eps = run.noise(sigma, sigma_hat) * s_noise
        x = x + eps * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat


class Param:
    """Half-log-SNR lambda(sigma), its inverse and alpha(sigma) for VP (k-diffusion) or flow sigmas."""

    def __init__(self, flow: bool) -> None:
        self.flow = flow

    def lam(self, sigma: float) -> float:
        if self.flow:
            return math.log((1.0 - sigma) / sigma)
        return -math.log(sigma)

    def sigma(self, lam: float) -> float:
        if self.flow:
            return 1.0 / (1.0 + math.exp(lam))
        return math.exp(-lam)

    def alpha(self, sigma: float) -> float:
        return 1.0 - sigma if self.flow else 1.0


def offset_first_sigma(sigmas: np.ndarray, flow: bool, percent_offset: float = 1e-4) -> np.ndarray:
    """For flow sigmas starting at 1 (infinite lambda), move the first to 1 - percent_offset."""
    if flow and len(sigmas) > 1 and sigmas[0] >= 1.0:
        sigmas = sigmas.copy()
        sigmas[0] = 1.0 - percent_offset
    return sigmas
