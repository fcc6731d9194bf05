"""Multistep samplers: LMS, DPM++ 2M / 2M SDE / 3M SDE, iPNDM, DEIS and RES multistep.

They reuse earlier denoiser outputs instead of extra evaluations per step. Each takes
``(run, x, sigmas, **options)`` with k-diffusion's / ComfyUI's option names.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import polynomial as P

from latentrt.errors import SamplerError

from ._core import Param, Run, ancestral_step, offset_first_sigma, to_d


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> np.ndarray:
    """Adams-Bashforth weights in sigma: integrals over [s_i, s_{i+1}] of the Lagrange basis."""
    if order - 1 > i:
        raise SamplerError(f"lms: order {order} too high for step {i}")
    nodes = np.array([sigmas[i - k] for k in range(order)], dtype=np.float64)
    out = np.empty(order)
    for j in range(order):
        others = np.delete(nodes, j)
        poly = P.polyfromroots(others) / np.prod(nodes[j] - others)
        antider = P.polyint(poly)
        out[j] = P.polyval(sigmas[i + 1], antider) - P.polyval(sigmas[i], antider)
    return out


def lms(run: Run, x: np.ndarray, sigmas: np.ndarray, *, order: int = 4) -> np.ndarray:
    """Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE, up to ``order``."""
    if order < 1:
        raise SamplerError(f"lms: order must be >= 1, got {order}")
    ds: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma = float(sigmas[i])
        denoised = run.denoise(x, sigma)
        ds.append(to_d(x, sigma, denoised))
        if len(ds) > order:
            ds.pop(0)
        run.callback(i, x, sigma, sigma, denoised)
        coeffs = lms_coefficients(sigmas, i, min(i + 1, order))
        for coeff, d in zip(coeffs, reversed(ds), strict=False):
            x = x + float(coeff) * d
    return x


def dpmpp_2m(run: Run, x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in data prediction."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = (sigma_next / sigma) * x + denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            if old_denoised is None:
                denoised_d = denoised
            else:
                h_last = math.log(float(sigmas[i - 1])) - math.log(sigma)
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


def dpmpp_2m_sde(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> np.ndarray:
    """DPM-Solver++(2M) SDE; ``solver_type`` "midpoint" or "heun" picks the second-order term."""
    if solver_type not in ("heun", "midpoint"):
        raise SamplerError(
            f"dpmpp_2m_sde: solver_type must be 'heun' or 'midpoint', got {solver_type!r}"
        )
    p = Param(run.flow)
    sigmas = offset_first_sigma(sigmas, run.flow)
    old_denoised = None
    h = h_last = None
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lam_s, lam_t = p.lam(sigma), p.lam(sigma_next)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * math.exp(lam_t)
            one_minus = -math.expm1(-h_eta)
            x = (sigma_next / sigma) * math.exp(-h * eta) * x + (alpha_t * one_minus) * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    coeff = alpha_t * (one_minus / (-h_eta) + 1) * (1 / r)
                else:
                    coeff = 0.5 * alpha_t * one_minus * (1 / r)
                x = x + coeff * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                scale = sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                x = x + run.noise(sigma, sigma_next) * scale
        old_denoised = denoised
        h_last = h
    return x


def dpmpp_2m_sde_heun(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "heun",
) -> np.ndarray:
    """DPM-Solver++(2M) SDE with the Heun-type second-order term (ComfyUI's dpmpp_2m_sde_heun)."""
    return dpmpp_2m_sde(run, x, sigmas, eta=eta, s_noise=s_noise, solver_type=solver_type)


def dpmpp_3m_sde(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """DPM-Solver++(3M) SDE: third-order multistep exponential integrator with SDE noise."""
    p = Param(run.flow)
    sigmas = offset_first_sigma(sigmas, run.flow)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lam_s, lam_t = p.lam(sigma), p.lam(sigma_next)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * math.exp(lam_t)
            x = (sigma_next / sigma) * math.exp(-h * eta) * x + (
                alpha_t * -math.expm1(-h_eta)
            ) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            if eta > 0 and s_noise > 0:
                scale = sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                x = x + run.noise(sigma, sigma_next) * scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _ipndm_step(
    x: np.ndarray,
    d: np.ndarray,
    buf: list[np.ndarray],
    order: int,
    sigmas: np.ndarray,
    i: int,
    variable: bool,
) -> np.ndarray:
    t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
    dt = t_next - t_cur
    if order == 1:
        return x + dt * d
    if not variable:
        if order == 2:
            return x + dt * (3 * d - buf[-1]) / 2
        if order == 3:
            return x + dt * (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        return x + dt * (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
    h0, h1 = dt, t_cur - float(sigmas[i - 1])
    if order == 2:
        c1 = (2 + h0 / h1) / 2
        c2 = -(h0 / h1) / 2
        return x + dt * (c1 * d + c2 * buf[-1])
    h2 = float(sigmas[i - 1]) - float(sigmas[i - 2])
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        c1 = (2 + h0 / h1) / 2 + t1
        c2 = -(h0 / h1) / 2 - (1 + h1 / h2) * t1
        c3 = t1 * h1 / h2
        return x + dt * (c1 * d + c2 * buf[-1] + c3 * buf[-2])
    h3 = float(sigmas[i - 2]) - float(sigmas[i - 3])
    t2 = (
        ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
        * (h0 * (h0 + h1) * (h0 + h1 + h2))
        / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    c1 = (2 + h0 / h1) / 2 + t1 + t2
    c2 = -(h0 / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2
    c3 = t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2
    c4 = -t2 * q * h1 / h2
    return x + dt * (c1 * d + c2 * buf[-1] + c3 * buf[-2] + c4 * buf[-3])


def _ipndm(run: Run, x: np.ndarray, sigmas: np.ndarray, max_order: int, variable: bool):
    if not 1 <= max_order <= 4:
        raise SamplerError(f"{run.name}: max_order must be 1..4, got {max_order}")
    buf: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        d = (x - denoised) / sigma
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x = denoised
        else:
            x = _ipndm_step(x, d, buf, order, sigmas, i, variable)
        buf.append(d)
        if len(buf) > max_order - 1:
            buf.pop(0)
    return x


def ipndm(run: Run, x: np.ndarray, sigmas: np.ndarray, *, max_order: int = 4) -> np.ndarray:
    """Improved PNDM (Zhang & Chen 2023): Adams-Bashforth in sigma with fixed (uniform-step) weights."""
    return _ipndm(run, x, sigmas, max_order, variable=False)


def ipndm_v(run: Run, x: np.ndarray, sigmas: np.ndarray, *, max_order: int = 4) -> np.ndarray:
    """iPNDM with variable-step Adams-Bashforth weights (exact for non-uniform sigma grids)."""
    return _ipndm(run, x, sigmas, max_order, variable=True)


# DEIS "tab" maps EDM sigmas to the time of a VP-SDE fitted to sigma in [0.002, 80] (zju-pi/diff-sampler).
_EPS_S, _SMIN, _SMAX = 1e-3, 0.002, 80.0
_VP_BETA_D = 2 * (math.log(_SMIN**2 + 1) / _EPS_S - math.log(_SMAX**2 + 1)) / (_EPS_S - 1)
_VP_BETA_MIN = math.log(_SMAX**2 + 1) - 0.5 * _VP_BETA_D
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)
DEIS_MODES = ("tab", "rhoab", "logrho")


def _deis_u(mode: str, sigma: np.ndarray) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if mode == "tab":
        root = np.sqrt(_VP_BETA_MIN**2 + 2 * _VP_BETA_D * np.log1p(sigma**2))
        return (root - _VP_BETA_MIN) / _VP_BETA_D
    if mode == "rhoab":
        return sigma
    return np.log(sigma)


def _deis_dsigma_du(mode: str, u: np.ndarray) -> np.ndarray:
    if mode == "tab":
        e = np.expm1(0.5 * _VP_BETA_D * u**2 + _VP_BETA_MIN * u)
        return (_VP_BETA_D * u + _VP_BETA_MIN) * (e + 1) / (2 * np.sqrt(e))
    if mode == "rhoab":
        return np.ones_like(u)
    return np.exp(u)


def deis_coefficients(sigmas: np.ndarray, i: int, order: int, mode: str = "tab") -> np.ndarray:
    """DEIS weights: integral over [sigma_i, sigma_{i+1}] of the Lagrange basis in u(sigma).

    u is the fitted VP time ("tab"), sigma itself ("rhoab") or log sigma ("logrho", diffusers'
    DEIS); integrated by 24-point Gauss-Legendre in u.
    """
    nodes = _deis_u(mode, np.array([sigmas[i - k] for k in range(order)]))
    u0, u1 = _deis_u(mode, np.array([sigmas[i], sigmas[i + 1]]))
    u = 0.5 * (u1 - u0) * _GL_X + 0.5 * (u1 + u0)
    w = 0.5 * (u1 - u0) * _GL_W * _deis_dsigma_du(mode, u)
    out = np.empty(order)
    for j in range(order):
        basis = np.ones_like(u)
        for k in range(order):
            if k != j:
                basis = basis * (u - nodes[k]) / (nodes[j] - nodes[k])
        out[j] = np.sum(w * basis)
    return out


def deis(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, max_order: int = 3, deis_mode: str = "tab"
) -> np.ndarray:
    """Diffusion Exponential Integrator Sampler (Zhang & Chen 2023), multistep up to max_order."""
    if deis_mode not in DEIS_MODES:
        raise SamplerError(
            f"deis: deis_mode must be one of {', '.join(DEIS_MODES)}, got {deis_mode!r}"
        )
    if not 1 <= max_order <= 4:
        raise SamplerError(f"deis: max_order must be 1..4, got {max_order}")
    buf: list[np.ndarray] = []
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        d = (x - denoised) / sigma
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (sigma_next - sigma) * d
        else:
            coeffs = deis_coefficients(sigmas, i, order, deis_mode)
            x = x + float(coeffs[0]) * d
            for j in range(1, order):
                x = x + float(coeffs[j]) * buf[-j]
        buf.append(d)
        if len(buf) > max_order - 1:
            buf.pop(0)
    return x


def res_multistep(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 0.0, s_noise: float = 1.0
) -> np.ndarray:
    """Refined exponential solver, second-order multistep (Zhang et al. 2023, arXiv:2308.02157).

    With ``eta`` > 0 it is the ancestral variant (steps to sigma_down and adds noise).
    """
    old_denoised = None
    old_sigma_down = None
    for i in range(len(sigmas) - 1):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        run.callback(i, x, sigma, sigma, denoised)
        if sigma_down == 0 or old_denoised is None:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_old = -math.log(sigma), -math.log(old_sigma_down)
            t_next, t_prev = -math.log(sigma_down), -math.log(float(sigmas[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = phi1 - phi2 / c2 if c2 != 0 else 0.0
            b2 = phi2 / c2 if c2 != 0 else 0.0
            x = math.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigma_next > 0 and sigma_up > 0:
            x = x + run.noise(sigma, sigma_next) * (s_noise * sigma_up)
        old_denoised = denoised
        old_sigma_down = sigma_down
    return x
