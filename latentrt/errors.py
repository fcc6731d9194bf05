"""Exceptions latentrt raises for bad input: each names the problem, never a deep traceback."""


class LatentRTError(Exception):
    """Base class of every error latentrt raises on purpose."""


class CheckpointError(LatentRTError):
    """A weight file is missing, unreadable, of the wrong kind, or does not fit the model."""


class BundleError(LatentRTError):
    """A bundle directory or its manifest is missing, corrupt, unsafe or of an unknown version."""


class ExportError(LatentRTError):
    """Exporting a component to ONNX failed or produced an invalid graph."""


class InputError(LatentRTError, ValueError):
    """A generation argument is out of range or inconsistent (size, steps, strength, mask …)."""


class SamplerError(LatentRTError, ValueError):
    """Unknown sampler or scheduler, a malformed sigma table, or a denoiser that returned NaN/Inf."""


class TokenizerError(LatentRTError, ValueError):
    """Tokenizer files are missing or malformed, or the input is not text."""


class BackendError(LatentRTError):
    """An inference backend is unavailable, or a component failed to load or run on it."""


class NumericsError(LatentRTError):
    """A component produced NaN or Inf where a finite result is required."""
