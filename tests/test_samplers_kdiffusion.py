"""latentrt.samplers against k-diffusion's sampling.py / external.py (oracle nobody here wrote).

Same start latent, same sigma table, same noise (a table indexed by call order) on both sides; the
denoiser is the exact Gaussian-mixture posterior mean (torch float64 there, numpy float64 here).
"""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest
import torch

from latentrt.samplers import (
    alphas_cumprod_for,
    denoised_from_output,
    get_sigmas,
    input_scale,
    sample,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
)

from .kdiff_oracle import GaussianMixture, NoiseTable, load

RTOL = 1e-5
SHAPE = (2, 3, 6, 6)
GM = GaussianMixture()


@pytest.fixture(scope="module")
def kd():
    return load()[0]


@pytest.fixture(scope="module")
def ext():
    return load()[1]


def _model(x, sigma, **kwargs):
    return GM.denoise_torch(x, sigma)


def _den(x, sigma):
    return GM.denoise_np(x, sigma)


def _sigmas(kd, n=10):
    return kd.get_sigmas_karras(n, 0.03, 14.6).double().numpy()


def _x(sigmas, seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE) * sigmas[0]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _run_kd(kd, fn_name, x, sigmas, noise, **kwargs):
    fn = getattr(kd, f"sample_{fn_name}")
    if "noise_sampler" in inspect.signature(fn).parameters:
        kwargs["noise_sampler"] = noise.torch()
    out = fn(_model, torch.from_numpy(x.copy()), torch.from_numpy(sigmas), disable=True, **kwargs)
    return out.numpy()


CASES = [
    ("euler", "euler", {}),
    ("heun", "heun", {}),
    ("dpm_2", "dpm_2", {}),
    ("lms", "lms", {}),
    ("lms", "lms", {"order": 2}),
    ("euler_ancestral", "euler_ancestral", {}),
    ("euler_ancestral", "euler_ancestral", {"eta": 0.6, "s_noise": 0.9}),
    ("dpm_2_ancestral", "dpm_2_ancestral", {"eta": 0.8}),
    ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", {}),
    ("dpmpp_sde", "dpmpp_sde", {}),
    ("dpmpp_sde", "dpmpp_sde", {"eta": 0.5, "r": 0.3}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {"eta": 0.7, "solver_type": "heun"}),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", {}),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", {"eta": 0.5, "s_noise": 1.1}),
]


@pytest.mark.parametrize(("ours", "theirs", "opts"), CASES, ids=lambda v: str(v))
def test_trajectory_matches_k_diffusion(kd, ours, theirs, opts):
    sigmas = _sigmas(kd)
    x = _x(sigmas)
    noise = NoiseTable(SHAPE, seed=1)
    ref = _run_kd(kd, theirs, x, sigmas, noise, **opts)
    ns = noise.numpy()
    out = sample(ours, _den, x.copy(), sigmas, noise_sampler=ns, **opts)
    assert _rel(out, ref) <= RTOL
    # The non-trivial check: the sampler moved far from both the start and the last x0 estimate.
    assert _rel(out, x) > 1e-2


def test_dpmpp_2m_sde_heun_is_k_diffusion_heun_solver_type(kd):
    sigmas = _sigmas(kd)
    x = _x(sigmas)
    noise = NoiseTable(SHAPE, seed=2)
    ref = _run_kd(kd, "dpmpp_2m_sde", x, sigmas, noise, solver_type="heun")
    out = sample("dpmpp_2m_sde_heun", _den, x.copy(), sigmas, noise_sampler=noise.numpy())
    assert _rel(out, ref) <= RTOL


