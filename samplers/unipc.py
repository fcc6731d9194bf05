"""UniPC (Zhao et al. 2023, arXiv:2302.04867): unified predictor-corrector in data prediction.

The predictor UniP-p uses the last ``order`` x0 estimates; after the model is evaluated at the
predicted point, the corrector UniC re-does the step including that new estimate (raising the
order by one) at no extra evaluation. ``variant`` "bh1" uses B(h) = h, "bh2" B(h) = e^h - 1.
Lambda is the half log-SNR -log(sigma), the same in VP and k-diffusion variables.
"""

from __future__ import annotations

import math

import numpy as np

from latentrt.errors import SamplerError

from ._core import Run

UNIPC_VARIANTS = ("bh1", "bh2")


def _coefficients(rks: np.ndarray, hh: float, order: int, variant: str) -> tuple[np.ndarray, float]:
    """Matrix R (rows rks**k) and vector b of the UniPC order conditions, plus B(h)."""
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.stack(rows), np.array(b), b_h


def _update(
    x: np.ndarray,
    ms: list[np.ndarray],
    lams: list[float],
    lam_t: float,
    sigma_s: float,
    sigma_t: float,
    order: int,
    variant: str,
    model_t: np.ndarray | None,
) -> np.ndarray:
    """One UniP (model_t None) or UniC (model_t given) update from sigma_s to sigma_t."""
    m0, lam_s = ms[-1], lams[-1]
    h = lam_t - lam_s
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lams[-(k + 1)] - lam_s) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    rmat, b, b_h = _coefficients(np.array(rks), hh, order, variant)
    x_t_ = (sigma_t / sigma_s) * x - h_phi_1 * m0
    if model_t is None:
        if not d1s:
            return x_t_
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(rmat[:-1, :-1], b[:-1])
        res = sum(float(rho) * d for rho, d in zip(rhos, d1s, strict=True))
        return x_t_ - b_h * res
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rmat, b)
    res = sum((float(rho) * d for rho, d in zip(rhos[:-1], d1s, strict=True)), 0.0)
    return x_t_ - b_h * (res + float(rhos[-1]) * (model_t - m0))


def uni_pc(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
    use_corrector: bool = True,
) -> np.ndarray:
    """UniPC multistep sampling; ``order`` is capped by the number of steps as in ComfyUI.

    A step that ends at sigma 0 is first order (the x0 estimate), as in diffusers.
    """
    if variant not in UNIPC_VARIANTS:
        raise SamplerError(f"uni_pc: variant must be 'bh1' or 'bh2', got {variant!r}")
    n = len(sigmas) - 1
    max_order = max(1, min(int(order), n - 1)) if n > 1 else 1
    ms: list[np.ndarray] = []
    lams: list[float] = []
    last_x = None
    this_order = 1
    for i in range(n):
        run.step = i
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = run.denoise(x, sigma)
        run.callback(i, x, sigma, sigma, denoised)
        lam = -math.log(sigma)
        if use_corrector and last_x is not None:
            x = _update(
                last_x, ms, lams, lam, float(sigmas[i - 1]), sigma, this_order, variant, denoised
            )
        ms.append(denoised)
        lams.append(lam)
        if len(ms) > max_order:
            ms.pop(0)
            lams.pop(0)
        this_order = min(max_order, n - i) if lower_order_final else max_order
        this_order = min(this_order, len(ms))
        last_x = x
        if sigma_next == 0:
            x = denoised
            this_order = 1
        else:
            x = _update(
                x, ms, lams, -math.log(sigma_next), sigma, sigma_next, this_order, variant, None
            )
    return x


def uni_pc_bh2(
    run: Run,
    x: np.ndarray,
    sigmas: np.ndarray,
    *,
    order: int = 3,
    lower_order_final: bool = True,
    use_corrector: bool = True,
) -> np.ndarray:
    """UniPC with B(h) = e^h - 1 (recommended for guided sampling)."""
    return uni_pc(
        run,
        x,
        sigmas,
        order=order,
        variant="bh2",
        lower_order_final=lower_order_final,
        use_corrector=use_corrector,
    )
