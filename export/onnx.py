"""Export each component of the reference tree to its own ONNX graph.

Every graph has named inputs and outputs and dynamic batch / height / width (and sequence
length where it applies). Graphs are written with IR version <= 13 (what ONNX Runtime 1.31
accepts), checked with `onnx.checker`, and use external data beside the file when over 2 GB.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from google.protobuf.message import EncodeError
from torch import nn

from latentrt.errors import ExportError
from latentrt.export.models.clip import CLIPTextModel
from latentrt.export.models.unet import UNet2DCondition
from latentrt.export.models.vae import AutoencoderKL

OPSET = 17
MAX_IR_VERSION = 13
PROTOBUF_LIMIT = 2**31 - 1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class GraphSpec:
    """What the manifest records about one exported graph."""

    inputs: dict[str, dict]  # name -> {"dtype": "float32", "shape": ["batch", 4, "height", ...]}
    outputs: dict[str, dict]

    def to_json(self) -> dict:
        return {"inputs": self.inputs, "outputs": self.outputs}


# --- graph wrappers: the exact function each ONNX file computes ---------------------------------


class TextEncoderGraph(nn.Module):
    """input_ids (B, S) -> last hidden state (final LN), penultimate hidden state (raw), pooled.

    With `penultimate_only=True` the graph returns only the raw penultimate hidden state and
    never computes the last layer (SDXL's CLIP-L: merged checkpoints with a NaN or garbage last
    layer must give the same conditioning as clean ones).
    """

    def __init__(self, model: CLIPTextModel, penultimate_only: bool = False) -> None:
        super().__init__()
        self.model = model
        self.penultimate_only = penultimate_only

    def forward(self, input_ids: torch.Tensor):
        if self.penultimate_only:
            return self.model(input_ids, layer=-2, final_norm=False).last_hidden_state
        out = self.model(input_ids)
        pooled = out.text_embeds if out.text_embeds is not None else out.pooler_output
        return out.last_hidden_state, out.hidden_states[-2], pooled


class UNetGraph(nn.Module):
    """(sample, timestep, context[, text_embeds, time_ids]) -> model output (eps / v)."""

    def __init__(self, model: UNet2DCondition) -> None:
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        return self.model(
            sample, timestep, encoder_hidden_states, text_embeds=text_embeds, time_ids=time_ids
        )


class VAEEncoderGraph(nn.Module):
    """image in [-1, 1] -> mean and standard deviation of the (unscaled) latent distribution."""

    def __init__(self, model: AutoencoderKL) -> None:
        super().__init__()
        self.model = model

    def forward(self, image):
        mean, logvar = self.model.encode(image)
        return mean, torch.exp(0.5 * logvar)


class VAEDecoderGraph(nn.Module):
    """unscaled latent -> image in [-1, 1] (the runtime applies scaling factor and shift)."""

    def __init__(self, model: AutoencoderKL) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent):
        return self.model.decode(latent)


# --- export --------------------------------------------------------------------------------------


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.").replace("half", "float16").replace("float", "float")


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
) -> GraphSpec:
    """Trace `module` on `args` into `path`, then fix the IR version and run the checker."""
    module = module.eval()
    with torch.no_grad():
        outputs = module(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    args,
                    str(raw),
                    dynamo=False,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=dynamic,
                    opset_version=OPSET,
                    do_constant_folding=True,
                )
            except Exception as e:  # torch raises many kinds; name the component
                raise ExportError(f"exporting {path.name} failed: {e}") from e
        model = onnx.load(str(raw), load_external_data=True)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "latentrt"
    save_onnx(model, path)

    def spec(names, tensors):
        return {
            n: {
                "dtype": _dtype_name(t),
                "shape": [dynamic.get(n, {}).get(i, int(s)) for i, s in enumerate(t.shape)],
            }
            for n, t in zip(names, tensors, strict=True)
        }

    return GraphSpec(spec(input_names, args), spec(output_names, outputs))


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save and check a model, moving weights to `<name>.data` beside it when over 2 GB."""
    path = Path(path)
    if _too_large(model):
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))


def _too_large(model: onnx.ModelProto) -> bool:
    """Whether the model exceeds protobuf's 2 GB limit (protobuf raises past it)."""
    try:
        return model.ByteSize() > PROTOBUF_LIMIT
    except (ValueError, EncodeError):
        return True


