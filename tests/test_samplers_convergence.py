"""Samplers k-diffusion lacks, checked on the exact Gaussian-mixture denoiser two ways.

Deterministic solvers: the error against scipy's DOP853 solution of the probability-flow ODE
(rtol 1e-13) must fall at the method's order (slope of log error vs log steps within 0.3).
Stochastic samplers: 4096 samples must reproduce the data mean and variance within 3 standard
errors, starting from exact samples of the noised data distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from latentrt.samplers import (
    alphas_cumprod_for,
    get_sigmas,
    sample,
    sigmas_from_alphas_cumprod,
)

from .kdiff_oracle import GaussianMixture

GM = GaussianMixture()
SIGMA_MAX, SIGMA_MIN = 80.0, 0.5


def _den(x, sigma):
    return GM.denoise_np(x, sigma)


def _den_flow(x, s):
    """Flow denoiser: x = (1 - s) x0 + s eps  <=>  x / (1 - s) = x0 + s / (1 - s) eps."""
    if s >= 1.0:
        return np.full_like(x, GM.mean)
    return GM.denoise_np(x / (1 - s), s / (1 - s))


@pytest.fixture(scope="module")
def ode_problem():
    x0 = np.random.default_rng(0).standard_normal(32) * SIGMA_MAX
    sol = solve_ivp(
        lambda s, x: (x - _den(x, s)) / s,
        (SIGMA_MAX, SIGMA_MIN),
        x0,
        method="DOP853",
        rtol=1e-13,
        atol=1e-11,
    )
    return x0, sol.y[:, -1]


def _log_grid(n):
    return np.exp(np.linspace(np.log(SIGMA_MAX), np.log(SIGMA_MIN), n + 1))


ORDER_CASES = [
    # heunpp2's weights sigma_{i+1}/(3 sigma_0) do not meet the second-order condition.
    ("heunpp2", {}, 1, (16, 32, 64)),
    ("deis", {}, 3, (32, 64, 128)),
    ("deis", {"deis_mode": "rhoab"}, 3, (32, 64, 128)),
    ("res_multistep", {}, 2, (32, 64, 128)),
    ("sa_solver", {"eta": 0.0}, 4, (32, 64, 128)),
    # UniC raises UniP-p to order p + 1; the default lower-order final step would cap it at 2.
    ("uni_pc", {"order": 2, "lower_order_final": False}, 3, (32, 64, 128)),
    ("uni_pc", {"order": 3, "lower_order_final": False}, 4, (32, 64, 128)),
    ("uni_pc_bh2", {"order": 3, "lower_order_final": False}, 4, (32, 64, 128)),
]


@pytest.mark.parametrize(("name", "opts", "order", "steps"), ORDER_CASES, ids=str)
def test_deterministic_solver_converges_at_its_order(ode_problem, name, opts, order, steps):
    x0, ref = ode_problem
    errors = [
        float(np.abs(sample(name, _den, x0.copy(), _log_grid(n), **opts) - ref).max())
        for n in steps
    ]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.3, (slope, errors)


N_SAMPLES = 4096
MODEL_SIGMAS = sigmas_from_alphas_cumprod(alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000))


def _data(rng, n):
    k = rng.choice(GM.w.size, size=n, p=GM.w)
    return GM.mu[k] + GM.s[k] * rng.standard_normal(n)


def _assert_matches_data(out):
    se_mean = np.sqrt(GM.var / out.size)
    se_var = np.sqrt((GM.moment4() - GM.var**2) / out.size)
    assert abs(out.mean() - GM.mean) <= 3 * se_mean, (out.mean(), GM.mean, se_mean)
    assert abs(out.var() - GM.var) <= 3 * se_var, (out.var(), GM.var, se_var)


DIST_CASES = [
    ("ddpm", "karras", 300, {}),
    ("res_multistep", "karras", 100, {"eta": 1.0}),
    ("sa_solver", "karras", 30, {}),
    ("sa_solver", "karras", 30, {"model_sigmas": MODEL_SIGMAS}),
    ("dpmpp_sde", "karras", 30, {}),
    ("dpmpp_2m_sde", "karras", 30, {}),
    ("dpmpp_2m_sde_heun", "karras", 30, {}),
    ("dpmpp_3m_sde", "karras", 30, {}),
]


@pytest.mark.parametrize(("name", "scheduler", "steps", "opts"), DIST_CASES, ids=str)
def test_stochastic_sampler_reproduces_data_distribution(name, scheduler, steps, opts):
    rng = np.random.default_rng(123)
    sigmas = get_sigmas(scheduler, steps, MODEL_SIGMAS)
    x = _data(rng, N_SAMPLES) + sigmas[0] * rng.standard_normal(N_SAMPLES)
    out = sample(name, _den, x, sigmas, seed=7, **opts)
    _assert_matches_data(out)


FLOW_CASES = [
    ("euler_ancestral", 200),
    ("dpm_2_ancestral", 30),
    ("dpmpp_2s_ancestral", 30),
    ("dpmpp_sde", 30),
    ("dpmpp_2m_sde", 30),
    ("dpmpp_3m_sde", 30),
    ("sa_solver", 30),
]


@pytest.mark.parametrize(("name", "steps"), FLOW_CASES, ids=str)
def test_flow_stochastic_sampler_reproduces_data_distribution(name, steps):
    rng = np.random.default_rng(321)
    sigmas = np.linspace(1.0, 0.0, steps + 1)
    x = rng.standard_normal(N_SAMPLES)
    out = sample(name, _den_flow, x, sigmas, seed=11, flow=True)
    _assert_matches_data(out)


def test_lcm_flow_renoises_with_flow_interpolation():
    """LCM on flow sigmas re-noises as (1 - s) x0 + s eps: check against that formula directly."""
    sigmas = np.array([1.0, 0.6, 0.25, 0.0])
    x = np.random.default_rng(5).standard_normal(64)
    noise = np.random.default_rng(6).standard_normal((3, 64))
    calls = iter(range(3))

    def ns(s, sn):
        return noise[next(calls)]

    out = sample("lcm", _den_flow, x.copy(), sigmas, noise_sampler=ns, flow=True)
    ref = x
    for i in range(3):
        d = _den_flow(ref, sigmas[i])
        ref = d if sigmas[i + 1] == 0 else (1 - sigmas[i + 1]) * d + sigmas[i + 1] * noise[i]
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_euler_cfg_pp_matches_the_papers_ddim_cfg_pp():
    """CFG++ (Chung et al. 2024, Alg. 1) in VP variables: x' = sqrt(a') x0_g + sqrt(1-a') eps_u."""
    sigmas = get_sigmas("karras", 8, MODEL_SIGMAS)
    rng = np.random.default_rng(9)
    x = rng.standard_normal(128) * sigmas[0]
    scale = 0.6

    def two(x, sigma):
        cond = GM.denoise_np(x, sigma)
        uncond = GaussianMixture(means=(-1.0, 0.0, 1.0)).denoise_np(x, sigma)
        return uncond + scale * (cond - uncond), uncond

    def den_pp(x, sigma, with_uncond=False):
        guided, uncond = two(x, sigma)
        return (guided, uncond) if with_uncond else guided

    out = sample("euler_cfg_pp", den_pp, x.copy(), sigmas)
    a = 1.0 / (1.0 + sigmas**2)
    x_vp = x * np.sqrt(a[0])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        guided, uncond = two(x_vp / np.sqrt(a[i]), sigma)
        eps_u = (x_vp - np.sqrt(a[i]) * uncond) / np.sqrt(1 - a[i])
        x_vp = np.sqrt(a[i + 1]) * guided + np.sqrt(1 - a[i + 1]) * eps_u
    np.testing.assert_allclose(out, x_vp, rtol=1e-9, atol=1e-12)
