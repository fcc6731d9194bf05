"""SA-Solver (Xue et al. 2023, arXiv:2309.05019): stochastic Adams predictor-corrector.

Data-prediction form in half log-SNR lambda. The SDE strength tau is ``eta`` inside a sigma window
(ComfyUI: 20%..80% of the model's timesteps, needs ``model_sigmas``) and 0 outside; tau = 0
everywhere (eta = 0) gives a deterministic multistep ODE solver.
"""

from __future__ import annotations

import math

import numpy as np

from latentrt.errors import SamplerError

from ._core import Param, Run, offset_first_sigma
from .schedules import percent_to_sigma


def exponential_coefficients(s: float, t: float, order: int, tau: float) -> np.ndarray:
    """(1+tau^2) * integral_s^t exp((1+tau^2)(u - t)) u^p du for p = 0..order-1 (by parts)."""
    tau_mul = 1 + tau**2
    h = t - s
    p = np.arange(order, dtype=np.float64)
    terms = t**p - s**p * math.exp(-tau_mul * h)
    depth = p[:, None] - p[None, :]
    log_fact = np.array([math.lgamma(k + 1) for k in range(order)])
    coeff = log_fact[:, None] - log_fact[None, :] - depth * math.log(tau_mul)
    signs = np.where(depth % 2 == 0, 1.0, -1.0)
    mat = np.tril(np.exp(coeff) * signs)
    return mat @ terms


def adams_coefficients(
    alpha_t: float, lambdas: np.ndarray, lam_s: float, lam_t: float, tau: float
) -> np.ndarray:
    """Weights b_k of the x0 estimates at ``lambdas`` for a step lam_s -> lam_t (Lagrange basis)."""
    n = lambdas.size
    exp_coeffs = exponential_coefficients(lam_s, lam_t, n, tau)
    vander_t = np.vander(lambdas, n, increasing=True).T
    return alpha_t * np.linalg.solve(vander_t, exp_coeffs)


def sa_solver(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    sde_start_percent: float = 0.2,
    sde_end_percent: float = 0.8,
    model_sigmas: np.ndarray | None = None,
) -> np.ndarray:
    """SA-Solver with predictor order 3 and corrector order 4 by default.

    Without ``model_sigmas`` the stochastic window cannot be placed by percent and covers the whole
    sigma range.
    """
    if not (1 <= predictor_order <= 6 and 1 <= corrector_order <= 6):
        raise SamplerError("sa_solver: predictor_order and corrector_order must be in 1..6")
    if model_sigmas is not None:
        start_sigma = percent_to_sigma(sde_start_percent, model_sigmas)
        end_sigma = percent_to_sigma(sde_end_percent, model_sigmas)
    else:
        start_sigma, end_sigma = math.inf, 0.0

    def tau_func(sigma: float) -> float:
        if eta <= 0:
            return 0.0
        return eta if start_sigma >= sigma >= end_sigma else 0.0

    p = Param(run.flow)
    sigmas = offset_first_sigma(sigmas, run.flow)
    lambdas = np.array([p.lam(float(s)) if s > 0 else math.inf for s in sigmas])
    max_used = max(predictor_order, corrector_order)
    n = len(sigmas) - 1
    lower_order_to_end = sigmas[-1] == 0
    x_pred = x
    h = 0.0
    tau_t = 0.0
    noise = None
    preds: list[np.ndarray] = []
    for i in range(n):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x_pred, sigma)
        run.callback(i, x_pred, sigma, sigma, denoised)
        preds.append(denoised)
        preds = preds[-max_used:]
        p_order = min(predictor_order, len(preds))
        c_order = (
            0 if i == 0 or (sigma_next == 0 and not use_pece) else min(corrector_order, len(preds))
        )
        if lower_order_to_end:
            p_order = min(p_order, n - 1 - i)
            c_order = min(c_order, n - i)
        if c_order == 0:
            x = x_pred
        else:
            sigma_prev = float(sigmas[i - 1])
            b = adams_coefficients(
                sigma * math.exp(lambdas[i]),
                lambdas[i - c_order + 1 : i + 1],
                lambdas[i - 1],
                lambdas[i],
                tau_t,
            )
            x = (sigma / sigma_prev) * math.exp(-(tau_t**2) * h) * x
            for coeff, pred in zip(b, preds[-c_order:], strict=True):
                x = x + float(coeff) * pred
            if tau_t > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = run.denoise(x, sigma)
                preds[-1] = denoised
        if sigma_next == 0:
            x_pred = denoised
            continue
        tau_t = tau_func(sigma_next)
        b = adams_coefficients(
            sigma_next * math.exp(lambdas[i + 1]),
            lambdas[i - p_order + 1 : i + 1],
            lambdas[i],
            lambdas[i + 1],
            tau_t,
        )
        h = float(lambdas[i + 1] - lambdas[i])
        x_pred = (sigma_next / sigma) * math.exp(-(tau_t**2) * h) * x
        for coeff, pred in zip(b, preds[-p_order:], strict=True):
            x_pred = x_pred + float(coeff) * pred
        if tau_t > 0 and s_noise > 0:
            noise = run.noise(sigma, sigma_next) * (
                sigma_next * math.sqrt(-math.expm1(-2 * tau_t**2 * h)) * s_noise
            )
            x_pred = x_pred + noise
    return x_pred
