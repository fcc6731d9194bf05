"""CLIP text transformer: OpenAI ViT-L/14 (SD 1.x, SDXL) and OpenCLIP ViT-H/14, bigG (SD 2.x, SDXL).

Parameter names are those of transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`
(`text_model.embeddings.token_embedding.weight`, …, `text_projection.weight`), so a
transformers state dict loads with `strict=True`. Two harmless differences of saved files are
absorbed before the strict check (see `CLIPTextModel.normalize_state_dict`): the
`position_ids` buffer that older transformers versions saved, and the missing `text_model.`
level of files written by old transformers versions or by transformers >= 5.6's flattened
`CLIPTextModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentrt.errors import CheckpointError

_ACTIVATIONS = ("quick_gelu", "gelu")
_TEXT_MODEL_CHILDREN = ("embeddings.", "encoder.", "final_layer_norm.")
_POSITION_IDS = "text_model.embeddings.position_ids"

# transformers' CLIPTextConfig defaults, used for keys a config.json leaves out.
_TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}


@dataclass(frozen=True)
class CLIPTextConfig:
    """Shape and behaviour of a CLIP text encoder; `projection_dim=None` means no text projection.

    `eos_token_id == 2` selects transformers' legacy pooling rule (EOS = position of the largest
    token id), which is what OpenCLIP does and what the SD 1.x/2.x/SDXL configs carry.
    """

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None
    eos_token_id: int = 2
    bos_token_id: int = 0
    pad_token_id: int = 1

    def __post_init__(self) -> None:
        if self.hidden_act not in _ACTIVATIONS:
            raise CheckpointError(
                f"CLIP text config: hidden_act {self.hidden_act!r} is not one of {_ACTIVATIONS}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"CLIP text config: hidden_size {self.hidden_size} does not split into "
                f"{self.num_attention_heads} heads"
            )

    @classmethod
    def from_transformers(
        cls, config: Mapping[str, Any], *, with_projection: bool | None = None
    ) -> CLIPTextConfig:
        """Read a transformers `text_encoder/config.json` dict.

        The projection exists when `architectures` names `CLIPTextModelWithProjection` (a plain
        `CLIPTextModel` config still carries an unused `projection_dim`); `with_projection`
        overrides that.
        """
        if "text_config" in config:
            raise CheckpointError(
                "CLIP text config: this is a full CLIPModel config (it has text_config); "
                "expected a text encoder config.json"
            )
        values = {key: config.get(key, default) for key, default in _TRANSFORMERS_DEFAULTS.items()}
        if with_projection is None:
            with_projection = "CLIPTextModelWithProjection" in (config.get("architectures") or ())
        if not with_projection:
            values["projection_dim"] = None
        return cls(**values)

    def to_transformers(self) -> dict[str, Any]:
        """The transformers `config.json` dict for this encoder (inverse of `from_transformers`)."""
        arch = "CLIPTextModelWithProjection" if self.projection_dim else "CLIPTextModel"
        out: dict[str, Any] = {"architectures": [arch], "model_type": "clip_text_model"}
        for key in _TRANSFORMERS_DEFAULTS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass
class CLIPTextOutput:
    """Outputs of `CLIPTextModel.forward`, named as in transformers.

    `hidden_states[0]` is the embeddings output, `hidden_states[i]` the output of layer i
    (before the final layer norm). `pooler_output` and `text_embeds` are None when not all
    layers ran; `text_embeds` is also None without a projection.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    pooler_output: torch.Tensor | None
    text_embeds: torch.Tensor | None


