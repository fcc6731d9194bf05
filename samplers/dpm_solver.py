"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927): fixed-step "fast" and adaptive-step variants.

Like ComfyUI, both integrate from sigmas[0] to the smallest positive sigma of the table (the
solver works in t = -log sigma and cannot reach 0) and return the latent at that noise level.
"""

from __future__ import annotations

import math

import numpy as np

from latentrt.errors import SamplerError

from ._core import Run, ancestral_step


class _DPMSolver:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.nfe = 0

    @staticmethod
    def sigma(t: float) -> float:
        return math.exp(-t)

    @staticmethod
    def t(sigma: float) -> float:
        return -math.log(sigma)

    def eps(self, cache: dict, key: str, x: np.ndarray, t: float) -> np.ndarray:
        if key not in cache:
            sigma = self.sigma(t)
            cache[key] = (x - self.run.denoise(x, sigma)) / sigma
            self.nfe += 1
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * math.expm1(h) * eps

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (
            x
            - self.sigma(t_next) * math.expm1(h) * eps
            - self.sigma(t_next) / (2 * r1) * math.expm1(h) * (eps_r1 - eps)
        )

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * math.expm1(r2 * h) * eps
            - self.sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x
            - self.sigma(t_next) * math.expm1(h) * eps
            - self.sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)
        )


def _range(sigmas: np.ndarray, name: str) -> tuple[float, float]:
    sigma_min = float(sigmas[-1]) if sigmas[-1] > 0 else float(sigmas[-2])
    sigma_max = float(sigmas[0])
    if sigma_min <= 0 or sigma_max <= 0:
        raise SamplerError(f"{name}: needs a positive sigma range, got [{sigma_min}, {sigma_max}]")
    return sigma_min, sigma_max


def dpm_fast(
    run: Run, x: np.ndarray, sigmas: np.ndarray, *, eta: float = 0.0, s_noise: float = 1.0
) -> np.ndarray:
    """DPM-Solver-Fast: orders 3,3,...,(2,1) over uniform t steps using len(sigmas) - 1 evaluations."""
    sigma_min, sigma_max = _range(sigmas, "dpm_fast")
    nfe = len(sigmas) - 1
    solver = _DPMSolver(run)
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    m = math.floor(nfe / 3) + 1
    ts = np.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        run.step = i
        cache: dict = {}
        t, t_next = float(ts[i]), float(ts[i + 1])
        if eta:
            sd, _ = ancestral_step(solver.sigma(t), solver.sigma(t_next), eta)
            t_next_ = min(t_end, solver.t(sd))
            su = math.sqrt(solver.sigma(t_next) ** 2 - solver.sigma(t_next_) ** 2)
        else:
            t_next_, su = t_next, 0.0
        eps = solver.eps(cache, "eps", x, t)
        run.callback(i, x, solver.sigma(t), solver.sigma(t), x - solver.sigma(t) * eps)
        if order == 1:
            x = solver.step_1(x, t, t_next_, cache)
        elif order == 2:
            x = solver.step_2(x, t, t_next_, cache)
        else:
            x = solver.step_3(x, t, t_next_, cache)
        if su:
            x = x + run.noise(solver.sigma(t), solver.sigma(t_next)) * (su * s_noise)
    return x


def dpm_adaptive(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> np.ndarray:
    """DPM-Solver-12/23 with embedded error estimate and PID step-size control (real error control).

    Only the table's ends are used; the step count follows from rtol/atol. The callback receives
    the error, step size and accept/reject counters as k-diffusion reports them.
    """
    if order not in (2, 3):
        raise SamplerError(f"dpm_adaptive: order must be 2 or 3, got {order}")
    sigma_min, sigma_max = _range(sigmas, "dpm_adaptive")
    solver = _DPMSolver(run)
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    pid_order = 1.5 if eta else order
    b1 = (pcoeff + icoeff + dcoeff) / pid_order
    b2 = -(pcoeff + 2 * dcoeff) / pid_order
    b3 = dcoeff / pid_order
    errs: list[float] = []
    h = abs(h_init)
    s = t_start
    x_prev = x
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    while s < t_end - 1e-5:
        run.step = info["steps"]
        if info["steps"] > 100000:
            raise SamplerError(
                "dpm_adaptive: no convergence after 100000 steps (tolerance too tight)"
            )
        cache: dict = {}
        t = min(t_end, s + h)
        if eta:
            sd, _ = ancestral_step(solver.sigma(s), solver.sigma(t), eta)
            t_ = min(t_end, solver.t(sd))
            su = math.sqrt(solver.sigma(t) ** 2 - solver.sigma(t_) ** 2)
        else:
            t_, su = t, 0.0
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = np.maximum(atol, rtol * np.maximum(np.abs(x_low), np.abs(x_prev)))
        error = float(np.linalg.norm(((x_low - x_high) / delta).ravel()) / math.sqrt(x.size))
        inv_error = 1 / (error + 1e-8)
        if not errs:
            errs = [inv_error, inv_error, inv_error]
        errs[0] = inv_error
        factor = errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= accept_safety
        if accept:
            errs[2], errs[1] = errs[1], errs[0]
        h *= factor
        if accept:
            x_prev = x_low
            x = x_high
            if su:
                x = x + run.noise(solver.sigma(s), solver.sigma(t)) * (su * s_noise)
            s = t
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
        run.callback(
            info["steps"] - 1,
            x,
            solver.sigma(s),
            solver.sigma(s),
            denoised,
            error=error,
            h=h,
            **info,
        )
    return x