def export_text_encoder(
    model: CLIPTextModel, path: Path, precision: str, *, penultimate_only: bool = False
) -> GraphSpec:
    """Export a CLIP text encoder; `penultimate_only` leaves the last layer out of the graph."""
    m = TextEncoderGraph(model.to(DTYPES[precision]), penultimate_only)
    n = model.config.max_position_embeddings
    ids = torch.zeros(2, n, dtype=torch.int64)
    ids[:, 0] = model.config.bos_token_id
    ids[:, -1] = model.config.eos_token_id
    names_out = (
        ["penultimate_hidden_state"]
        if penultimate_only
        else ["last_hidden_state", "penultimate_hidden_state", "pooled"]
    )
    dyn = {"input_ids": {0: "batch"}} | {o: {0: "batch"} for o in names_out}
    return export_graph(m, (ids,), path, ["input_ids"], names_out, dyn)


def export_unet(
    model: UNet2DCondition, path: Path, precision: str, *, text_embeds_dim: int | None = None
) -> GraphSpec:
    """Export the UNet; SDXL (text_time) UNets need the pooled text width, `text_embeds_dim`."""
    cfg = model.config
    dtype = DTYPES[precision]
    m = UNetGraph(model.to(dtype))
    dev = next(model.parameters()).device  # traced where the model lives (a GPU is faster)
    sample = torch.randn(2, cfg.in_channels, 8 * 2, 8 * 2, dtype=dtype, device=dev)
    t = torch.tensor([999.0, 1.0], dtype=torch.float32, device=dev)
    ctx = torch.randn(2, 77, cfg.cross_attention_dim, dtype=dtype, device=dev)
    args = [sample, t, ctx]
    names = ["sample", "timestep", "encoder_hidden_states"]
    dyn = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        "out_sample": {0: "batch", 2: "height", 3: "width"},
    }
    if cfg.addition_embed_type == "text_time":
        pooled, n_time = sdxl_added_dims(model, text_embeds_dim)
        args += [
            torch.randn(2, pooled, dtype=dtype, device=dev),
            torch.ones(2, n_time, dtype=dtype, device=dev),
        ]
        names += ["text_embeds", "time_ids"]
        dyn |= {"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}}
    return export_graph(m, tuple(args), path, names, ["out_sample"], dyn)


def sdxl_added_dims(model: UNet2DCondition, text_embeds_dim: int | None) -> tuple[int, int]:
    """(pooled text width, number of time ids) an SDXL UNet's add-embedding MLP takes."""
    cfg = model.config
    if text_embeds_dim is None:
        raise ExportError("an SDXL (text_time) UNet needs text_embeds_dim, the pooled text width")
    rest = cfg.projection_class_embeddings_input_dim - text_embeds_dim
    if rest <= 0 or rest % cfg.addition_time_embed_dim:
        raise ExportError(
            f"UNet add embedding takes {cfg.projection_class_embeddings_input_dim} features: not "
            f"{text_embeds_dim} pooled text features plus whole {cfg.addition_time_embed_dim}-wide "
            "time id embeddings; the text encoder does not belong to this UNet"
        )
    return text_embeds_dim, rest // cfg.addition_time_embed_dim


def export_vae_encoder(model: AutoencoderKL, path: Path, precision: str) -> GraphSpec:
    dtype = DTYPES[precision]
    m = VAEEncoderGraph(model.to(dtype))
    image = torch.rand(1, model.config.in_channels, 64, 64, dtype=dtype) * 2 - 1
    dyn = {n: {0: "batch", 2: "height", 3: "width"} for n in ("image", "latent_mean", "latent_std")}
    return export_graph(m, (image,), path, ["image"], ["latent_mean", "latent_std"], dyn)


def export_vae_decoder(model: AutoencoderKL, path: Path, precision: str) -> GraphSpec:
    dtype = DTYPES[precision]
    m = VAEDecoderGraph(model.to(dtype))
    latent = torch.randn(1, model.config.latent_channels, 8, 8, dtype=dtype)
    dyn = {n: {0: "batch", 2: "height", 3: "width"} for n in ("latent", "image")}
    return export_graph(m, (latent,), path, ["latent"], ["image"], dyn)
