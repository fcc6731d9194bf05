"""UNet2DCondition against diffusers' UNet2DConditionModel (the oracle) on tiny, realistic configs.

Each family is built in diffusers with seeded random weights (every parameter re-randomized so
that zero-initialized outputs such as conv_out and proj_out matter), saved with save_pretrained
as safetensors, read back into latentrt strictly, and both models are run on the same inputs.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from latentrt.errors import InputError
from latentrt.export.models.unet import UNet2DCondition, UNetConfig

TOL = 1e-5
CA_DOWN, DOWN, CA_UP, UP = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
SDXL_POOLED = 32  # tiny pooled text width; time ids add 6 x 256

# Tiny diffusers configs with the structure of each published family.
CASES: dict[str, dict] = {
    # SD 1.x: 4 levels, attention at the first three, 8 heads, 1x1-conv projections, 768 context.
    "sd1": dict(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=(CA_DOWN, CA_DOWN, CA_DOWN, DOWN),
        up_block_types=(UP, CA_UP, CA_UP, CA_UP),
        attention_head_dim=8,
        cross_attention_dim=768,
    ),
    # SD 2.x: 64-dim heads (diffusers' attention_head_dim is the head COUNT), linear projections,
    # 1024 context, upcast attention (as SD 2.1 v).
    "sd2": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=(CA_DOWN, CA_DOWN, DOWN),
        up_block_types=(UP, CA_UP, CA_UP),
        attention_head_dim=[1, 2, 2],
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    # SD 1.5 inpainting: 9 input channels (latent, mask, masked-image latent).
    "inpaint": dict(
        in_channels=9,
        block_out_channels=(32, 64, 64),
        down_block_types=(CA_DOWN, CA_DOWN, DOWN),
        up_block_types=(UP, CA_UP, CA_UP),
        attention_head_dim=8,
        cross_attention_dim=768,
    ),
    # SDXL base: no attention at level 0, deeper transformers below, text_time conditioning.
    "sdxl": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=(DOWN, CA_DOWN, CA_DOWN),
        up_block_types=(CA_UP, CA_UP, UP),
        attention_head_dim=[1, 2, 2],
        transformer_layers_per_block=[1, 1, 2],
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=SDXL_POOLED + 6 * 256,
    ),
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter: norms ~ 1 ± 0.1, biases ~ 0.1 N(0,1), weights ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


@functools.cache
def reference(case: str) -> tuple[UNet2DConditionModel, Path]:
    """The diffusers model for `case` with seeded weights, and its save_pretrained folder."""
    torch.manual_seed(0)
    kwargs = dict(layers_per_block=2, norm_num_groups=32, sample_size=16, **CASES[case])
    ref = UNet2DConditionModel(**kwargs).eval()
    randomize(ref, seed=sorted(CASES).index(case))
    folder = Path(tempfile.mkdtemp(prefix=f"latentrt-unet-{case}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, folder


def load_latentrt(folder: Path) -> UNet2DCondition:
    """latentrt's UNet from a diffusers folder: config.json + safetensors, strict load."""
    config = json.loads((folder / "config.json").read_text())
    model = UNet2DCondition(UNetConfig.from_diffusers(config)).eval()
    model.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return model


def inputs(case: str, height: int, width: int, batch: int = 2, seed: int = 1) -> dict:
    """Model inputs for `case`: latent, per-sample timesteps, context (+ SDXL pooled/time ids)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = CASES[case]
    args = dict(
        sample=torch.randn(batch, cfg.get("in_channels", 4), height, width, generator=gen),
        timestep=torch.tensor([999.0, 1.5, 500.0, 250.0][:batch]),
        encoder_hidden_states=torch.randn(batch, 7, cfg["cross_attention_dim"], generator=gen),
    )
    if cfg.get("addition_embed_type") == "text_time":
        args["text_embeds"] = torch.randn(batch, SDXL_POOLED, generator=gen)
        args["time_ids"] = torch.tensor([[1024.0, 768.0, 0.0, 16.0, 1024.0, 768.0]] * batch)
    return args


def run_reference(ref: UNet2DConditionModel, args: dict, **extra) -> torch.Tensor:
    added = None
    if "text_embeds" in args:
        added = {"text_embeds": args["text_embeds"], "time_ids": args["time_ids"]}
    with torch.no_grad():
        return ref(
            args["sample"],
            args["timestep"],
            args["encoder_hidden_states"],
            added_cond_kwargs=added,
            **extra,
        ).sample


def run_latentrt(model: UNet2DCondition, args: dict, **extra) -> torch.Tensor:
    with torch.no_grad():
        return model(**args, **extra)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_diffusers(case: str) -> None:
    """Same weights through a diffusers folder give the same output (non-square latent, batch 2)."""
    ref, folder = reference(case)
    model = load_latentrt(folder)
    args = inputs(case, 32, 24)
    want = run_reference(ref, args)
    got = run_latentrt(model, args)
    assert got.shape == want.shape == (2, 4, 32, 24)
    assert want.std() > 0.1  # the output is not dominated by one path or collapsed
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("case", ["sd1", "sdxl"])
def test_sizes_not_a_multiple_of_the_downsampling(case: str) -> None:
    """Latent sizes that halve to odd sizes: upsampling must restore each skip's size."""
    ref, folder = reference(case)
    model = load_latentrt(folder)
    args = inputs(case, 20, 12, batch=1, seed=3)
    want = run_reference(ref, args)
    assert (run_latentrt(model, args) - want).abs().max().item() <= TOL


