"""CFG++ samplers (Chung et al. 2024, arXiv:2406.08070): guided x0, unconditional noise direction.

These call ``denoise(x, sigma, with_uncond=True)`` and expect ``(x0_guided, x0_uncond)``. The
renoising direction uses the unconditional estimate, which keeps the trajectory on the data
manifold at small guidance scales (ComfyUI's *_cfg_pp samplers).
"""

from __future__ import annotations

import math

import numpy as np

from ._core import Param, Run, ancestral_step, to_d
from .k_samplers import _rf_ancestral


def euler_ancestral_cfg_pp(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """Ancestral Euler (DDIM-like) step with CFG++: x = alpha_t D_g + sigma_down * eps_uncond."""
    p = Param(run.flow)
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised, uncond = run.denoise_pp(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        alpha_s = sigma * math.exp(p.lam(sigma))
        alpha_t = sigma_next * math.exp(p.lam(sigma_next))
        d = to_d(x, sigma, alpha_s * uncond)
        sigma_down, sigma_up = ancestral_step(sigma / alpha_s, sigma_next / alpha_t, eta)
        x = alpha_t * denoised + (alpha_t * sigma_down) * d
        if eta > 0 and s_noise > 0:
            x = x + run.noise(sigma, sigma_next) * (alpha_t * s_noise * sigma_up)
    return x


def euler_cfg_pp(run: Run, x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Deterministic Euler with CFG++ (DDIM CFG++ of the paper)."""
    return euler_ancestral_cfg_pp(run, x, sigmas, eta=0.0, s_noise=0.0)


def dpmpp_2s_ancestral_cfg_pp(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """DPM-Solver++(2S) ancestral with CFG++: steps on the unconditional x0, adds the guidance."""
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised, uncond = run.denoise_pp(x, sigma)
        guidance = denoised - uncond
        run.callback(i, x, sigma, sigma, denoised)
        if run.flow:
            sigma_down, ratio, renoise = _rf_ancestral(sigma, sigma_next, eta)
            if sigma_next == 0:
                x = x + to_d(x, sigma, uncond) * (sigma_down - sigma)
            else:
                if sigma == 1.0:
                    sigma_s = 0.9999
                else:
                    lam_i = math.log((1 - sigma) / sigma)
                    lam_down = math.log((1 - sigma_down) / sigma_down)
                    sigma_s = 1.0 / (math.exp(lam_i + 0.5 * (lam_down - lam_i)) + 1.0)
                u = (sigma_s / sigma) * x + (1 - sigma_s / sigma) * uncond
                _, uncond_2 = run.denoise_pp(u, sigma_s)
                x = (sigma_down / sigma) * x + (1 - sigma_down / sigma) * uncond_2
            if sigma_next > 0 and eta > 0:
                x = ratio * x + run.noise(sigma, sigma_next) * (s_noise * renoise)
            x = x + (1 - sigma_next) * guidance
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, uncond) * (sigma_down - sigma)
        else:
            h = math.log(sigma) - math.log(sigma_down)
            sigma_s = math.exp(-(-math.log(sigma) + 0.5 * h))
            x_2 = (sigma_s / sigma) * x - math.expm1(-0.5 * h) * uncond
            _, uncond_2 = run.denoise_pp(x_2, sigma_s)
            x = (sigma_down / sigma) * x - math.expm1(-h) * uncond_2
        if sigma_next > 0 and sigma_up > 0:
            x = x + run.noise(sigma, sigma_next) * (s_noise * sigma_up)
        x = x + guidance
    return x


def dpmpp_2m_cfg_pp(run: Run, x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """DPM-Solver++(2M) with CFG++ (ComfyUI's dpmpp_2m_cfg_pp)."""
    old_uncond = None
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised, uncond = run.denoise_pp(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            mix = -math.exp(-h) * uncond
            if old_uncond is not None:
                h_last = math.log(float(sigmas[i - 1])) - math.log(sigma)
                r = h_last / h
                mix = mix - math.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
            x = denoised + mix + math.exp(-h) * x
        old_uncond = uncond
    return x