class _PatchedTorch(types.SimpleNamespace):
    """torch with randn_like replaced, for k-diffusion's churn noise (it has no noise_sampler)."""

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
@pytest.mark.parametrize("tmin_tmax", [(0.0, float("inf")), (0.3, 5.0)])
def test_churn_matches_k_diffusion(kd, name, tmin_tmax):
    sigmas = _sigmas(kd, 8)
    x = _x(sigmas)
    table = np.random.default_rng(3).standard_normal((len(sigmas), *SHAPE))
    calls = {"n": 0}

    def randn_like(t):
        out = torch.from_numpy(table[calls["n"]].copy())
        calls["n"] += 1
        return out

    opts = {"s_churn": 1.5, "s_tmin": tmin_tmax[0], "s_tmax": tmin_tmax[1], "s_noise": 1.003}
    original = kd.torch
    kd.torch = _PatchedTorch(randn_like=randn_like)
    try:
        ref = getattr(kd, f"sample_{name}")(
            _model, torch.from_numpy(x.copy()), torch.from_numpy(sigmas), disable=True, **opts
        ).numpy()
    finally:
        kd.torch = original
    index = {float(s): i for i, s in enumerate(sigmas)}

    def noise(sigma, sigma_hat):
        return table[index[sigma]]

    out = sample(name, _den, x.copy(), sigmas, noise_sampler=noise, **opts)
    assert _rel(out, ref) <= RTOL


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("dpm_fast", {}),
        ("dpm_fast", {"eta": 0.5}),
        ("dpm_adaptive", {}),
        ("dpm_adaptive", {"order": 2, "rtol": 0.02}),
        ("dpm_adaptive", {"eta": 0.5, "rtol": 0.02}),
    ],
    ids=str,
)
def test_dpm_solver_matches_k_diffusion(kd, name, opts):
    # k-diffusion builds its time grid from torch.tensor(float) (float32 by default); run it in
    # float64 as we do so the comparison measures the algorithm, not float32 rounding.
    sigmas = _sigmas(kd)
    x = _x(sigmas)
    noise = NoiseTable(SHAPE, seed=4, count=400)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        args = [float(sigmas[-2]), float(sigmas[0])]
        if name == "dpm_fast":
            args.append(len(sigmas) - 1)
        ref = getattr(kd, f"sample_{name}")(
            _model,
            torch.from_numpy(x.copy()),
            *args,
            disable=True,
            noise_sampler=noise.torch(),
            **opts,
        ).numpy()
    finally:
        torch.set_default_dtype(previous)
    infos = []
    out = sample(
        name, _den, x.copy(), sigmas, noise_sampler=noise.numpy(), callback=infos.append, **opts
    )
    assert _rel(out, ref) <= RTOL
    if name == "dpm_adaptive":
        assert infos[-1]["n_accept"] >= 2 and "error" in infos[-1]


def test_ipndm_family_is_adams_bashforth_like_k_diffusion_lms(kd):
    """On a uniform sigma grid iPNDM is 4th-order Adams-Bashforth with AB1..3 warm-up = lms.

    iPNDM-v's variable-step weights reduce to AB3 on a uniform grid (its order-4 weights do not
    reduce to AB4, as in ComfyUI / zju-pi) and are exact variable-step AB2 on any grid.
    """
    sigmas = np.linspace(12.0, 0.5, 15)
    x = _x(sigmas)
    ref4 = _run_kd(kd, "lms", x, sigmas, NoiseTable(SHAPE, 0, 1), order=4)
    assert _rel(sample("ipndm", _den, x.copy(), sigmas), ref4) <= RTOL
    ref3 = _run_kd(kd, "lms", x, sigmas, NoiseTable(SHAPE, 0, 1), order=3)
    assert _rel(sample("ipndm_v", _den, x.copy(), sigmas, max_order=3), ref3) <= RTOL
    karras = _sigmas(kd)[:-1]
    ref2 = _run_kd(kd, "lms", x, karras, NoiseTable(SHAPE, 0, 1), order=2)
    assert _rel(sample("ipndm_v", _den, x.copy(), karras, max_order=2), ref2) <= RTOL


