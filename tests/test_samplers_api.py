"""latentrt.samplers API: errors, noise samplers, ComfyUI-only schedulers, registry behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from latentrt.errors import SamplerError
from latentrt.samplers import (
    SAMPLERS,
    SCHEDULERS,
    BrownianTree,
    BrownianTreeNoiseSampler,
    alphas_cumprod_for,
    beta_ppf,
    betas_for,
    denoised_from_output,
    flow_sigmas,
    get_sigmas,
    input_scale,
    percent_to_sigma,
    sample,
    sampler_options,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
    time_snr_shift,
)

from .kdiff_oracle import GaussianMixture

GM = GaussianMixture()
MODEL_SIGMAS = sigmas_from_alphas_cumprod(alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000))
ISSUE_SAMPLERS = (
    "euler euler_ancestral heun heunpp2 dpm_2 dpm_2_ancestral lms dpm_fast dpm_adaptive "
    "dpmpp_2s_ancestral dpmpp_sde dpmpp_2m dpmpp_2m_sde dpmpp_2m_sde_heun dpmpp_3m_sde ddpm ddim "
    "lcm ipndm ipndm_v deis uni_pc uni_pc_bh2 sa_solver res_multistep euler_cfg_pp "
    "euler_ancestral_cfg_pp dpmpp_2s_ancestral_cfg_pp dpmpp_2m_cfg_pp"
).split()
ISSUE_SCHEDULERS = (
    "normal karras exponential sgm_uniform simple ddim_uniform beta linear_quadratic kl_optimal"
).split()


def _den(x, sigma, with_uncond=False):
    d = GM.denoise_np(x, sigma)
    return (d, d) if with_uncond else d


def test_registries_hold_every_name_of_the_issue():
    assert sorted(SAMPLERS) == sorted(ISSUE_SAMPLERS)
    assert sorted(SCHEDULERS) == sorted(ISSUE_SCHEDULERS)


@pytest.mark.parametrize("name", ISSUE_SAMPLERS)
def test_every_sampler_runs_float32_deterministically_with_callbacks(name):
    sigmas = get_sigmas("karras", 6, MODEL_SIGMAS)
    x = (np.random.default_rng(0).standard_normal((1, 4, 8, 8)) * sigmas[0]).astype(np.float32)
    infos: list[dict] = []
    out = SAMPLERS[name](_den, x, sigmas, seed=42, callback=infos.append)
    again = sample(name, _den, x, sigmas, seed=np.random.default_rng(42))
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, again)
    assert infos and {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(infos[0])
    # Sampling moves the latent from noise (std ~14.6) to data scale.
    assert float(np.std(out)) < 3.0


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(SamplerError, match="unknown sampler 'eulr'.*dpmpp_2m"):
        sample("eulr", _den, np.zeros(3), np.array([1.0, 0.0]))
    with pytest.raises(SamplerError, match="unknown scheduler 'karas'.*kl_optimal"):
        get_sigmas("karas", 10, MODEL_SIGMAS)
    with pytest.raises(SamplerError, match="no option.*etaa.*valid: eta, s_noise"):
        sample("euler_ancestral", _den, np.zeros(3), np.array([1.0, 0.0]), etaa=1.0)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_below_one_are_refused(steps):
    with pytest.raises(SamplerError, match="steps"):
        get_sigmas("normal", steps, MODEL_SIGMAS)


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [
        ([1.0], "steps must be >= 1"),
        ([5.0, 5.0, 0.0], r"strictly decreasing: sigmas\[0\]=5"),
        ([1.0, 2.0, 0.0], "strictly decreasing"),
        ([3.0, 1.0, -0.5], "non-negative"),
        ([3.0, np.nan, 0.0], "NaN"),
        ([[3.0, 1.0]], "1-D"),
    ],
)
def test_malformed_sigma_tables_are_refused(sigmas, message):
    with pytest.raises(SamplerError, match=message):
        sample("euler", _den, np.zeros(4), np.array(sigmas, dtype=float))


def test_nan_from_denoiser_names_the_step():
    def bad(x, sigma):
        return np.full_like(x, np.nan) if sigma < 2.0 else GM.denoise_np(x, sigma)

    sigmas = get_sigmas("karras", 8, MODEL_SIGMAS)
    step = int(np.argmax(sigmas < 2.0))
    with pytest.raises(SamplerError, match=rf"NaN/Inf at step {step} \(sigma="):
        sample("dpmpp_2m", bad, np.ones(4) * sigmas[0], sigmas)
    with pytest.raises(SamplerError, match="shape"):
        sample("euler", lambda x, s: x[:2], np.ones(4), sigmas)


def test_cfg_pp_requires_the_uncond_tuple():
    with pytest.raises(SamplerError, match="with_uncond=True"):
        sample("euler_cfg_pp", lambda x, s, **k: x, np.ones(4), np.array([2.0, 1.0, 0.0]))


def test_brownian_tree_is_order_independent_and_additive():
    shape = (3, 5)
    points = [14.6, 9.0, 3.1, 3.0999, 1.0, 0.2, 0.03]
    forward = BrownianTree(0.03, 14.6, shape, entropy=5)
    values = {t: forward(t) for t in points}
    backward = BrownianTree(0.03, 14.6, shape, entropy=5, cache_size=2)
    for t in reversed(points):
        np.testing.assert_array_equal(backward(t), values[t])
    other = BrownianTree(0.03, 14.6, shape, entropy=6)
    assert not np.allclose(other(3.1), values[3.1])
    ns = BrownianTreeNoiseSampler(np.zeros(shape), 0.03, 14.6, seed=5)
    a, b = ns(9.0, 3.1) * math.sqrt(5.9), ns(3.1, 1.0) * math.sqrt(2.1)
    np.testing.assert_allclose(a + b, ns(9.0, 1.0) * math.sqrt(8.0), rtol=1e-12, atol=1e-12)
    with pytest.raises(SamplerError, match="outside"):
        ns(20.0, 1.0)


def test_brownian_increments_are_independent_standard_normals():
    ns = BrownianTreeNoiseSampler(np.zeros(20000), 0.02, MODEL_SIGMAS[-1], seed=1)
    sigmas = get_sigmas("karras", 6, MODEL_SIGMAS)[:-1]
    draws = np.stack([ns(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 1)])
    se = 1 / math.sqrt(draws.shape[1])
    assert np.all(np.abs(draws.mean(axis=1)) < 4 * se)
    assert np.all(np.abs(draws.var(axis=1) - 1) < 4 * math.sqrt(2) * se)
    corr = np.corrcoef(draws)
    assert np.all(np.abs(corr[np.triu_indices(len(draws), 1)]) < 4 * se)


def test_sde_default_noise_is_brownian_and_seeded():
    sigmas = get_sigmas("karras", 6, MODEL_SIGMAS)
    x = np.random.default_rng(0).standard_normal((2, 16)) * sigmas[0]
    a = sample("dpmpp_2m_sde", _den, x, sigmas, seed=3)
    b = sample("dpmpp_2m_sde", _den, x, sigmas, seed=3)
    c = sample("dpmpp_2m_sde", _den, x, sigmas, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    tree = BrownianTreeNoiseSampler(x, sigmas[-2], sigmas[0], seed=9)
    d = sample("dpmpp_2m_sde", _den, x, sigmas, noise_sampler=tree)
    e = sample(
        "dpmpp_2m_sde",
        _den,
        x,
        sigmas,
        noise_sampler=BrownianTreeNoiseSampler(x, sigmas[-2], sigmas[0], seed=9),
    )
    np.testing.assert_array_equal(d, e)


def test_beta_scheduler_uses_beta_quantiles_like_scipy():
    q = np.linspace(0.0, 1.0, 41)
    for a, b in ((0.6, 0.6), (0.5, 2.0), (3.0, 1.2)):
        np.testing.assert_allclose(beta_ppf(q, a, b), scipy.stats.beta.ppf(q, a, b), atol=1e-12)
    for steps in (1, 10, 50, 200):
        ts = np.rint(
            scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999
        )
        keep = np.concatenate([[True], ts[1:] != ts[:-1]])
        ref = np.concatenate([MODEL_SIGMAS[ts[keep].astype(int)], [0.0]])
        np.testing.assert_allclose(get_sigmas("beta", steps, MODEL_SIGMAS), ref, rtol=0, atol=0)


def test_table_picking_schedulers_follow_comfyui_rules():
    table = MODEL_SIGMAS
    simple = get_sigmas("simple", 10, table)
    np.testing.assert_array_equal(simple[:-1], table[::-1][np.arange(10) * 100])
    ddim = get_sigmas("ddim_uniform", 20, table)
    np.testing.assert_array_equal(ddim[:-1], table[1 + 50 * np.arange(20)][::-1])
    assert len(get_sigmas("ddim_uniform", 30, table)) == 31
    sgm = get_sigmas("sgm_uniform", 4, table)
    np.testing.assert_allclose(sgm[:-1], t_to_sigma([999.0, 749.25, 499.5, 249.75], table))
    kl = get_sigmas("kl_optimal", 9, table)
    np.testing.assert_allclose(np.diff(np.arctan(kl[:-1])), np.diff(np.arctan(kl[:-1]))[0])
    assert kl[0] == pytest.approx(table[-1]) and kl[-2] == pytest.approx(table[0])
    lq = get_sigmas("linear_quadratic", 8, table) / table[-1]
    np.testing.assert_allclose(1 - lq[:4], np.arange(4) * 0.025 / 4)
    assert lq[0] == 1.0 and lq[-1] == 0.0 and np.all(np.diff(lq) < 0)


@pytest.mark.parametrize("name", ISSUE_SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 2, 13, 40])
def test_every_scheduler_gives_a_valid_table(name, steps):
    sigmas = get_sigmas(name, steps, MODEL_SIGMAS)
    assert sigmas[-1] == 0.0 and np.all(np.diff(sigmas) < 0)
    assert len(sigmas) == steps + 1 or name == "beta"
    assert sigmas[0] <= MODEL_SIGMAS[-1] * (1 + 1e-12)


def test_training_schedule_helpers():
    with pytest.raises(SamplerError, match="unknown beta schedule"):
        betas_for("cosine", 0.1, 0.2, 10)
    ac = alphas_cumprod_for("linear", 0.0001, 0.02, 1000, rescale_betas_zero_snr=True)
    assert ac[-1] == pytest.approx(0.0, abs=1e-12)
    table = sigmas_from_alphas_cumprod(ac)
    assert np.all(np.isfinite(table)) and table[-1] == pytest.approx(math.sqrt(2**24 - 1))
    flow = flow_sigmas(shift=3.0)
    assert flow[-1] == 1.0 and np.all(np.diff(flow) > 0)
    np.testing.assert_allclose(time_snr_shift(1.0, [0.2, 0.7]), [0.2, 0.7])
    np.testing.assert_allclose(time_snr_shift(3.0, 0.5), 0.75)
    assert percent_to_sigma(0.0, MODEL_SIGMAS) > 1e8 and percent_to_sigma(1.0, MODEL_SIGMAS) == 0
    assert percent_to_sigma(0.5, MODEL_SIGMAS) == pytest.approx(
        float(t_to_sigma(499.5, MODEL_SIGMAS))
    )


def test_sampler_options_are_introspectable():
    assert sampler_options("dpmpp_2m_sde") == {
        "eta": 1.0,
        "s_noise": 1.0,
        "solver_type": "midpoint",
    }
    assert sampler_options("uni_pc")["variant"] == "bh1"
    assert SAMPLERS["euler_cfg_pp"].needs_uncond and not SAMPLERS["euler"].needs_uncond


def test_sample_and_flow_parameterizations_recover_x0():
    rng = np.random.default_rng(2)
    x0, eps = rng.standard_normal(16), rng.standard_normal(16)
    s = 0.35
    x_flow = (1 - s) * x0 + s * eps
    np.testing.assert_allclose(denoised_from_output("flow", eps - x0, x_flow, s), x0, rtol=1e-12)
    assert input_scale("flow", s) == 1.0
    np.testing.assert_array_equal(denoised_from_output("sample", x0, x0 + 3 * eps, 3.0), x0)
    with pytest.raises(SamplerError, match="unknown prediction type"):
        denoised_from_output("x0", x0, x0, 1.0)
