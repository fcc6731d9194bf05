"""The UNet wrapped as a k-diffusion denoiser: D(x, sigma) -> x0 with classifier-free guidance.

Variables are k-diffusion's: x = x0 + sigma * eps. The UNet sees x / sqrt(sigma^2 + 1) (the
variance-preserving latent diffusers feeds it) at timestep t(sigma), and its output is turned
into an x0 estimate according to the checkpoint's prediction type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from latentrt.errors import NumericsError
from latentrt.samplers import sigma_to_t

UNetFn = Callable[..., np.ndarray]


@dataclass
class Conditioning:
    """Text conditioning for one generation; `uncond` is None when guidance is off."""

    context: np.ndarray  # (B, S, D)
    uncond: np.ndarray | None  # (B, S, D)
    added: dict[str, np.ndarray] | None = None  # SDXL: text_embeds / time_ids, cond half
    added_uncond: dict[str, np.ndarray] | None = None


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy of `a` that owns its data (the caller's array is left as it is)."""
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


class CFGDenoiser:
    """D(x, sigma) for a UNet with classifier-free guidance, uncond and cond in one batch."""

    def __init__(
        self,
        unet: UNetFn,
        model_sigmas: np.ndarray,
        prediction_type: str,
        cond: Conditioning,
        guidance: float,
        concat: np.ndarray | None = None,
        timesteps: dict[float, float] | None = None,
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction type {prediction_type!r}")
        self.unet = unet
        self.model_sigmas = model_sigmas
        self.prediction_type = prediction_type
        self.cond = cond
        self.guidance = guidance
        self.concat = concat  # inpainting UNets: (B, 5, h, w) mask + masked-image latents
        self.timesteps = timesteps or {}  # exact timesteps of a diffusers schedule, by sigma
        self.calls = 0
        # sigma -> t by interpolation in log sigma (samplers.sigma_to_t, with the table checked
        # and its logarithm taken once instead of at every step)
        sigma_to_t(model_sigmas[-1], model_sigmas)
        self._log_sigmas = np.log(model_sigmas)
        self._t_axis = np.arange(model_sigmas.size, dtype=np.float64)
        # The UNet's text inputs are the same at every step: batch [uncond; cond] once here,
        # as read-only arrays of their own, which a GPU backend keeps resident across steps.
        self._context = cond.context
        self._added = cond.added or {}
        if self.guided:
            self._context = np.concatenate([cond.uncond, cond.context])
            self._added = {
                k: np.concatenate([cond.added_uncond[k], v]) for k, v in self._added.items()
            }
            if concat is not None:
                self.concat = np.concatenate([concat, concat])
        self._context = _frozen(self._context)
        self._added = {k: _frozen(v) for k, v in self._added.items()}
        if self.concat is not None:
            self.concat = _frozen(self.concat)

    @property
    def guided(self) -> bool:
        return self.cond.uncond is not None

    def _unet_out(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """The UNet's raw output for the batch [uncond; cond] (or cond alone)."""
        sample = x * np.float32(1.0 / np.sqrt(sigma**2 + 1.0))
        if self.guided:
            sample = np.concatenate([sample, sample])
        if self.concat is not None:
            sample = np.concatenate([sample, self.concat], axis=1)
        t = self.timesteps.get(sigma)
        if t is None:
            t = float(np.interp(np.log(sigma), self._log_sigmas, self._t_axis))
        t = np.full(sample.shape[0], t, dtype=np.float32)
        out = self.unet(
            sample=sample, timestep=t, encoder_hidden_states=self._context, **self._added
        )
        self.calls += 1
        return out.astype(np.float32, copy=False)

    def _x0(self, x: np.ndarray, out: np.ndarray, sigma: float) -> np.ndarray:
        """The x0 estimate from a model output (linear in `out`, so CFG may come first)."""
        if self.prediction_type == "epsilon":
            return x - np.float32(sigma) * out
        if self.prediction_type == "v_prediction":
            return x * np.float32(1.0 / (sigma**2 + 1.0)) - out * np.float32(
                sigma / np.sqrt(sigma**2 + 1.0)
            )
        return out

    def __call__(self, x: np.ndarray, sigma: float, with_uncond: bool = False):
        sigma = float(sigma)
        out = self._unet_out(x, sigma)
        uncond = None
        if self.guided:  # guidance on the model output: half the batch for the rest
            half = out.shape[0] // 2
            uncond, cond = out[:half], out[half:]
            out = uncond + np.float32(self.guidance) * (cond - uncond)
        # NaN/Inf anywhere in the UNet's output reaches the guided one (0 * NaN is NaN)
        if not np.isfinite(out).all():
            raise NumericsError(f"the UNet returned NaN/Inf at sigma {sigma:.4g}")
        x0 = self._x0(x, out, sigma)
        if not with_uncond:
            return x0
        return x0, (self._x0(x, uncond, sigma) if uncond is not None else x0)


class InpaintBlendDenoiser:
    """Mask blending for ordinary (4-channel) UNets, the way ComfyUI's inpainting sampler does.

    Outside the mask (mask == 0) the latent is held to the original image noised to the current
    sigma before the model sees it, and the x0 estimate is replaced by the original there, so
    the kept region ends exactly as the source image's latent.
    """

    def __init__(
        self, inner: CFGDenoiser, image_latent: np.ndarray, mask: np.ndarray, noise: np.ndarray
    ) -> None:
        self.inner = inner
        self.image_latent = image_latent
        self.mask = mask  # (B, 1, h, w), 1 = repaint
        self.noise = noise

    def __call__(self, x: np.ndarray, sigma: float, with_uncond: bool = False):
        keep = 1.0 - self.mask
        x = x * self.mask + (self.image_latent + self.noise * np.float32(sigma)) * keep
        out = self.inner(x, sigma, with_uncond=with_uncond)
        blend = lambda d: d * self.mask + self.image_latent * keep  # noqa: E731
        return tuple(blend(d) for d in out) if with_uncond else blend(out)
