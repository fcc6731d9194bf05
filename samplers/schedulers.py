"""Sigma schedulers by ComfyUI's names: pick the sigmas a sampler walks, from a model's sigma table.

Every scheduler takes ``(steps, model_sigmas)`` where ``model_sigmas`` is the model's ascending
training table (see schedules.sigmas_from_alphas_cumprod / flow_sigmas) and returns a descending
float64 array ending in 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from latentrt.errors import SamplerError

from .schedules import _check_table, t_to_sigma


def _append_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(sigmas, dtype=np.float64), [0.0]])


def karras(steps: int, model_sigmas: np.ndarray, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) schedule: uniform in sigma^(1/rho) between the table's ends."""
    table = _check_table(model_sigmas)
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = table[0] ** (1.0 / rho), table[-1] ** (1.0 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(steps: int, model_sigmas: np.ndarray) -> np.ndarray:
    """Uniform in log sigma between the table's ends."""
    table = _check_table(model_sigmas)
    return _append_zero(np.exp(np.linspace(math.log(table[-1]), math.log(table[0]), steps)))


def normal(steps: int, model_sigmas: np.ndarray) -> np.ndarray:
    """Timesteps uniform from the last to the first training timestep (log-sigma interpolated)."""
    table = _check_table(model_sigmas)
    return _append_zero(t_to_sigma(np.linspace(table.size - 1, 0, steps), table))


def sgm_uniform(steps: int, model_sigmas: np.ndarray) -> np.ndarray:
    """Like normal but steps + 1 uniform timesteps with the last (t = 0) dropped (SGM/LCM style)."""
    table = _check_table(model_sigmas)
    return _append_zero(t_to_sigma(np.linspace(table.size - 1, 0, steps + 1)[:-1], table))


def simple(steps: int, model_sigmas: np.ndarray) -> np.ndarray:
    """Every len/steps-th table entry counted from the top (ComfyUI "simple")."""
    table = _check_table(model_sigmas)
    stride = table.size / steps
    idx = (np.arange(steps) * stride).astype(np.int64)
    return _append_zero(table[::-1][idx])


def ddim_uniform(steps: int, model_sigmas: np.ndarray) -> np.ndarray:
    """Original DDIM uniform skip: entries 1, 1 + c, 1 + 2c, ... with c = len // steps.

    ComfyUI keeps adding entries while they exist, which can give more than ``steps`` of them when
    len is not a multiple of steps; here exactly ``min(steps, number that exist)`` are taken.
    """
    table = _check_table(model_sigmas)
    stride = max(table.size // steps, 1)
    idx = np.arange(1, table.size, stride)[:steps]
    return _append_zero(table[idx][::-1])


def _betacf(x: np.ndarray, a: float, b: float, iters: int = 300) -> np.ndarray:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = np.where(np.abs(d) < tiny, tiny, d)
    d = 1.0 / d
    h = d.copy()
    for m in range(1, iters + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        delta = d * c
        h = h * delta
        if np.all(np.abs(delta - 1.0) < 1e-15):
            break
    return h


def beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b) (continued fraction, vectorized)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    out = np.where(x >= 1.0, 1.0, 0.0)
    inner = (x > 0.0) & (x < 1.0)
    xi = x[inner]
    lbeta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    with np.errstate(divide="ignore"):
        front = np.exp(a * np.log(xi) + b * np.log1p(-xi) - lbeta)
    direct = xi < (a + 1.0) / (a + b + 2.0)
    res = np.empty_like(xi)
    res[direct] = front[direct] * _betacf(xi[direct], a, b) / a
    res[~direct] = 1.0 - front[~direct] * _betacf(1.0 - xi[~direct], b, a) / b
    out[inner] = res
    return out


def beta_ppf(q: np.ndarray, a: float, b: float) -> np.ndarray:
    """Quantile function of the Beta(a, b) distribution by bisection on beta_cdf."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        below = beta_cdf(mid, a, b) < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    out = 0.5 * (lo + hi)
    return np.where(q <= 0.0, 0.0, np.where(q >= 1.0, 1.0, out))


def beta(steps: int, model_sigmas: np.ndarray, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Timesteps at Beta(alpha, beta) quantiles (Lee et al. 2024, arXiv:2407.12173), rounded.

    Repeated timesteps are dropped as ComfyUI does, so many steps can give fewer than steps + 1.
    """
    table = _check_table(model_sigmas)
    total = table.size - 1
    q = 1.0 - np.linspace(0.0, 1.0, steps, endpoint=False)
    ts = np.rint(beta_ppf(q, alpha, beta) * total).astype(np.int64)
    keep = np.concatenate([[True], ts[1:] != ts[:-1]])
    return _append_zero(table[ts[keep]])


def linear_quadratic(
    steps: int,
    model_sigmas: np.ndarray,
    threshold_noise: float = 0.025,
    linear_steps: int | None = None,
) -> np.ndarray:
    """Mochi's schedule: linear up to threshold_noise, then quadratic, scaled by sigma_max."""
    table = _check_table(model_sigmas)
    if steps == 1:
        return np.array([1.0, 0.0]) * table[-1]
    if linear_steps is None:
        linear_steps = steps // 2
    if not 0 < linear_steps < steps:
        raise SamplerError(f"linear_steps must be in 1..{steps - 1}, got {linear_steps}")
    lin = np.arange(linear_steps) * threshold_noise / linear_steps
    step_diff = linear_steps - threshold_noise * steps
    quad_steps = steps - linear_steps
    quad_coef = step_diff / (linear_steps * quad_steps**2)
    lin_coef = threshold_noise / linear_steps - 2 * step_diff / quad_steps**2
    const = quad_coef * linear_steps**2
    i = np.arange(linear_steps, steps, dtype=np.float64)
    quad = quad_coef * i**2 + lin_coef * i + const
    return (1.0 - np.concatenate([lin, quad, [1.0]])) * table[-1]


def kl_optimal(steps: int, model_sigmas: np.ndarray) -> np.ndarray:
    """KL-optimal schedule (Sabour et al. 2024): uniform in arctan(sigma)."""
    table = _check_table(model_sigmas)
    if steps == 1:
        return _append_zero(table[-1:])
    w = np.arange(steps, dtype=np.float64) / (steps - 1)
    return _append_zero(np.tan(w * math.atan(table[0]) + (1.0 - w) * math.atan(table[-1])))


SCHEDULERS: dict[str, Callable[..., np.ndarray]] = {
    "normal": normal,
    "karras": karras,
    "exponential": exponential,
    "sgm_uniform": sgm_uniform,
    "simple": simple,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}


def get_sigmas(name: str, steps: int, model_sigmas: np.ndarray, **options: float) -> np.ndarray:
    """Descending sigmas for ``steps`` steps (steps + 1 values ending in 0.0) by scheduler name."""
    fn = SCHEDULERS.get(name)
    if fn is None:
        raise SamplerError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SamplerError(f"steps must be an integer >= 1, got {steps!r}")
    try:
        sigmas = fn(int(steps), model_sigmas, **options)
    except TypeError as exc:
        raise SamplerError(f"bad option for scheduler {name!r}: {exc}") from None
    return np.asarray(sigmas, dtype=np.float64)
