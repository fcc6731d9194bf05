"""Noise samplers: ``noise_sampler(sigma, sigma_next) -> ndarray`` of unit-variance noise.

The iid sampler draws fresh normals from a numpy Generator. The Brownian-tree sampler returns
``(W(t_next) - W(t)) / sqrt(|t_next - t|)`` of one Brownian path W fixed by the seed, so SDE
samplers see correlated noise across sub-steps and the same result whatever order intervals are
queried in (k-diffusion's BrownianTreeNoiseSampler semantics, built on numpy).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from latentrt.errors import SamplerError

NoiseSampler = Callable[[float, float], np.ndarray]


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A Generator from an int seed, an existing Generator, or fresh OS entropy for None."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    raise SamplerError(f"seed must be an int, a numpy Generator or None, got {type(seed).__name__}")


def _noise_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def default_noise_sampler(x: np.ndarray, rng: np.random.Generator) -> NoiseSampler:
    """Independent standard normals shaped like ``x`` on every call."""
    dtype = _noise_dtype(x)
    shape = x.shape

    def sampler(sigma: float, sigma_next: float) -> np.ndarray:
        return rng.standard_normal(shape, dtype=dtype).astype(x.dtype, copy=False)

    return sampler


class BrownianTree:
    """A Brownian path on [t0, t1] evaluated lazily by bisection with Brownian bridges.

    The node at (depth, index) takes its normal draw from a Generator seeded by
    (entropy, depth, index), so W(t) depends only on t and the seed. A query descends until it is
    within ``tol`` of a dyadic node and returns that node's value (as torchsde's BrownianTree does).
    Recently used nodes are cached, which makes sequential sampler queries cheap.
    """

    def __init__(
        self,
        t0: float,
        t1: float,
        shape: tuple[int, ...],
        entropy: int,
        *,
        dtype: np.dtype = np.float64,
        tol: float | None = None,
        cache_size: int = 128,
    ) -> None:
        if not t1 > t0:
            raise SamplerError(f"BrownianTree needs t0 < t1, got [{t0}, {t1}]")
        self.t0, self.t1 = float(t0), float(t1)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.entropy = int(entropy)
        self.tol = (self.t1 - self.t0) * 2.0**-22 if tol is None else float(tol)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_size = int(cache_size)
        self._w1 = math.sqrt(self.t1 - self.t0) * self._normal(0, -1)

    def _normal(self, depth: int, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.entropy, depth + 1, index + 1])
        return rng.standard_normal(self.shape, dtype=self.dtype)

    def _node(self, depth: int, index: int, wa: np.ndarray, wb: np.ndarray, width: float):
        key = (depth, index)
        value = self._cache.get(key)
        if value is None:
            value = 0.5 * (wa + wb) + (0.5 * math.sqrt(width)) * self._normal(depth, index)
            self._cache[key] = value
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return value

    def __call__(self, t: float) -> np.ndarray:
        """W(t) for t in [t0, t1] (W(t0) = 0)."""
        t = float(t)
        span = self.t1 - self.t0
        if not (self.t0 - 1e-12 * span <= t <= self.t1 + 1e-12 * span):
            raise SamplerError(
                f"Brownian tree queried at {t:.6g}, outside its interval [{self.t0:.6g}, {self.t1:.6g}]"
            )
        zeros = np.zeros(self.shape, dtype=self.dtype)
        if t <= self.t0:
            return zeros
        if t >= self.t1:
            return self._w1
        a, b, wa, wb = self.t0, self.t1, zeros, self._w1
        depth, index = 0, 0
        while True:
            mid = 0.5 * (a + b)
            wm = self._node(depth, index, wa, wb, b - a)
            if abs(t - mid) <= self.tol or depth >= 60:
                return wm
            if t < mid:
                b, wb, index = mid, wm, 2 * index
            else:
                a, wa, index = mid, wm, 2 * index + 1
            depth += 1


class BrownianTreeNoiseSampler:
    """Noise from one Brownian path over [sigma_min, sigma_max]: (W(t1)-W(t0))/sqrt(|t1-t0|).

    ``tol`` (default 2^-22 of the range) trades accuracy of W at arbitrary points for speed.
    """

    def __init__(
        self,
        x: np.ndarray,
        sigma_min: float,
        sigma_max: float,
        seed: int | np.random.Generator | None = None,
        transform: Callable[[float], float] | None = None,
        tol: float | None = None,
    ) -> None:
        self.transform = transform if transform is not None else float
        ta, tb = self.transform(float(sigma_min)), self.transform(float(sigma_max))
        lo, hi = min(ta, tb), max(ta, tb)
        if isinstance(seed, (int, np.integer)):
            entropy = int(seed)
        else:
            entropy = int(make_rng(seed).integers(0, 2**63 - 1))
        self.tree = BrownianTree(lo, hi, x.shape, entropy, dtype=_noise_dtype(x), tol=tol)
        self.out_dtype = x.dtype

    def __call__(self, sigma: float, sigma_next: float) -> np.ndarray:
        t0, t1 = self.transform(float(sigma)), self.transform(float(sigma_next))
        if t0 == t1:
            raise SamplerError(f"Brownian noise requested over an empty interval at sigma={sigma}")
        w = (self.tree(t1) - self.tree(t0)) / math.sqrt(abs(t1 - t0))
        return w.astype(self.out_dtype, copy=False)
