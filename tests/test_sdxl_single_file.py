"""Single-file checkpoints written by `write_single_file`, read back by diffusers and latentrt.

Oracle: diffusers' own single-file loader (`from_single_file` with the local diffusers folder as
config, i.e. its `single_file_utils` conversion functions) must recover exactly the weights the
diffusers pipeline saved; latentrt's `load_components` on the file must give the same models,
with bit-identical outputs, as on the folder.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open

from latentrt.export.checkpoint import load_components
from latentrt.export.single_file.writer import write_single_file
from tests import sdxl_fixtures

FAMILIES = ["sdxl", "sdxl-refiner", "sd1", "sd2"]
PREFIXES = {
    "sd1": ["cond_stage_model.transformer.text_model."],
    "sd2": ["cond_stage_model.model."],
    "sdxl": ["conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."],
    "sdxl-refiner": ["conditioner.embedders.0.model."],
}
PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
}


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with sdxl_fixtures.single_thread():
        yield


@pytest.fixture(scope="module", params=FAMILIES)
def written(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    src = sdxl_fixtures.layout_pipeline(root / "src", family, seed=FAMILIES.index(family))
    return family, src, write_single_file(src, root / f"{family}.safetensors")


def test_original_layout_keys(written):
    family, _, path = written
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    prefixes = ["model.diffusion_model.", "first_stage_model.", *PREFIXES[family]]
    assert all(any(k.startswith(p) for p in prefixes) for k in keys)
    assert all(any(k.startswith(p) for k in keys) for p in prefixes)
    expected = {
        "model.diffusion_model.input_blocks.0.0.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
    }
    if family.startswith("sdxl"):
        expected |= {"model.diffusion_model.label_emb.0.0.weight"}
        big_g = PREFIXES[family][-1]
        expected |= {
            big_g + "text_projection",
            big_g + "transformer.resblocks.0.attn.in_proj_weight",
        }
    if family in ("sd1", "sdxl"):
        expected |= {PREFIXES[family][0] + "encoder.layers.0.self_attn.q_proj.weight"}
    assert expected <= keys


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def test_diffusers_reads_back_the_saved_weights(written):
    """diffusers' single-file conversion of our file == the weights diffusers saved."""
    import diffusers

    family, src, path = written
    cls = getattr(diffusers, PIPELINES[family])
    saved = cls.from_pretrained(src)
    back = cls.from_single_file(str(path), config=str(src), local_files_only=True)
    names = [
        n for n in ("unet", "vae", "text_encoder", "text_encoder_2") if getattr(saved, n, None)
    ]
    assert names
    for name in names:
        a, b = _state(getattr(saved, name)), _state(getattr(back, name))
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_latentrt_loads_the_same_models(written):
    family, src, path = written
    folder, single = load_components(src), load_components(path)
    assert single.family == folder.family == family
    assert dataclasses.replace(single.unet.config, sample_size=None) == dataclasses.replace(
        folder.unet.config, sample_size=None
    )
    assert single.vae.config == folder.vae.config
    assert single.extra == folder.extra
    g = torch.Generator().manual_seed(0)
    ucfg = folder.unet.config
    x = torch.randn(2, ucfg.in_channels, 8, 8, generator=g)
    t = torch.tensor([999.0, 10.0])
    ctx = torch.randn(2, 77, ucfg.cross_attention_dim, generator=g)
    added = {}
    if ucfg.addition_embed_type == "text_time":
        pooled = folder.text_encoders[-1].model.config.projection_dim
        n_time = (ucfg.projection_class_embeddings_input_dim - pooled) // 256
        added = {"text_embeds": torch.randn(2, pooled, generator=g)}
        added["time_ids"] = torch.tensor([[64.0, 64, 0, 0, 64, 64][:n_time]] * 2)
    ids = torch.randint(300, 40000, (2, 77), generator=g)
    ids[:, 0], ids[:, 20:] = 49406, 49407
    with torch.no_grad():
        assert torch.equal(single.unet(x, t, ctx, **added), folder.unet(x, t, ctx, **added))
        z = torch.randn(1, 4, 8, 8, generator=g)
        assert torch.equal(single.vae.decode(z), folder.vae.decode(z))
        assert len(single.text_encoders) == len(folder.text_encoders)
        for a, b in zip(single.text_encoders, folder.text_encoders, strict=True):
            assert a.pad_token == b.pad_token
            oa, ob = a.model(ids), b.model(ids)
            assert torch.equal(oa.last_hidden_state, ob.last_hidden_state)
            assert torch.equal(oa.hidden_states[-2], ob.hidden_states[-2])
            if ob.text_embeds is not None:
                assert torch.equal(oa.text_embeds, ob.text_embeds)


def test_write_from_loaded_components_is_the_same_file(written, tmp_path):
    family, src, path = written
    again = write_single_file(load_components(src), tmp_path / "again.safetensors")
    with safe_open(path, "pt") as f, safe_open(again, "pt") as h:
        assert set(f.keys()) == set(h.keys())
        assert all(torch.equal(f.get_tensor(k), h.get_tensor(k)) for k in f.keys())
