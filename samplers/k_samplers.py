"""Single-step samplers: Euler/Heun/DPM-2 families, ancestral variants, DPM++ 2S/SDE, DDPM, DDIM, LCM.

Each takes ``(run, x, sigmas, **options)`` with k-diffusion's option names and returns the final x.
"""

from __future__ import annotations

import math

import numpy as np

from latentrt.errors import SamplerError

from ._core import Param, Run, ancestral_step, churn, offset_first_sigma, to_d

INF = float("inf")


def euler(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = INF,
    s_noise: float = 1.0,
) -> np.ndarray:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 with churn)."""
    for i in range(len(sigmas) - 1):
        run.step = i
        x, sigma_hat = churn(run, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = run.denoise(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        run.callback(i, x, float(sigmas[i]), sigma_hat, denoised)
        x = x + d * (float(sigmas[i + 1]) - sigma_hat)
    return x


def _rf_ancestral(sigma: float, sigma_next: float, eta: float) -> tuple[float, float, float]:
    """Flow ancestral step: (sigma_down, alpha ratio alpha_next/alpha_down, renoise coefficient)."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = math.sqrt(max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, 0.0))
    return sigma_down, alpha_next / alpha_down, renoise


def euler_ancestral(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """Euler step to sigma_down, then fresh noise of size sigma_up (ancestral sampling)."""
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if run.flow:
            if sigma_next == 0:
                x = denoised
                continue
            sigma_down, ratio, renoise = _rf_ancestral(sigma, sigma_next, eta)
            x = (sigma_down / sigma) * x + (1 - sigma_down / sigma) * denoised
            if eta > 0:
                x = ratio * x + run.noise(sigma, sigma_next) * (s_noise * renoise)
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + run.noise(sigma, sigma_next) * (s_noise * sigma_up)
    return x


def heun(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = INF,
    s_noise: float = 1.0,
) -> np.ndarray:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler on the last step to 0."""
    for i in range(len(sigmas) - 1):
        run.step = i
        x, sigma_hat = churn(run, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = float(sigmas[i + 1])
        denoised = run.denoise(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        run.callback(i, x, float(sigmas[i]), sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, run.denoise(x_2, sigma_next))
            x = x + (d + d_2) * (0.5 * dt)
    return x


def heunpp2(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = INF,
    s_noise: float = 1.0,
) -> np.ndarray:
    """Heun++ (sd-webui-samplers-scheduler, in ComfyUI): blends derivatives at the next two sigmas.

    Weights are sigma_{i+1}/(3 sigma_0) and sigma_{i+2}/(3 sigma_0) (two-point form on the
    penultimate step, Euler on the last), so it is a first-order method.
    """
    s_end = float(sigmas[-1])
    sigma_0 = float(sigmas[0])
    for i in range(len(sigmas) - 1):
        run.step = i
        x, sigma_hat = churn(run, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = float(sigmas[i + 1])
        denoised = run.denoise(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        run.callback(i, x, float(sigmas[i]), sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == s_end:
            x = x + d * dt
        elif float(sigmas[i + 2]) == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, run.denoise(x_2, sigma_next))
            w2 = sigma_next / (2 * sigma_0)
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            sigma_2 = float(sigmas[i + 2])
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, run.denoise(x_2, sigma_next))
            x_3 = x_2 + d_2 * (sigma_2 - sigma_next)
            d_3 = to_d(x_3, sigma_2, run.denoise(x_3, sigma_2))
            w2, w3 = sigma_next / (3 * sigma_0), sigma_2 / (3 * sigma_0)
            x = x + (d * (1 - w2 - w3) + d_2 * w2 + d_3 * w3) * dt
    return x


def dpm_2(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = INF,
    s_noise: float = 1.0,
) -> np.ndarray:
    """DPM-Solver-2 style midpoint (in log sigma) steps with Karras churn; Euler on the last step."""
    for i in range(len(sigmas) - 1):
        run.step = i
        x, sigma_hat = churn(run, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = float(sigmas[i + 1])
        denoised = run.denoise(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        run.callback(i, x, float(sigmas[i]), sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            sigma_mid = math.exp(0.5 * (math.log(sigma_hat) + math.log(sigma_next)))
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, run.denoise(x_2, sigma_mid))
            x = x + d_2 * (sigma_next - sigma_hat)
    return x


def dpm_2_ancestral(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """DPM-Solver-2 midpoint step to sigma_down plus ancestral noise."""
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if run.flow:
            sigma_down, ratio, renoise = _rf_ancestral(sigma, sigma_next, eta)
            sigma_up = None
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
            continue
        sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_down)))
        x_2 = x + d * (sigma_mid - sigma)
        d_2 = to_d(x_2, sigma_mid, run.denoise(x_2, sigma_mid))
        x = x + d_2 * (sigma_down - sigma)
        if sigma_up is None:
            x = ratio * x + run.noise(sigma, sigma_next) * (s_noise * renoise)
        else:
            x = x + run.noise(sigma, sigma_next) * (s_noise * sigma_up)
    return x


def dpmpp_2s_ancestral(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """DPM-Solver++(2S) single-step second order to sigma_down, plus ancestral noise."""
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if run.flow:
            x = _dpmpp_2s_rf_step(run, x, denoised, sigma, sigma_next, eta, s_noise)
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = -math.log(sigma), -math.log(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            sigma_s = math.exp(-s)
            x_2 = (sigma_s / sigma) * x - math.expm1(-0.5 * h) * denoised
            denoised_2 = run.denoise(x_2, sigma_s)
            x = (sigma_down / sigma) * x - math.expm1(-h) * denoised_2
        if sigma_next > 0 and sigma_up > 0:
            x = x + run.noise(sigma, sigma_next) * (s_noise * sigma_up)
    return x


def _dpmpp_2s_rf_step(
    run: Run,
    x: np.ndarray,
    denoised: np.ndarray,
    sigma: float,
    sigma_next: float,
    eta: float,
    s_noise: float,
) -> np.ndarray:
    sigma_down, ratio, renoise = _rf_ancestral(sigma, sigma_next, eta)
    if sigma_next == 0:
        return x + to_d(x, sigma, denoised) * (sigma_down - sigma)
    if sigma == 1.0:
        sigma_s = 0.9999
    else:
        lam_i = math.log((1 - sigma) / sigma)
        lam_down = math.log((1 - sigma_down) / sigma_down)
        sigma_s = 1.0 / (math.exp(lam_i + 0.5 * (lam_down - lam_i)) + 1.0)
    u = (sigma_s / sigma) * x + (1 - sigma_s / sigma) * denoised
    d_i = run.denoise(u, sigma_s)
    x = (sigma_down / sigma) * x + (1 - sigma_down / sigma) * d_i
    if eta > 0:
        x = ratio * x + run.noise(sigma, sigma_next) * (s_noise * renoise)
    return x


def dpmpp_sde(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> np.ndarray:
    """DPM-Solver++ stochastic single-step second order with an intermediate point at ratio r."""
    p = Param(run.flow)
    sigmas = offset_first_sigma(sigmas, run.flow)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lam_s, lam_t = p.lam(sigma), p.lam(sigma_next)
        h = lam_t - lam_s
        lam_s1 = lam_s + r * h
        sigma_s1 = p.sigma(lam_s1)
        alpha_s = sigma * math.exp(lam_s)
        alpha_s1 = sigma_s1 * math.exp(lam_s1)
        alpha_t = sigma_next * math.exp(lam_t)
        sd, su = ancestral_step(math.exp(-lam_s), math.exp(-lam_s1), eta)
        h_ = -math.log(sd) - lam_s
        x_2 = (alpha_s1 / alpha_s) * math.exp(-h_) * x - alpha_s1 * math.expm1(-h_) * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + run.noise(sigma, sigma_s1) * (alpha_s1 * s_noise * su)
        denoised_2 = run.denoise(x_2, sigma_s1)
        sd, su = ancestral_step(math.exp(-lam_s), math.exp(-lam_t), eta)
        h_ = -math.log(sd) - lam_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * math.exp(-h_) * x - alpha_t * math.expm1(-h_) * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + run.noise(sigma, sigma_next) * (alpha_t * s_noise * su)
    return x


def ddpm(run: Run, x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """DDPM ancestral sampling (Ho et al. 2020) with the posterior variance, in VP variables.

    Each step maps x to x_vp = x / sqrt(1 + sigma^2), takes the DDPM posterior step between
    alphas_cumprod 1/(1 + sigma^2) and 1/(1 + sigma_next^2), and maps back.
    """
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        eps = (x - denoised) / sigma
        x_vp = x / math.sqrt(1.0 + sigma**2)
        ac = 1 / (sigma**2 + 1)
        ac_prev = 1 / (sigma_next**2 + 1)
        alpha = ac / ac_prev
        mu = math.sqrt(1.0 / alpha) * (x_vp - ((1 - alpha) / math.sqrt(1 - ac)) * eps)
        if sigma_next > 0:
            std = math.sqrt((1 - alpha) * (1.0 - ac_prev) / (1.0 - ac))
            mu = mu + run.noise(sigma, sigma_next) * std
            x = mu * math.sqrt(1.0 + sigma_next**2)
        else:
            x = mu
    return x


def ddim(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    eta: float = 0.0,
    s_noise: float = 1.0,
    prev_sigmas: np.ndarray | None = None,
) -> np.ndarray:
    """DDIM (Song et al. 2021) in k-diffusion variables.

    With eta = 0 this is exactly an Euler step; eta > 0 adds DDIM's sigma_t(eta) noise, which in
    these variables is the ancestral sigma_up. ``prev_sigmas[i]`` (from
    schedules.diffusers_ddim_sigmas) is the noise level the step targets when it differs from the
    next model-evaluation sigma, as in diffusers' DDIMScheduler: the latent is then re-read at
    sigmas[i + 1] (x_vp kept, x rescaled by sqrt((1 + sigmas[i+1]^2) / (1 + prev^2))).
    """
    n = len(sigmas) - 1
    if prev_sigmas is not None:
        prev_sigmas = np.asarray(prev_sigmas, dtype=np.float64)
        if (
            prev_sigmas.shape != (n,)
            or np.any(prev_sigmas < 0)
            or not np.all(np.isfinite(prev_sigmas))
        ):
            raise SamplerError(f"ddim: prev_sigmas must be {n} finite non-negative sigmas")
    for i in range(n):
        run.step = i
        sigma = float(sigmas[i])
        target = float(sigmas[i + 1]) if prev_sigmas is None else float(prev_sigmas[i])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, target, eta)
        x = denoised + to_d(x, sigma, denoised) * sigma_down
        if target > 0 and sigma_up > 0:
            x = x + run.noise(sigma, target) * (s_noise * sigma_up)
        reread = float(sigmas[i + 1])
        if reread != target:
            x = x * math.sqrt((1.0 + reread**2) / (1.0 + target**2))
    return x


def lcm(run: Run, x: np.ndarray, sigmas: np.ndarray, *, s_noise: float = 1.0) -> np.ndarray:
    """Latent Consistency Model multistep sampling: jump to x0, re-noise to the next sigma."""
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        x = denoised
        if sigma_next > 0:
            noise = run.noise(sigma, sigma_next) * s_noise
            if run.flow:
                x = sigma_next * noise + (1.0 - sigma_next) * x
            else:
                x = x + noise * sigma_next
    return x