def test_ddim_eta_is_ancestral_euler(kd):
    """DDIM's sigma_t(eta) noise is the ancestral sigma_up in k-diffusion variables."""
    sigmas = _sigmas(kd)
    x = _x(sigmas)
    noise = NoiseTable(SHAPE, seed=5)
    ref = _run_kd(kd, "euler_ancestral", x, sigmas, noise, eta=0.7)
    assert (
        _rel(sample("ddim", _den, x.copy(), sigmas, eta=0.7, noise_sampler=noise.numpy()), ref)
        <= RTOL
    )
    ref0 = _run_kd(kd, "euler", x, sigmas, noise)
    assert _rel(sample("ddim", _den, x.copy(), sigmas), ref0) <= RTOL


@pytest.mark.parametrize(
    ("pp", "base", "opts"),
    [
        ("euler_cfg_pp", "euler", {}),
        ("euler_ancestral_cfg_pp", "euler_ancestral", {"eta": 0.8}),
        ("dpmpp_2s_ancestral_cfg_pp", "dpmpp_2s_ancestral", {}),
        ("dpmpp_2m_cfg_pp", "dpmpp_2m", {}),
    ],
)
def test_cfg_pp_without_guidance_is_the_base_sampler(kd, pp, base, opts):
    sigmas = _sigmas(kd)
    x = _x(sigmas)
    noise = NoiseTable(SHAPE, seed=6)
    ref = _run_kd(kd, base, x, sigmas, noise, **opts)

    def den_pp(x, sigma, with_uncond=False):
        d = GM.denoise_np(x, sigma)
        return (d, d) if with_uncond else d

    out = sample(pp, den_pp, x.copy(), sigmas, noise_sampler=noise.numpy(), **opts)
    assert _rel(out, ref) <= RTOL


def test_karras_and_exponential_schedules_equal_k_diffusion(kd):
    model_sigmas = sigmas_from_alphas_cumprod(
        alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000)
    )
    lo, hi = float(model_sigmas[0]), float(model_sigmas[-1])
    for steps in (1, 7, 30):
        ref_k = kd.get_sigmas_karras(steps, lo, hi).double().numpy()
        ref_e = kd.get_sigmas_exponential(steps, lo, hi).double().numpy()
        np.testing.assert_allclose(get_sigmas("karras", steps, model_sigmas), ref_k, rtol=2e-6)
        np.testing.assert_allclose(get_sigmas("exponential", steps, model_sigmas), ref_e, rtol=2e-6)
    ref_rho = kd.get_sigmas_karras(12, lo, hi, rho=3.0).double().numpy()
    np.testing.assert_allclose(get_sigmas("karras", 12, model_sigmas, rho=3.0), ref_rho, rtol=2e-6)


