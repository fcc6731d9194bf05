"""`Pipeline`: prompt in, images out, on a bundle and a backend, with numpy in between.

One pipeline covers txt2img, img2img (`image=` with `strength`) and inpainting (`image=` and
`mask=`): 9-channel inpainting UNets get the mask and masked-image latents concatenated to
their input; ordinary UNets blend the kept region back at every step.

SDXL adds the pooled text embedding and the size/crop (refiner: aesthetic score) time ids, and
the base -> refiner hand-off: `denoising_end=f, output="latent"` stops the base where diffusers'
`denoising_end` does and returns the still-noisy latent (k-diffusion variables, x = x0 + sigma
eps); `image=<that latent>, denoising_start=f` on the refiner continues from the same point.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np

from latentrt import samplers
from latentrt.errors import BackendError, InputError, NumericsError, SamplerError
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.conditioning import PromptEncoder
from latentrt.runtime.denoiser import CFGDenoiser, InpaintBlendDenoiser
from latentrt.runtime.image import (
    format_parameters,
    postprocess,
    preprocess_image,
    preprocess_mask,
    save_png,
    to_pil,
)

BACKENDS = ("ort-cpu", "ort-cuda", "tensorrt")
OUTPUTS = ("pil", "np", "latent")
# The schedule diffusers' own scheduler would use for the checkpoint's scheduler_config.
DIFFUSERS_SCHEDULE = "diffusers"


def load_backend(bundle: Bundle, backend: str) -> dict[str, Callable]:
    """name -> callable(**inputs) -> dict of outputs, for every component of the bundle."""
    if backend == "ort-cpu":
        from latentrt.runtime import ort_backend

        return ort_backend.load_components(bundle, backend)
    if backend == "ort-cuda":
        from latentrt.runtime import ort_cuda

        return ort_cuda.load_components(bundle)
    if backend == "tensorrt":
        from latentrt.runtime import tensorrt_backend

        return tensorrt_backend.load_components(bundle)
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


class Pipeline:
    """A loaded bundle on one backend; `generate` runs txt2img, img2img and inpainting."""

    def __init__(self, bundle: Bundle, components: dict[str, Callable], backend: str) -> None:
        self.bundle = bundle
        self.backend = backend
        self.components = components
        m = bundle.manifest
        self.latent = m["latent"]
        self.prediction_type = m["prediction_type"]
        self.schedule = m["scheduler"]
        self.inpainting = m["unet"]["inpainting"]
        self.prompt_encoder = PromptEncoder(bundle, components)
        self.alphas_cumprod = samplers.alphas_cumprod_for(
            self.schedule["beta_schedule"],
            self.schedule["beta_start"],
            self.schedule["beta_end"],
            self.schedule["num_train_timesteps"],
            rescale_betas_zero_snr=self.schedule.get("rescale_betas_zero_snr", False),
        )
        self.model_sigmas = samplers.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.sdxl = m.get("sdxl")
        # fp16 SDXL bundles whose VAE config says force_upcast decode with their fp32 decoder
        # from the start (as diffusers does); set False to try fp16 first and fall back on NaN/Inf.
        self.fp32_decoder = self.latent.get("fp32_decoder")
        self.vae_upcast = bool(self.fp32_decoder and self.latent.get("force_upcast"))

    @classmethod
    def load(cls, bundle: str | Path, backend: str = "ort-cpu") -> Pipeline:
        """Open and validate a bundle and create the backend's sessions once."""
        b = Bundle.open(bundle)
        return cls(b, load_backend(b, backend), backend)

    # --- schedule -----------------------------------------------------------------------------

    def schedule_for(
        self, scheduler: str | None, steps: int, sampler: str
    ) -> tuple[np.ndarray, dict, dict[float, float] | None]:
        """(sigmas, extra sampler options, sigma -> timestep table) for one generation.

        `diffusers` reproduces the checkpoint's own diffusers scheduler: DDIMScheduler's
        timesteps and targets for `ddim`, EulerDiscreteScheduler's sigma table otherwise.
        `None` means `diffusers` for `ddim` and ComfyUI's `normal` for every other sampler.
        """
        if scheduler is None:
            scheduler = DIFFUSERS_SCHEDULE if sampler == "ddim" else "normal"
        if scheduler != DIFFUSERS_SCHEDULE:
            return samplers.get_sigmas(scheduler, steps, self.model_sigmas), {}, None
        s = self.schedule
        spacing = {"timestep_spacing": s["timestep_spacing"], "steps_offset": s["steps_offset"]}
        if sampler == "ddim":
            sigmas, prev = samplers.diffusers_ddim_sigmas(
                self.alphas_cumprod, steps, set_alpha_to_one=s["set_alpha_to_one"], **spacing
            )
            ts = samplers.diffusers_timesteps(steps, s["num_train_timesteps"], **spacing)
            return (
                sigmas,
                {"prev_sigmas": prev},
                dict(zip(sigmas[:-1].tolist(), ts.tolist(), strict=True)),
            )
        ts, sigmas = samplers.diffusers_euler_sigmas(self.alphas_cumprod, steps, **spacing)
        return sigmas, {}, dict(zip(sigmas[:-1].tolist(), ts.tolist(), strict=True))

    # --- generation ---------------------------------------------------------------------------

    def _check_size(self, width: int, height: int) -> None:
        step = self.latent["downscale"]
        for name, v in (("width", width), ("height", height)):
            if not isinstance(v, int | np.integer) or v <= 0 or v % step:
                raise InputError(f"{name} must be a positive multiple of {step}, got {v}")
            lo, hi = self.bundle.manifest["shapes"][name]
            if not lo <= v <= hi:
                raise InputError(f"{name} {v} is outside the bundle's range [{lo}, {hi}]")

    def generate(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        width: int | None = None,
        height: int | None = None,
        steps: int = 30,
        guidance: float = 7.5,
        sampler: str = "euler",
        scheduler: str | None = None,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        batch: int = 1,
        output: str = "pil",
        image=None,
        mask=None,
        strength: float | None = None,
        sampler_options: dict | None = None,
        callback: Callable[[dict], None] | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
    ):
        """Generate images; see README for the arguments. `latents` is unit-variance noise.

        SDXL: `original_size`/`target_size` ((height, width), default the output size),
        `crops_coords_top_left` and the refiner's aesthetic scores are the UNet's time ids.
        `denoising_end`/`denoising_start` in (0, 1) cut the schedule as diffusers' SDXL
        pipelines do; `image` may be a (B, C_latent, h, w) latent array instead of pixels.
        """
        prompts, negatives = self._check_request(
            prompt, negative_prompt, batch, output, steps, sampler, scheduler,
            image, mask, denoising_start, denoising_end,
        )  # fmt: skip
        batch = len(prompts)
        latent_image = self._latent_image(image)
        if strength is None:
            strength = 0.8 if image is not None and mask is None else 1.0
        if not 0.0 < strength <= 1.0:
            raise InputError(f"strength must be in (0, 1], got {strength}")
        width, height = self._output_size(image, latent_image, width, height)
        if self.inpainting and (image is None or mask is None):
            raise InputError("this bundle's UNet is an inpainting model: pass image= and mask=")

        seed = secrets.randbits(32) if seed is None else int(seed)
        rng = np.random.default_rng(seed)
        f = self.latent["downscale"]
        shape = (batch, self.latent["channels"], height // f, width // f)
        if latents is None:
            noise = rng.standard_normal(shape, dtype=np.float32)
        else:
            noise = np.asarray(latents, dtype=np.float32)
            if noise.shape != shape:
                raise InputError(f"latents must have shape {shape}, got {noise.shape}")

        sigmas, options, timesteps = self.schedule_for(scheduler, steps, sampler)
        guided = guidance > 1.0
        time_ids = neg_time_ids = None
        if self.sdxl is not None:
            time_ids, neg_time_ids = self.time_ids(
                height, width, original_size, crops_coords_top_left, target_size,
                aesthetic_score, negative_aesthetic_score,
            )  # fmt: skip
        cond = self.prompt_encoder.conditioning(
            prompts, negatives if guided else None, time_ids, neg_time_ids
        )

        concat = None
        image_latent = None
        pixel_mask = None
        if latent_image is not None:
            if mask is not None:
                raise InputError("inpainting (mask=) needs image= as pixels, not latents")
            image_latent = _batch_latent(latent_image, batch)
        elif image is not None:
            pixels = np.repeat(preprocess_image(image, width, height), batch, axis=0)
            if mask is not None:
                pixel_mask = np.repeat(preprocess_mask(mask, width, height), batch, axis=0)
            if self.inpainting:
                masked = pixels * (pixel_mask < 0.5)
                masked_latent = self.encode(masked, rng)
                concat = np.concatenate([pixel_mask[:, :, ::f, ::f], masked_latent], axis=1)
            if not self.inpainting or strength < 1.0 or denoising_start is not None:
                image_latent = self.encode(pixels, rng)

        n = len(sigmas) - 1
        start, stop = self._window(
            sigmas, timesteps, steps, strength, image_latent is not None,
            denoising_start, denoising_end,
        )  # fmt: skip
        sigmas = sigmas[start : stop + 1]
        if "prev_sigmas" in options:
            options["prev_sigmas"] = options["prev_sigmas"][start:stop]
        if denoising_start is not None:
            # diffusers' refiner: the image is the base's partly denoised latent at this point.
            x = image_latent.astype(np.float32, copy=True)
        elif image_latent is not None and start > 0:
            x = image_latent + noise * np.float32(sigmas[0])
        else:
            x = noise * np.float32(np.sqrt(sigmas[0] ** 2 + 1.0))

        denoiser = CFGDenoiser(
            self._unet, self.model_sigmas, self.prediction_type, cond, guidance, concat, timesteps
        )
        if pixel_mask is not None and not self.inpainting:
            latent_mask = pixel_mask[:, :, ::f, ::f]
            denoiser = InpaintBlendDenoiser(denoiser, image_latent, latent_mask, noise)
        x = samplers.sample(
            sampler,
            denoiser,
            x,
            sigmas,
            seed=int(rng.integers(2**63)),
            callback=callback,
            **(options | (sampler_options or {})),
        )
        final = options["prev_sigmas"][-1] if "prev_sigmas" in options else sigmas[-1]
        if final > 0 and stop == n:  # a schedule that stops short of sigma 0 (DDIM's final alpha)
            x = x / np.float32(np.sqrt(final**2 + 1.0))
        return self._output(x, output, prompts[0], negatives[0], steps, sampler, scheduler,
                            guidance, seed, width, height)  # fmt: skip

    # --- generate's parts -----------------------------------------------------------------------

    def _check_request(
        self, prompt, negative_prompt, batch, output, steps, sampler, scheduler,
        image, mask, denoising_start, denoising_end,
    ) -> tuple[list[str], list[str]]:  # fmt: skip
        """Validate `generate`'s arguments that need no model work; (prompts, negatives)."""
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        negatives = (
            [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
        )
        if len(negatives) != batch:
            raise InputError(f"{len(negatives)} negative prompts for {batch} prompts")
        if not 1 <= batch <= self.bundle.manifest["shapes"]["batch"][1]:
            raise InputError(f"batch must be in [1, {self.bundle.manifest['shapes']['batch'][1]}]")
        if output not in OUTPUTS:
            raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
        if not isinstance(steps, int | np.integer) or steps < 1:
            raise InputError(f"steps must be a positive integer, got {steps!r}")
        if sampler not in samplers.SAMPLERS:
            raise SamplerError(
                f"unknown sampler {sampler!r}; known: {', '.join(samplers.SAMPLERS)}"
            )
        if (
            scheduler is not None
            and scheduler != DIFFUSERS_SCHEDULE
            and scheduler not in samplers.SCHEDULERS
        ):
            known = ", ".join([*samplers.SCHEDULERS, DIFFUSERS_SCHEDULE])
            raise SamplerError(f"unknown scheduler {scheduler!r}; known: {known}")
        if mask is not None and image is None:
            raise InputError("mask= needs image=")
        for name, v in (("denoising_start", denoising_start), ("denoising_end", denoising_end)):
            if v is not None and not (isinstance(v, float | int) and 0.0 < v < 1.0):
                raise InputError(f"{name} must be a fraction in (0, 1), got {v!r}")
        if denoising_start is not None and image is None:
            raise InputError("denoising_start= needs image= (the latents to continue from)")
        if (
            denoising_start is not None
            and denoising_end is not None
            and denoising_start >= denoising_end
        ):
            raise InputError(
                f"denoising_start {denoising_start} must be below denoising_end {denoising_end}"
            )
        return prompts, negatives

    def _output_size(
        self, image, latent_image: np.ndarray | None, width: int | None, height: int | None
    ) -> tuple[int, int]:
        """(width, height): a latent image's size, else the given one, else an input image's
        (rounded down to the latent grid), else the bundle's default; checked against its range."""
        if latent_image is not None:
            f = self.latent["downscale"]
            lh, lw = latent_image.shape[2] * f, latent_image.shape[3] * f
            if (width or lw, height or lh) != (lw, lh):
                raise InputError(f"a latent image= is {lw}x{lh} pixels, not {width}x{height}")
            width, height = lw, lh
        elif image is not None and (width is None or height is None):
            w0, h0 = _image_size(image)
            step = self.latent["downscale"]
            width = width or w0 - w0 % step
            height = height or h0 - h0 % step
        default = self.bundle.manifest.get(
            "default_size", 512 if self.bundle.family in ("sd1",) else 768
        )
        width, height = width or default, height or default
        self._check_size(width, height)
        return width, height

    def _window(
        self,
        sigmas: np.ndarray,
        timesteps: dict[float, float] | None,
        steps: int,
        strength: float,
        from_image: bool,
        denoising_start: float | None,
        denoising_end: float | None,
    ) -> tuple[int, int]:
        """(start, stop) step indices to run: img2img strength or the SDXL hand-off points."""
        n = len(sigmas) - 1
        if denoising_start is not None:
            start = self.split_index(sigmas, timesteps, denoising_start)
        elif from_image:
            start = steps - min(int(steps * strength), steps)
        else:
            start = 0
        stop = n if denoising_end is None else self.split_index(sigmas, timesteps, denoising_end)
        if start >= stop:
            what = (
                f"denoising_start {denoising_start}"
                if denoising_start is not None
                else f"strength {strength}"
            )
            if denoising_end is not None:
                what += f" and denoising_end {denoising_end}"
            raise InputError(f"no step to run: {what} with {steps} steps")
        return start, stop

    def _output(
        self, x, output, prompt, negative, steps, sampler, scheduler, guidance, seed, width, height
    ):
        """Final latents -> what `output` asks for; PIL images carry A1111 parameters."""
        if output == "latent":
            return x
        images = postprocess(self.decode(x))
        if output == "np":
            return images
        params = format_parameters(
            prompt,
            negative,
            steps=steps,
            sampler=sampler,
            scheduler=scheduler or ("diffusers" if sampler == "ddim" else "normal"),
            guidance=guidance,
            seed=seed,
            width=width,
            height=height,
            model_hash=self.bundle.manifest["provenance"]["source_sha256"],
            model_name=self.bundle.manifest["provenance"]["source"],
        )
        pil = to_pil(images)
        for im in pil:
            im.info["parameters"] = params
        return pil

    def split_index(
        self, sigmas: np.ndarray, timesteps: dict[float, float] | None, fraction: float
    ) -> int:
        """Steps of the schedule at or above diffusers' SDXL cutoff timestep for `fraction`.

        diffusers' `denoising_end=f` keeps the timesteps t >= round(T - f T) and
        `denoising_start=f` runs the rest; this is that count for the schedule's (exact
        diffusers or, for other schedulers, interpolated) timesteps.
        """
        head = sigmas[:-1]
        if timesteps:
            ts = np.array([timesteps[float(s)] for s in head], dtype=np.float64)
        else:
            ts = samplers.sigma_to_t(head, self.model_sigmas)
        total = self.schedule["num_train_timesteps"]
        cutoff = int(round(total - fraction * total))
        return int(np.count_nonzero(ts >= cutoff))

    def time_ids(
        self,
        height: int,
        width: int,
        original_size: tuple[int, int] | None,
        crops_coords_top_left: tuple[int, int],
        target_size: tuple[int, int] | None,
        aesthetic_score: float,
        negative_aesthetic_score: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """SDXL time ids (cond, uncond) in diffusers' order: base (original size, crop top-left,
        target size), refiner (original size, crop top-left, aesthetic score)."""
        pairs = {
            "original_size": original_size or (height, width),
            "crops_coords_top_left": crops_coords_top_left,
            "target_size": target_size or (height, width),
        }
        for name, v in pairs.items():
            if len(tuple(v)) != 2:
                raise InputError(f"{name} must be a (height, width) / (top, left) pair, got {v!r}")
        head = [*pairs["original_size"], *pairs["crops_coords_top_left"]]
        if self.sdxl["requires_aesthetics_score"]:
            pos, neg = head + [aesthetic_score], head + [negative_aesthetic_score]
        else:
            pos = neg = head + list(pairs["target_size"])
        return np.asarray(pos, np.float32), np.asarray(neg, np.float32)

    def _latent_image(self, image) -> np.ndarray | None:
        """`image` as a (B, C, h, w) latent array when it has the latent channel count, else None."""
        if not isinstance(image, np.ndarray) or image.ndim != 4:
            return None
        if image.shape[1] != self.latent["channels"]:
            raise InputError(
                f"a 4-d image= is read as latents and needs {self.latent['channels']} channels, "
                f"got shape {image.shape}"
            )
        arr = image.astype(np.float32)
        if not np.isfinite(arr).all():
            raise InputError("the latent image= contains NaN/Inf")
        return arr

    # --- components ---------------------------------------------------------------------------

    def _unet(self, **inputs: np.ndarray) -> np.ndarray:
        return self.components["unet"](**inputs)["out_sample"]

    def encode(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Pixels in [-1, 1] -> scaled latents, sampled from the encoder's distribution."""
        out = self.components["vae_encoder"](image=pixels)
        mean = out["latent_mean"].astype(np.float32)
        std = out["latent_std"].astype(np.float32)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise NumericsError("the VAE encoder returned NaN/Inf")
        z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        return (z - np.float32(self.latent["shift_factor"])) * np.float32(
            self.latent["scaling_factor"]
        )

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents -> images in [-1, 1], (B, 3, H, W); never NaN/Inf.

        An fp16 decode that overflows (NaN/Inf) is redone with the bundle's fp32 decoder; with
        `vae_upcast` the fp32 decoder runs from the start.
        """
        z = latents / np.float32(self.latent["scaling_factor"]) + np.float32(
            self.latent["shift_factor"]
        )
        if not self.vae_upcast:
            image = self.components["vae_decoder"](latent=z)["image"].astype(np.float32, copy=False)
            if np.isfinite(image).all():
                return image
            if not self.fp32_decoder:
                raise NumericsError(
                    "the VAE decoder returned NaN/Inf (fp16 overflow?) and the bundle has no fp32 "
                    "decoder to fall back on; export it with precision='fp32'"
                )
        image = self.components[self.fp32_decoder](latent=z)["image"].astype(np.float32, copy=False)
        if not np.isfinite(image).all():
            raise NumericsError("the fp32 VAE decoder returned NaN/Inf: the latents are broken")
        return image

    def save(self, image, path: str | Path) -> Path:
        """Write a generated PIL image as PNG with its generation parameters."""
        return save_png(image, path, image.info.get("parameters", ""))


def _batch_latent(latent: np.ndarray, batch: int) -> np.ndarray:
    """A latent image for `batch` generations: one repeated, or exactly one per generation."""
    if latent.shape[0] == batch:
        return latent
    if latent.shape[0] == 1:
        return np.repeat(latent, batch, axis=0)
    raise InputError(f"{latent.shape[0]} latent images for {batch} generations")


def _image_size(image) -> tuple[int, int]:
    if hasattr(image, "size") and not isinstance(image, np.ndarray):
        return image.size
    arr = np.asarray(image)
    return arr.shape[1], arr.shape[0]
