"""Training noise schedules and the conversions between timesteps and k-diffusion sigmas.

k-diffusion variables: ``x = x0 + sigma * eps``. A discrete VP model trained with cumulative
alphas ``ac[t]`` sees ``x_vp = sqrt(ac) * x0 + sqrt(1 - ac) * eps``, so ``sigma = sqrt((1-ac)/ac)``
and ``x_vp = x / sqrt(1 + sigma**2)``. Flow-matching models use ``x = (1 - s) * x0 + s * eps``
with ``s`` in [0, 1] and no rescaling.
"""

from __future__ import annotations

import math

import numpy as np

from latentrt.errors import SamplerError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# diffusers replaces a zero terminal alphas_cumprod by this value so that sigma stays finite.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


def _cosine_alpha_bar(t: np.ndarray) -> np.ndarray:
    return np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for(
    schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int
) -> np.ndarray:
    """Betas of a training schedule by diffusers' name (float64, length num_train_timesteps)."""
    n = int(num_train_timesteps)
    if n < 1:
        raise SamplerError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        t1 = np.arange(n, dtype=np.float64) / n
        t2 = np.arange(1, n + 1, dtype=np.float64) / n
        return np.minimum(1.0 - _cosine_alpha_bar(t2) / _cosine_alpha_bar(t1), 0.999)
    raise SamplerError(f"unknown beta schedule {schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so the final timestep has zero SNR (Lin et al. 2023, Algorithm 1)."""
    betas = np.asarray(betas, dtype=np.float64)
    sqrt_ac = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    ac = sqrt_ac**2
    alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return 1.0 - alphas


def alphas_cumprod_for(
    schedule: str,
    beta_start: float,
    beta_end: float,
    num_train_timesteps: int,
    *,
    rescale_betas_zero_snr: bool = False,
) -> np.ndarray:
    """Cumulative product of (1 - beta) for a training schedule, optionally zero-terminal-SNR."""
    betas = betas_for(schedule, beta_start, beta_end, num_train_timesteps)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return np.cumprod(1.0 - betas)


def sigmas_from_alphas_cumprod(
    alphas_cumprod: np.ndarray, *, zero_snr_alpha_cumprod: float = ZERO_SNR_ALPHA_CUMPROD
) -> np.ndarray:
    """Ascending sigma table sqrt((1 - ac) / ac) of a discrete model (k-diffusion DiscreteSchedule).

    A zero alphas_cumprod (zero terminal SNR) is replaced by ``zero_snr_alpha_cumprod`` as diffusers
    does, so the table stays finite.
    """
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if ac.ndim != 1 or ac.size < 2:
        raise SamplerError(
            f"alphas_cumprod must be a 1-D array of >= 2 values, got shape {ac.shape}"
        )
    if np.any(~np.isfinite(ac)) or np.any(ac < 0) or np.any(ac > 1):
        raise SamplerError("alphas_cumprod must lie in [0, 1]")
    ac = np.where(ac == 0.0, zero_snr_alpha_cumprod, ac)
    return np.sqrt((1.0 - ac) / ac)


def _check_table(model_sigmas: np.ndarray) -> np.ndarray:
    table = np.asarray(model_sigmas, dtype=np.float64)
    if table.ndim != 1 or table.size < 2:
        raise SamplerError(
            f"model_sigmas must be a 1-D table of >= 2 values, got shape {table.shape}"
        )
    if not np.all(np.isfinite(table)) or np.any(table <= 0):
        raise SamplerError("model_sigmas must be finite and positive")
    if np.any(np.diff(table) <= 0):
        raise SamplerError("model_sigmas must be strictly ascending (index = training timestep)")
    return table


def sigma_to_t(sigma: np.ndarray | float, model_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of a sigma: linear interpolation in log sigma, clamped."""
    log_table = np.log(_check_table(model_sigmas))
    log_sigma = np.log(np.asarray(sigma, dtype=np.float64))
    return np.interp(log_sigma, log_table, np.arange(log_table.size, dtype=np.float64))


def t_to_sigma(t: np.ndarray | float, model_sigmas: np.ndarray) -> np.ndarray:
    """Sigma at a fractional timestep: linear interpolation of log sigma between table entries."""
    log_table = np.log(_check_table(model_sigmas))
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, log_table.size - 1)
    return np.exp(np.interp(t, np.arange(log_table.size, dtype=np.float64), log_table))


def percent_to_sigma(percent: float, model_sigmas: np.ndarray) -> float:
    """Sigma at a fraction of the denoising process (ComfyUI's percent_to_sigma, discrete models)."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    table = _check_table(model_sigmas)
    return float(t_to_sigma((1.0 - percent) * (table.size - 1), table))


def time_snr_shift(shift: float, t: np.ndarray | float) -> np.ndarray:
    """Shifted flow-matching time: shift * t / (1 + (shift - 1) * t) (SD3 / Flux resolution shift)."""
    t = np.asarray(t, dtype=np.float64)
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def flow_sigmas(shift: float = 1.0, num_train_timesteps: int = 1000) -> np.ndarray:
    """Ascending sigma table of a discrete flow-matching model: shifted i/N for i = 1..N."""
    n = int(num_train_timesteps)
    if n < 2:
        raise SamplerError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    return time_snr_shift(shift, np.arange(1, n + 1, dtype=np.float64) / n)


def diffusers_timesteps(
    steps: int,
    num_train_timesteps: int = 1000,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """Integer inference timesteps (descending) as diffusers' DDIM/DDPM/Euler schedulers pick them."""
    if steps < 1:
        raise SamplerError(f"steps must be >= 1, got {steps}")
    n = int(num_train_timesteps)
    if steps > n:
        raise SamplerError(f"steps ({steps}) cannot exceed num_train_timesteps ({n})")
    if timestep_spacing == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1]
    elif timestep_spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1] + steps_offset
    elif timestep_spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)) - 1
    else:
        raise SamplerError(
            f"unknown timestep_spacing {timestep_spacing!r}; valid: {', '.join(TIMESTEP_SPACINGS)}"
        )
    return ts.astype(np.int64)