def test_normal_schedule_and_timestep_lookup_equal_discrete_schedule(ext):
    ac = alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000)
    sched = ext.DiscreteSchedule(torch.from_numpy(sigmas_from_alphas_cumprod(ac)), quantize=False)
    model_sigmas = sigmas_from_alphas_cumprod(ac)
    for steps in (2, 25):
        ref = sched.get_sigmas(steps).numpy()
        np.testing.assert_allclose(get_sigmas("normal", steps, model_sigmas), ref, rtol=1e-6)
    probe = np.array([0.02, 0.0292, 0.5, 1.0, 3.3, 14.6, 20.0])
    ref_t = sched.sigma_to_t(torch.from_numpy(probe)).numpy()
    np.testing.assert_allclose(sigma_to_t(probe, model_sigmas), ref_t, rtol=1e-9, atol=1e-9)
    ts = np.array([0.0, 0.25, 10.5, 500.0, 998.75, 999.0])
    ref_s = sched.t_to_sigma(torch.from_numpy(ts)).numpy()
    np.testing.assert_allclose(t_to_sigma(ts, model_sigmas), ref_s, rtol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_prediction_conversion_equals_compvis_denoisers(ext, prediction_type):
    ac = torch.from_numpy(alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000))
    rng = np.random.default_rng(7)
    weight = torch.from_numpy(rng.standard_normal(SHAPE))

    def net(x_in, t):
        return torch.tanh(x_in) * weight + 0.01 * t.reshape(-1, 1, 1, 1)

    inner = types.SimpleNamespace(alphas_cumprod=ac, apply_model=lambda x, t, cond: net(x, t))
    cls = ext.CompVisDenoiser if prediction_type == "epsilon" else ext.CompVisVDenoiser
    wrapper = cls(inner)
    model_sigmas = ((1 - ac) / ac).sqrt().numpy()
    x = rng.standard_normal(SHAPE) * 3.0
    for sigma in (0.05, 1.7, 9.0):
        ref = wrapper(torch.from_numpy(x), torch.full((SHAPE[0],), sigma), cond=None).numpy()
        t = float(sigma_to_t(sigma, model_sigmas))
        out_net = net(torch.from_numpy(x * input_scale(prediction_type, sigma)), torch.tensor([t]))
        ours = denoised_from_output(prediction_type, out_net.numpy(), x, sigma)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_cfg_denoiser_equals_compvis_denoiser_with_cfg_on_x0(ext, prediction_type):
    """runtime.denoiser.CFGDenoiser (guidance applied to the model output) against k-diffusion's
    CompVis denoisers with the guidance of k-diffusion's sample scripts (on the x0 estimates)."""
    from latentrt.errors import NumericsError
    from latentrt.runtime.denoiser import CFGDenoiser, Conditioning

    ac = torch.from_numpy(alphas_cumprod_for("scaled_linear", 0.00085, 0.012, 1000))
    rng = np.random.default_rng(3)
    weight = rng.standard_normal(SHAPE[1:])
    context = rng.standard_normal((SHAPE[0], 4, 5)).astype(np.float32)
    uncond = rng.standard_normal((SHAPE[0], 4, 5)).astype(np.float32)

    def net(x, t, ctx):  # numpy; depends on the sample, the timestep and the conditioning
        shift = ctx.mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
        return np.tanh(x) * weight + 0.01 * t.reshape(-1, 1, 1, 1) + shift

    def apply_model(x, t, cond):
        return torch.from_numpy(net(x.numpy(), t.numpy(), cond.numpy()))

    inner = types.SimpleNamespace(alphas_cumprod=ac, apply_model=apply_model)
    cls = ext.CompVisDenoiser if prediction_type == "epsilon" else ext.CompVisVDenoiser
    wrapper = cls(inner)
    model_sigmas = ((1 - ac) / ac).sqrt().numpy()

    def unet(sample, timestep, encoder_hidden_states):
        return net(sample, timestep, encoder_hidden_states).astype(np.float32)

    guidance = 6.5
    den = CFGDenoiser(unet, model_sigmas, prediction_type, Conditioning(context, uncond), guidance)
    x = (rng.standard_normal(SHAPE) * 3.0).astype(np.float32)
    for sigma in (0.05, 1.7, 9.0):
        xx = torch.from_numpy(np.concatenate([x, x]).astype(np.float64))
        both = wrapper(
            xx,
            torch.full((2 * SHAPE[0],), sigma),
            cond=torch.from_numpy(np.concatenate([uncond, context]).astype(np.float64)),
        ).numpy()
        ref_u, ref_c = both[: SHAPE[0]], both[SHAPE[0] :]
        guided, un = den(x, sigma, with_uncond=True)
        np.testing.assert_allclose(guided, ref_u + guidance * (ref_c - ref_u), rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(un, ref_u, rtol=1e-5, atol=1e-5)

    def broken(sample, timestep, encoder_hidden_states):
        out = unet(sample, timestep, encoder_hidden_states)
        out[0, 0, 0, 0] = np.nan  # in the uncond half only
        return out

    den = CFGDenoiser(broken, model_sigmas, prediction_type, Conditioning(context, uncond), 1.0)
    with pytest.raises(NumericsError, match="the UNet returned NaN/Inf at sigma 1.7"):
        den(x, 1.7)
