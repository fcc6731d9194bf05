"""latentrt.samplers: noise schedules, sigma schedulers and k-diffusion / ComfyUI samplers in numpy.

``sample(name, denoise, x, sigmas)`` runs a sampler; ``get_sigmas(scheduler, steps, model_sigmas)``
builds the sigma table from a model's training schedule (see ``schedules``).
"""

from .api import SAMPLERS, check_sigmas, sample, sampler_options
from .noise import BrownianTree, BrownianTreeNoiseSampler, default_noise_sampler, make_rng
from .prediction import PREDICTION_TYPES, denoised_from_output, input_scale
from .schedulers import SCHEDULERS, beta_cdf, beta_ppf, get_sigmas
from .schedules import (
    BETA_SCHEDULES,
    TIMESTEP_SPACINGS,
    alphas_cumprod_for,
    betas_for,
    diffusers_ddim_sigmas,
    diffusers_euler_sigmas,
    diffusers_timesteps,
    flow_sigmas,
    percent_to_sigma,
    rescale_zero_terminal_snr,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
    time_snr_shift,
)

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULERS",
    "TIMESTEP_SPACINGS",
    "BrownianTree",
    "BrownianTreeNoiseSampler",
    "alphas_cumprod_for",
    "beta_cdf",
    "beta_ppf",
    "betas_for",
    "check_sigmas",
    "default_noise_sampler",
    "denoised_from_output",
    "diffusers_ddim_sigmas",
    "diffusers_euler_sigmas",
    "diffusers_timesteps",
    "flow_sigmas",
    "get_sigmas",
    "input_scale",
    "make_rng",
    "percent_to_sigma",
    "rescale_zero_terminal_snr",
    "sample",
    "sampler_options",
    "sigma_to_t",
    "sigmas_from_alphas_cumprod",
    "t_to_sigma",
    "time_snr_shift",
]