def _sigma_of_ac(ac: np.ndarray) -> np.ndarray:
    return np.sqrt((1.0 - ac) / ac)


def diffusers_ddim_sigmas(
    alphas_cumprod: np.ndarray,
    steps: int,
    *,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma table and per-step target sigmas that reproduce diffusers' DDIMScheduler.

    Returns ``(sigmas, prev_sigmas)``: ``sigmas`` holds the sigma at each inference timestep followed
    by the final sigma DDIM steps to (0.0 if set_alpha_to_one else that of alphas_cumprod[0]);
    ``prev_sigmas[i]`` is the sigma of DDIM's ``t - num_train_timesteps // steps`` target, which
    differs from ``sigmas[i + 1]`` for "linspace"/"trailing" spacing. Pass it to the ``ddim`` sampler
    as ``prev_sigmas=`` to reproduce diffusers exactly. In k-diffusion variables diffusers' latent is
    ``x / sqrt(1 + sigma**2)`` at the noise level the step reached.
    """
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    n = ac.size
    ts = diffusers_timesteps(steps, n, timestep_spacing, steps_offset)
    final_ac = 1.0 if set_alpha_to_one else ac[0]
    prev_t = ts - n // steps
    prev_ac = np.where(prev_t >= 0, ac[np.clip(prev_t, 0, n - 1)], final_ac)
    sigmas = np.concatenate([_sigma_of_ac(ac[ts]), [_sigma_of_ac(np.float64(final_ac))]])
    return sigmas, _sigma_of_ac(prev_ac)


def diffusers_euler_sigmas(
    alphas_cumprod: np.ndarray,
    steps: int,
    *,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    final_sigmas_type: str = "zero",
) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps and sigma table of diffusers' EulerDiscreteScheduler (interpolation_type="linear").

    Returns ``(timesteps, sigmas)``: float timesteps (linspace spacing is not rounded) and
    ``steps + 1`` sigmas, linearly interpolated in sigma as diffusers does, ending in 0.0 or sigma_min.
    """
    if steps < 1:
        raise SamplerError(f"steps must be >= 1, got {steps}")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    n = ac.size
    if timestep_spacing == "linspace":
        ts = np.linspace(0, n - 1, steps)[::-1].copy()
    elif timestep_spacing in ("leading", "trailing"):
        ts = diffusers_timesteps(steps, n, timestep_spacing, steps_offset).astype(np.float64)
    else:
        raise SamplerError(
            f"unknown timestep_spacing {timestep_spacing!r}; valid: {', '.join(TIMESTEP_SPACINGS)}"
        )
    table = _sigma_of_ac(ac)
    if final_sigmas_type == "zero":
        last = 0.0
    elif final_sigmas_type == "sigma_min":
        last = float(table[0])
    else:
        raise SamplerError(
            f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}"
        )
    sigmas = np.concatenate([np.interp(ts, np.arange(n, dtype=np.float64), table), [last]])
    return ts, sigmas
