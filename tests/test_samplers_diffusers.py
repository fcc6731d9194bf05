"""latentrt.samplers against diffusers' schedulers (oracle): same timesteps, same noise.

The model is the exact Gaussian-mixture denoiser expressed as an epsilon prediction. VP schedulers
(DDIM, DDPM, LCM, DPM-Solver, UniPC, DEIS) hold x_vp = x / sqrt(1 + sigma^2); the Euler family
holds x itself.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

from latentrt.samplers import (
    alphas_cumprod_for,
    betas_for,
    diffusers_ddim_sigmas,
    diffusers_euler_sigmas,
    diffusers_timesteps,
    rescale_zero_terminal_snr,
    sample,
    time_snr_shift,
)

from .kdiff_oracle import GaussianMixture, NoiseTable

SHAPE = (1, 4, 6, 6)
GM = GaussianMixture()
CFG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
RTOL = 1e-5


def _den(x, sigma):
    return GM.denoise_np(x, sigma)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _eps_vp(ac: np.ndarray, x_vp: torch.Tensor, t) -> torch.Tensor:
    a = float(ac[int(t)])
    sigma = ((1 - a) / a) ** 0.5
    x = x_vp.numpy() / a**0.5
    return torch.from_numpy((x - _den(x, sigma)) / sigma)


class _PatchedNoise:
    """Replace randn_tensor in a diffusers scheduler module by the shared noise table."""

    def __init__(self, module: str, noise: NoiseTable) -> None:
        self.mod = importlib.import_module(module)
        self.sampler = noise.torch()

    def __enter__(self):
        self.orig = self.mod.randn_tensor
        self.mod.randn_tensor = lambda *args, **kwargs: self.sampler(0.0, 0.0)
        return self

    def __exit__(self, *exc):
        self.mod.randn_tensor = self.orig


def _start(seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(SHAPE))


@pytest.mark.parametrize(
    ("spacing", "offset", "alpha_to_one", "steps"),
    [("leading", 1, False, 20), ("trailing", 0, True, 30), ("linspace", 0, True, 30)],
)
def test_ddim_reproduces_diffusers(spacing, offset, alpha_to_one, steps):
    sch = DDIMScheduler(
        **CFG,
        clip_sample=False,
        set_alpha_to_one=alpha_to_one,
        steps_offset=offset,
        timestep_spacing=spacing,
    )
    sch.set_timesteps(steps)
    ac_ref = sch.alphas_cumprod.double().numpy()
    x_vp = _start()
    xd = x_vp.clone()
    for t in sch.timesteps:
        xd = sch.step(_eps_vp(ac_ref, xd, t), t, xd, eta=0.0).prev_sample
    ac = alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000)
    np.testing.assert_array_equal(
        diffusers_timesteps(steps, 1000, spacing, offset), sch.timesteps.numpy()
    )
    sigmas, prev = diffusers_ddim_sigmas(
        ac, steps, timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=alpha_to_one
    )
    x = x_vp.numpy() * np.sqrt(1 + sigmas[0] ** 2)
    out = sample("ddim", _den, x, sigmas, prev_sigmas=prev)
    assert _rel(out / np.sqrt(1 + sigmas[-1] ** 2), xd.numpy()) <= RTOL


@pytest.mark.parametrize(("spacing", "offset"), [("linspace", 0), ("leading", 1), ("trailing", 0)])
def test_euler_reproduces_diffusers(spacing, offset):
    sch = EulerDiscreteScheduler(**CFG, timestep_spacing=spacing, steps_offset=offset)
    sch.set_timesteps(25)
    x = _start(1) * sch.init_noise_sigma
    xd = x.clone()
    for t in sch.timesteps:
        sch.scale_model_input(xd, t)
        sigma = float(sch.sigmas[sch.step_index])
        eps = torch.from_numpy((xd.numpy() - _den(xd.numpy(), sigma)) / sigma)
        xd = sch.step(eps, t, xd).prev_sample
    ac = alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000)
    ts, sigmas = diffusers_euler_sigmas(ac, 25, timestep_spacing=spacing, steps_offset=offset)
    np.testing.assert_allclose(ts, sch.timesteps.numpy(), atol=1e-3)
    out = sample("euler", _den, x.numpy().copy(), sigmas)
    assert _rel(out, xd.numpy()) <= RTOL


@pytest.mark.parametrize(
    ("cls", "name", "noise_module"),
    [
        (EulerAncestralDiscreteScheduler, "euler_ancestral", "scheduling_euler_ancestral_discrete"),
        (HeunDiscreteScheduler, "heun", None),
        (LMSDiscreteScheduler, "lms", None),
    ],
)
def test_k_style_schedulers_match_diffusers(cls, name, noise_module):
    sch = cls(**CFG)
    sch.set_timesteps(12)
    x = _start(2) * sch.init_noise_sigma
    noise = NoiseTable(SHAPE, 3)
    xd = x.clone()
    patch = _PatchedNoise(f"diffusers.schedulers.{noise_module}", noise) if noise_module else None
    if patch:
        patch.__enter__()
    try:
        for t in sch.timesteps:
            sch.scale_model_input(xd, t)
            sigma = float(sch.sigmas[sch.step_index])
            eps = torch.from_numpy((xd.numpy() - _den(xd.numpy(), sigma)) / sigma)
            xd = sch.step(eps, t, xd).prev_sample
    finally:
        if patch:
            patch.__exit__()
    sigmas = sch.sigmas.double().numpy()
    if cls is HeunDiscreteScheduler:
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    out = sample(name, _den, x.numpy().copy(), sigmas, noise_sampler=noise.numpy())
    assert _rel(out, xd.numpy()) <= RTOL


VP_CASES = [
    (DPMSolverMultistepScheduler, {}, "dpmpp_2m", {}, 12, None),
    (DPMSolverMultistepScheduler, {}, "dpmpp_2m", {}, 20, None),
    (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++"},
        "dpmpp_2m_sde",
        {},
        12,
        "scheduling_dpmsolver_multistep",
    ),
    (UniPCMultistepScheduler, {"solver_order": 2}, "uni_pc_bh2", {"order": 2}, 12, None),
    (UniPCMultistepScheduler, {"solver_order": 3}, "uni_pc_bh2", {"order": 3}, 20, None),
    # diffusers' bh1 divides by B(h) = h = inf when stepping to sigma 0; end at sigma_min instead.
    (
        UniPCMultistepScheduler,
        {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        "uni_pc",
        {"order": 3},
        12,
        None,
    ),
    (DEISMultistepScheduler, {"solver_order": 3}, "deis", {"deis_mode": "logrho"}, 16, None),
    (
        DEISMultistepScheduler,
        {"solver_order": 2},
        "deis",
        {"deis_mode": "logrho", "max_order": 2},
        16,
        None,
    ),
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("cls", "extra", "name", "opts", "steps", "noise_module"), VP_CASES)
def test_vp_multistep_schedulers_match_diffusers(cls, extra, name, opts, steps, noise_module):
    sch = cls(**CFG, **extra)
    sch.set_timesteps(steps)
    # diffusers keeps sigmas in float32 and DEIS forms its log-rho weights from them; use float64
    # so the comparison measures the algorithm.
    sch.sigmas = sch.sigmas.double()
    ac = sch.alphas_cumprod.double().numpy()
    x_vp = _start(4)
    noise = NoiseTable(SHAPE, 5)
    xd = x_vp.clone()
    patch = _PatchedNoise(f"diffusers.schedulers.{noise_module}", noise) if noise_module else None
    if patch:
        patch.__enter__()
    try:
        for t in sch.timesteps:
            xd = sch.step(_eps_vp(ac, xd, t), t, xd).prev_sample
    finally:
        if patch:
            patch.__exit__()
    sigmas = sch.sigmas.numpy()
    x = x_vp.numpy() * np.sqrt(1 + sigmas[0] ** 2)
    out = sample(name, _den, x, sigmas, noise_sampler=noise.numpy(), **opts)
    assert _rel(out / np.sqrt(1 + sigmas[-1] ** 2), xd.numpy()) <= RTOL


def _vp_table(sch):
    ac = sch.alphas_cumprod.double().numpy()
    ts = sch.timesteps.numpy()
    return ac, np.concatenate([np.sqrt((1 - ac[ts]) / ac[ts]), [0.0]])


def test_ddpm_matches_diffusers():
    sch = DDPMScheduler(**CFG, clip_sample=False)
    sch.set_timesteps(25)
    ac, sigmas = _vp_table(sch)
    x_vp = _start(6)
    noise = NoiseTable(SHAPE, 7)
    xd = x_vp.clone()
    with _PatchedNoise("diffusers.schedulers.scheduling_ddpm", noise):
        for t in sch.timesteps:
            xd = sch.step(_eps_vp(ac, xd, t), t, xd).prev_sample
    out = sample(
        "ddpm",
        _den,
        x_vp.numpy() * np.sqrt(1 + sigmas[0] ** 2),
        sigmas,
        noise_sampler=noise.numpy(),
    )
    assert _rel(out, xd.numpy()) <= RTOL


def test_lcm_matches_diffusers():
    sch = LCMScheduler(**CFG)
    sch.set_timesteps(4)
    ac, sigmas = _vp_table(sch)
    timestep_of = {float(s): int(t) for s, t in zip(sigmas, sch.timesteps.numpy(), strict=False)}
    x_vp = _start(8)
    noise = NoiseTable(SHAPE, 9)
    xd = x_vp.clone()
    with _PatchedNoise("diffusers.schedulers.scheduling_lcm", noise):
        for t in sch.timesteps:
            xd = sch.step(_eps_vp(ac, xd, t), t, xd).prev_sample

    def den_lcm(x, sigma):
        # LCM's boundary-condition scalings are the model's (pipeline's) job, not the sampler's.
        c_skip, c_out = sch.get_scalings_for_boundary_condition_discrete(timestep_of[sigma])
        return float(c_out) * _den(x, sigma) + float(c_skip) * x / np.sqrt(1 + sigma**2)

    x = x_vp.numpy() * np.sqrt(1 + sigmas[0] ** 2)
    out = sample("lcm", den_lcm, x, sigmas, noise_sampler=noise.numpy())
    assert _rel(out, xd.numpy()) <= RTOL


def test_flow_euler_matches_flow_match_euler():
    shift = 3.0
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sch.set_timesteps(10)
    sigmas = sch.sigmas.double().numpy()
    # diffusers spaces unshifted times from 1 to the shifted sigma_min, then shifts them.
    unshifted = np.linspace(1.0, float(time_snr_shift(shift, 1 / 1000)), 10)
    np.testing.assert_allclose(sigmas[:-1], time_snr_shift(shift, unshifted), rtol=1e-6)

    def den_flow(x, s):
        # x = (1 - s) x0 + s eps  <=>  x / (1 - s) = x0 + (s / (1 - s)) eps; pure noise at s = 1.
        if s >= 1.0:
            return np.full_like(x, GM.mean)
        return _den(x / (1 - s), s / (1 - s))

    x = _start(10)
    xd = x.clone()
    for t in sch.timesteps:
        s = float(sch.sigmas[sch.step_index or 0])
        velocity = (xd.numpy() - den_flow(xd.numpy(), s)) / s
        xd = sch.step(torch.from_numpy(velocity), t, xd).prev_sample
    sigmas = np.concatenate([sigmas[:-1], [0.0]])
    out = sample("euler", den_flow, x.numpy().copy(), sigmas, flow=True)
    assert _rel(out, xd.numpy()) <= RTOL


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_training_schedules_match_diffusers(schedule):
    sch = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule=schedule
    )
    betas = betas_for(schedule, 0.0001, 0.02, 1000)
    np.testing.assert_allclose(betas, sch.betas.double().numpy(), rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(
        alphas_cumprod_for(schedule, 0.0001, 0.02, 1000),
        sch.alphas_cumprod.double().numpy(),
        rtol=2e-5,
    )
    zsnr = rescale_zero_terminal_snr(betas)
    ref = diffusers_rescale(torch.from_numpy(betas)).numpy()
    np.testing.assert_allclose(zsnr, ref, rtol=1e-10, atol=1e-12)
    assert zsnr[-1] == pytest.approx(1.0)
