"""The reference CLIP text encoder against transformers' CLIPTextModel / CLIPTextModelWithProjection.

Tiny configs (width 64, 4 heads, 5 layers, vocab 1000, 77 positions) with seeded random weights
are saved by transformers (`save_pretrained`, safetensors) and loaded strictly into
`latentrt.export.models.clip.CLIPTextModel`; every output must match within 1e-5 (fp32).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel

TOL = 1e-5
LAYERS = 5
# (activation, projection_dim, eos_token_id): eos 2 is transformers' legacy argmax pooling rule.
VARIANTS = [
    ("quick_gelu", None, 2),
    ("gelu", 32, 2),
    ("quick_gelu", 32, 500),
    ("gelu", None, 500),
]


def tiny_config(act: str, proj: int | None, eos: int, layers: int = LAYERS) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=proj,
        eos_token_id=eos,
    )


def make_oracle(config: CLIPTextConfig, seed: int = 0) -> torch.nn.Module:
    """A transformers model of `config` with seeded weights; biases and norms randomized too."""
    torch.manual_seed(seed)
    tconf = transformers.CLIPTextConfig(**config.to_transformers())
    cls = (
        transformers.CLIPTextModelWithProjection
        if config.projection_dim
        else transformers.CLIPTextModel
    )
    model = cls(tconf).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


def oracle_text_model(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "text_model", model)


def make_ids(eos: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Token ids with the pooled token at a different position in each row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 999, (batch, 77), generator=g)
    ids[:, 0] = 0
    eos_positions = [9, 40, 23][:batch]
    for row, pos in enumerate(eos_positions):
        ids[row, pos] = 999 if eos == 2 else eos
        if eos != 2:
            ids[row, :pos][ids[row, :pos] == eos] = 7
    return ids


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-proj{v[1]}-eos{v[2]}")
def saved(request, tmp_path_factory):
    config = tiny_config(*request.param)
    oracle = make_oracle(config)
    folder = tmp_path_factory.mktemp("text_encoder")
    oracle.save_pretrained(folder)
    return config, oracle, folder


def load_saved(folder) -> tuple[CLIPTextConfig, dict]:
    config = CLIPTextConfig.from_transformers(json.loads((folder / "config.json").read_text()))
    return config, load_file(folder / "model.safetensors")


def test_matches_transformers(saved):
    config, oracle, folder = saved
    loaded_config, sd = load_saved(folder)
    assert loaded_config == config
    model = CLIPTextModel(loaded_config).eval()
    model.load_state_dict(sd, strict=True)
    ids = make_ids(config.eos_token_id)
    if config.eos_token_id != 2:
        # The two pooling rules must disagree here, or the test could not tell them apart.
        assert not torch.equal(ids.argmax(-1), (ids == config.eos_token_id).int().argmax(-1))
    with torch.no_grad():
        ref = oracle(ids, output_hidden_states=True)
        ref_pooled = oracle_text_model(oracle)(ids).pooler_output
        out = model(ids)
    assert (out.last_hidden_state - ref.last_hidden_state).abs().max() <= TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == LAYERS + 1
    for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert (mine - theirs).abs().max() <= TOL
    assert (out.pooler_output - ref_pooled).abs().max() <= TOL
    if config.projection_dim:
        assert out.text_embeds.shape == (2, config.projection_dim)
        assert (out.text_embeds - ref.text_embeds).abs().max() <= TOL
    else:
        assert out.text_embeds is None


def test_clip_skip_and_penultimate_layer(saved):
    config, oracle, folder = saved
    model = CLIPTextModel(config).eval()
    model.load_state_dict(load_saved(folder)[1], strict=True)
    ids = make_ids(config.eos_token_id)
    final_ln = oracle_text_model(oracle).final_layer_norm
    with torch.no_grad():
        hidden = oracle(ids, output_hidden_states=True).hidden_states
        for layer in (-2, -3, 1):
            # diffusers' clip_skip=k: hidden_states[-(k + 1)] through final_layer_norm.
            skipped = model(ids, layer=layer, final_norm=True)
            assert (skipped.last_hidden_state - final_ln(hidden[layer])).abs().max() <= TOL
            assert skipped.pooler_output is None and skipped.text_embeds is None
            # SDXL: the penultimate hidden state without the final layer norm.
            raw = model(ids, layer=layer, final_norm=False).last_hidden_state
            assert (raw - hidden[layer]).abs().max() <= TOL
        assert (model(ids, layer=-1).last_hidden_state - final_ln(hidden[-1])).abs().max() <= TOL
    with pytest.raises(ValueError, match="out of range"):
        model(ids, layer=-(LAYERS + 2))


def test_unused_last_layer_cannot_leak_nan():
    """With NaN weights in the last layer, the penultimate path stays finite and exact."""
    config = tiny_config("quick_gelu", 32, 2)
    oracle = make_oracle(config)
    with torch.no_grad():
        for param in oracle_text_model(oracle).encoder.layers[-1].parameters():
            param.fill_(float("nan"))
    model = CLIPTextModel(config).eval()
    model.load_state_dict(oracle.state_dict(), strict=True)
    ids = make_ids(2)
    with torch.no_grad():
        ref = oracle(ids, output_hidden_states=True).hidden_states[-2]
        out = model(ids, layer=-2, final_norm=False)
        full = model(ids)
    assert torch.isfinite(out.last_hidden_state).all()
    assert len(out.hidden_states) == LAYERS
    assert (out.last_hidden_state - ref).abs().max() <= TOL
    assert torch.isnan(full.last_hidden_state).all()  # the NaN weights really are loaded


def test_state_dict_key_variants_load_strictly():
    config = tiny_config("quick_gelu", None, 2)
    oracle = make_oracle(config)
    sd = {
        f"text_model.{k}" if not k.startswith("text_model.") else k: v
        for k, v in oracle.state_dict().items()
    }
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    flat = {k.removeprefix("text_model."): v for k, v in sd.items()}
    for variant in (sd, flat):
        CLIPTextModel(config).load_state_dict(variant, strict=True)
    with pytest.raises(RuntimeError, match="text_model.encoder.layers.9.mlp.fc1.weight"):
        CLIPTextModel(config).load_state_dict(
            {**sd, "text_model.encoder.layers.9.mlp.fc1.weight": torch.zeros(1)}, strict=True
        )
    missing = dict(sd)
    del missing["text_model.final_layer_norm.bias"]
    with pytest.raises(RuntimeError, match="text_model.final_layer_norm.bias"):
        CLIPTextModel(config).load_state_dict(missing, strict=True)


def test_config_round_trip():
    for variant in VARIANTS:
        config = tiny_config(*variant)
        assert CLIPTextConfig.from_transformers(config.to_transformers()) == config
        theirs = transformers.CLIPTextConfig(**config.to_transformers()).to_dict()
        assert CLIPTextConfig.from_transformers(theirs, with_projection=bool(variant[1])) == config
    # A plain CLIPTextModel config carries an unused projection_dim (SD 1.x: 768).
    plain = {"architectures": ["CLIPTextModel"], "projection_dim": 768, "hidden_size": 768}
    assert CLIPTextConfig.from_transformers(plain).projection_dim is None


def test_onnx_export_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    config = tiny_config("gelu", 32, 2)
    model = CLIPTextModel(config).eval()
    model.load_state_dict(make_oracle(config).state_dict(), strict=True)

    class Outputs(torch.nn.Module):
        def __init__(self, inner: CLIPTextModel) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            out = self.inner(input_ids)
            return out.last_hidden_state, out.hidden_states[-2], out.text_embeds

    path = tmp_path / "clip.onnx"
    torch.onnx.export(
        Outputs(model).eval(),
        (make_ids(2),),
        str(path),
        input_names=["input_ids"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=16)},),
        dynamo=True,
        verbose=False,
    )
    ids = make_ids(2, batch=3, seed=5)
    got = ort.InferenceSession(str(path)).run(None, {"input_ids": ids.numpy()})
    with torch.no_grad():
        want = Outputs(model)(ids)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w.numpy()).max() <= 1e-4
