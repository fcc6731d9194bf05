"""Every sampler and scheduler runs through the ORT pipeline, CFG++ samplers included."""

from __future__ import annotations

import numpy as np
import pytest

from latentrt import Pipeline
from latentrt.export import export_bundle
from latentrt.samplers import SAMPLERS, SCHEDULERS
from tests import sd_fixtures


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("samplers")
    src = sd_fixtures.sd_pipeline(root / "src", "sd1", seed=11)
    return Pipeline.load(export_bundle(src, root / "bundle"))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampler_runs_in_the_pipeline(pipe, sampler):
    kw = {"width": 64, "height": 64, "steps": 4, "guidance": 5.0, "output": "np"}
    a = pipe.generate("a red circle", sampler=sampler, seed=1, **kw)
    b = pipe.generate("a red circle", sampler=sampler, seed=1, **kw)
    assert a.shape == (1, 64, 64, 3) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # seeded: the same image twice


def test_cfg_pp_differs_from_plain_cfg(pipe):
    kw = {"width": 64, "height": 64, "steps": 4, "guidance": 5.0, "seed": 2, "output": "latent"}
    plain = pipe.generate("a red circle", sampler="euler", **kw)
    cfgpp = pipe.generate("a red circle", sampler="euler_cfg_pp", **kw)
    assert np.abs(plain - cfgpp).max() > 1e-3


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_scheduler_runs_in_the_pipeline(pipe, scheduler):
    out = pipe.generate(
        "a blue square", width=64, height=64, steps=5, scheduler=scheduler, seed=3, output="latent"
    )
    assert out.shape == (1, 4, 8, 8) and np.isfinite(out).all()