class CLIPTextEmbeddings(nn.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[-1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:seq_len]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v projections."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = width // self.num_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._heads(self.q_proj(x)),
            self._heads(self.k_proj(x)),
            self._heads(self.v_proj(x)),
        )
        # An explicit additive causal mask in the activations' dtype: the ONNX exporter's
        # `is_causal=True` path upcasts fp16 scores to fp32 and yields a mistyped graph.
        n = x.shape[1]
        mask = torch.full((n, n), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CLIPMLP(nn.Module):
    """Two-layer MLP with quick_gelu (OpenAI CLIP) or exact gelu (OpenCLIP)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.quick = config.hidden_act == "quick_gelu"
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.quick else F.gelu(x)
        return self.fc2(x)


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """The stack of encoder layers (kept as a level of its own for transformers' key names)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)
        )


class CLIPTextTransformer(nn.Module):
    """Embeddings, encoder layers and final layer norm: the `text_model.` level."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """CLIP text encoder, with the text projection when `config.projection_dim` is set."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)
        self.text_projection = (
            nn.Linear(config.hidden_size, config.projection_dim, bias=False)
            if config.projection_dim
            else None
        )
        self.register_load_state_dict_pre_hook(self._normalize_hook)

    @staticmethod
    def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Give a transformers CLIP text state dict this model's key names.

        Drops the `position_ids` buffer (positions are always 0..T-1 here) and adds the
        `text_model.` level where a file lacks it. Every other key is kept as it is.
        """
        out: dict[str, Any] = {}
        for key, value in state_dict.items():
            if key.startswith(_TEXT_MODEL_CHILDREN):
                key = "text_model." + key
            if key != _POSITION_IDS:
                out[key] = value
        return out

    def _normalize_hook(self, module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        own = {k[len(prefix) :]: k for k in state_dict if k.startswith(prefix)}
        normalized = self.normalize_state_dict({k: state_dict[full] for k, full in own.items()})
        for full in own.values():
            del state_dict[full]
        state_dict.update({prefix + k: v for k, v in normalized.items()})

    def resolve_layer(self, layer: int) -> int:
        """Index into `hidden_states` (0 = embeddings, n = last layer) for a possibly negative one."""
        n = self.config.num_hidden_layers
        index = layer + n + 1 if layer < 0 else layer
        if not 0 <= index <= n:
            raise ValueError(f"layer {layer} is out of range for a {n}-layer CLIP text encoder")
        return index

    def eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position of the pooled (EOS) token per sequence, by transformers' rule."""
        ids = input_ids.to(torch.int32)
        if self.config.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.config.eos_token_id).to(torch.int32).argmax(dim=-1)

    def forward(
        self, input_ids: torch.Tensor, layer: int | None = None, final_norm: bool = True
    ) -> CLIPTextOutput:
        """Encode token ids [B, T].

        `layer=None` runs every layer and returns transformers' outputs. `layer=k` runs only
        the layers needed for `hidden_states[k]` and returns it as `last_hidden_state`, passed
        through the final layer norm when `final_norm`: SD 1.x is the default, diffusers'
        `clip_skip=s` is `layer=-(s + 1)`, SDXL's prompt embedding is `layer=-2,
        final_norm=False`. Layers past the selected one never run, so their weights cannot
        affect the result.
        """
        tm = self.text_model
        n = self.config.num_hidden_layers
        stop = n if layer is None else self.resolve_layer(layer)
        x = tm.embeddings(input_ids)
        hidden_states = [x]
        for block in tm.encoder.layers[:stop]:
            x = block(x)
            hidden_states.append(x)
        normed = tm.final_layer_norm(x)
        pooled = embeds = None
        if stop == n:
            idx = self.eos_positions(input_ids)
            gather_idx = idx[:, None, None].expand(-1, 1, normed.shape[-1]).to(torch.int64)
            pooled = normed.gather(1, gather_idx)[:, 0]  # (B, D); squeeze(1) exports an If
            if self.text_projection is not None:
                embeds = self.text_projection(pooled)
        last = normed if (layer is None or final_norm) else x
        return CLIPTextOutput(
            last_hidden_state=last,
            hidden_states=tuple(hidden_states),
            pooler_output=pooled,
            text_embeds=embeds,
        )
