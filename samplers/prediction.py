"""Model parameterizations: what a network's output means and how to turn it into the x0 estimate.

The samplers only see ``denoise(x, sigma) -> x0``. The pipeline builds that denoiser from a model
with these helpers (k-diffusion's CompVisDenoiser / CompVisVDenoiser conventions, sigma_data = 1):

- ``epsilon``: model(x * c_in, t) predicts eps; x0 = x - sigma * eps.
- ``v_prediction``: predicts v = alpha * eps - sigma_vp * x0 on the VP input; x0 = c_skip x + c_out v.
- ``sample``: predicts x0 directly.
- ``flow``: rectified flow, x = (1 - s) x0 + s eps, model predicts velocity eps - x0; x0 = x - s v.
"""

from __future__ import annotations

import numpy as np

from latentrt.errors import SamplerError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise SamplerError(
            f"unknown prediction type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}"
        )


def input_scale(prediction_type: str, sigma: float) -> float:
    """Factor c_in applied to x before the network: 1/sqrt(1 + sigma^2) for VP models, 1 for flow."""
    _check(prediction_type)
    if prediction_type == "flow":
        return 1.0
    return 1.0 / float(np.sqrt(1.0 + sigma * sigma))


def denoised_from_output(
    prediction_type: str, output: np.ndarray, x: np.ndarray, sigma: float
) -> np.ndarray:
    """The x0 estimate from a network output for k-diffusion input ``x`` at noise level ``sigma``."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return x - sigma * output
    if prediction_type == "v_prediction":
        c_skip = 1.0 / (sigma * sigma + 1.0)
        c_out = -sigma / float(np.sqrt(sigma * sigma + 1.0))
        return x * c_skip + output * c_out
    if prediction_type == "sample":
        return output
    return x - sigma * output