@pytest.mark.parametrize(
    "timestep", [torch.tensor(321), torch.tensor(321.25), torch.tensor([321, 321])]
)
def test_timestep_forms(timestep: torch.Tensor) -> None:
    """0-d int/float and (B,) int timesteps broadcast to the batch as diffusers does."""
    ref, folder = reference("sd2")
    model = load_latentrt(folder)
    args = {**inputs("sd2", 16, 16), "timestep": timestep}
    want = run_reference(ref, args)
    assert (run_latentrt(model, args) - want).abs().max().item() <= TOL


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_weights(dtype: torch.dtype, tol: float) -> None:
    """fp16/bf16 weights run (upcast attention path included) and stay near the fp32 output."""
    _, folder = reference("sd2")
    args = inputs("sd2", 16, 16)
    want = run_latentrt(load_latentrt(folder), args)
    model = load_latentrt(folder).to(dtype)
    half = {k: v.to(dtype) if k != "timestep" else v for k, v in args.items()}
    got = run_latentrt(model, half)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert (got.float() - want).abs().max().item() <= tol


@pytest.mark.parametrize("case", ["sd1", "sdxl"])
def test_controlnet_residuals(case: str) -> None:
    """Extra residuals on every skip and the mid block, vs diffusers' ControlNet arguments."""
    ref, folder = reference(case)
    model = load_latentrt(folder)
    args = inputs(case, 16, 24, seed=5)
    with torch.no_grad():  # shapes of the skips: run diffusers' down path once via hooks
        skips, mid = _skip_shapes(ref, args)
    gen = torch.Generator().manual_seed(7)
    down = [torch.randn(s, generator=gen) for s in skips]
    mid_res = torch.randn(mid, generator=gen)
    assert [s[1] for s in skips] == list(model.config.skip_channels)
    want = run_reference(
        ref, args, down_block_additional_residuals=down, mid_block_additional_residual=mid_res
    )
    got = run_latentrt(model, args, down_block_residuals=down, mid_block_residual=mid_res)
    plain = run_latentrt(model, args)
    assert (got - plain).abs().max().item() > 0.1  # the residuals do change the output
    assert (got - want).abs().max().item() <= TOL


def _skip_shapes(ref: UNet2DConditionModel, args: dict) -> tuple[list, tuple]:
    """Shapes of diffusers' down-path skips (conv_in output, then every block's states) and mid."""
    shapes: list = []
    hooks = [ref.conv_in.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))]
    for block in ref.down_blocks:
        hooks.append(
            block.register_forward_hook(lambda m, i, o: shapes.extend(tuple(s.shape) for s in o[1]))
        )
    mid: list = []
    hooks.append(ref.mid_block.register_forward_hook(lambda m, i, o: mid.append(tuple(o.shape))))
    run_reference(ref, args)
    for h in hooks:
        h.remove()
    return shapes, mid[0]


def test_bad_arguments_raise() -> None:
    """SDXL without its added conditioning, or half a ControlNet, is refused with InputError."""
    _, folder = reference("sdxl")
    model = load_latentrt(folder)
    args = inputs("sdxl", 16, 16)
    with pytest.raises(InputError, match="text_embeds"):
        model(args["sample"], args["timestep"], args["encoder_hidden_states"])
    with pytest.raises(InputError, match="both"):
        model(**args, down_block_residuals=[args["sample"]])
    with pytest.raises(InputError, match="skip connections"):
        model(**args, down_block_residuals=[args["sample"]], mid_block_residual=args["sample"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trip(case: str) -> None:
    """to_diffusers() builds, in diffusers, a model with exactly our parameter names and shapes."""
    ref, _ = reference(case)
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    assert UNetConfig.from_diffusers(cfg.to_diffusers()) == cfg
    with torch.device("meta"):
        rebuilt = UNet2DConditionModel.from_config(cfg.to_diffusers())
        ours = UNet2DCondition(cfg)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == want
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want


# The published SDXL base UNet config (the keys that differ from diffusers' defaults).
SDXL_BASE = dict(
    block_out_channels=[320, 640, 1280],
    down_block_types=[DOWN, CA_DOWN, CA_DOWN],
    up_block_types=[CA_UP, CA_UP, UP],
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def test_published_configs_build_the_same_parameters() -> None:
    """Full-size SD 1.5, SD 2.1 and SDXL base configs (meta tensors): identical names and shapes."""
    sd21 = dict(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024)
    sd21.update(use_linear_projection=True, upcast_attention=True, sample_size=96)
    sdxl = SDXL_BASE
    for config in ({"cross_attention_dim": 768}, sd21, sdxl):
        with torch.device("meta"):
            ref = UNet2DConditionModel(**config)
            ours = UNet2DCondition(UNetConfig.from_diffusers(dict(ref.config)))
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("class_embed_type", "projection"),
        ("time_cond_proj_dim", 256),
        ("down_block_types", ["SimpleCrossAttnDownBlock2D", DOWN]),
        ("only_cross_attention", [True, False]),
        ("encoder_hid_dim", 1024),
        ("resnet_time_scale_shift", "scale_shift"),
        ("some_future_setting", 1),
    ],
)
def test_unsupported_settings_raise(key: str, value: object) -> None:
    """Settings that would change the math are refused, naming the key; harmless ones pass."""
    base = {
        "block_out_channels": [32, 64],
        "down_block_types": [CA_DOWN, DOWN],
        "up_block_types": [UP, CA_UP],
        "dropout": 0.1,
        "_diffusers_version": "0.30.0",
    }
    UNetConfig.from_diffusers(base)
    with pytest.raises(NotImplementedError, match=key if key != "down_block_types" else "down"):
        UNetConfig.from_diffusers({**base, key: value})
