"""Prompts -> text-encoder conditioning for the UNet, with the bundle's own tokenizers.

Prompts use the A1111 syntax (`(word:1.3)`, `[word]`, `BREAK`); prompts longer than one
77-token window are split into windows whose hidden states are concatenated, and every
prompt of a batch (negatives included) is padded to the same number of windows.

SDXL runs two encoders (CLIP ViT-L and OpenCLIP bigG; the refiner only bigG) on windows aligned
token for token, weights each encoder's penultimate hidden state, concatenates them along the
channels, and takes bigG's projected pooled output of the first window (as A1111 and ComfyUI do)
for the UNet's added conditioning, next to the time ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from latentrt.errors import BundleError, InputError, TokenizerError
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.denoiser import Conditioning
from latentrt.runtime.prompt import pad_windows, tokenize_prompts, weighted_embedding
from latentrt.runtime.tokenizer import CLIPTokenizer


class PromptEncoder:
    """Tokenizes prompts and runs the bundle's text encoders to the UNet's conditioning."""

    def __init__(self, bundle: Bundle, components: dict[str, Callable]) -> None:
        self.specs = list(bundle.manifest["text_encoders"])
        self.sdxl = bundle.manifest.get("sdxl")
        if bundle.family.startswith("sdxl") and self.sdxl is None:
            raise BundleError(
                f"{bundle.root}: an {bundle.family} bundle without its sdxl manifest section; "
                "re-export it"
            )
        if self.sdxl is None and len(self.specs) != 1:
            raise NotImplementedError(
                f"{len(self.specs)} text encoders outside SDXL: no conditioning rule for that"
            )
        self.tokenizers = [
            CLIPTokenizer.from_dir(bundle.path(s["tokenizer"], must_exist=True)) for s in self.specs
        ]
        self.runs = [components[s["component"]] for s in self.specs]
        pooled = [i for i, s in enumerate(self.specs) if s.get("pooled")]
        if self.sdxl is not None and len(pooled) != 1:
            raise BundleError(f"{bundle.root}: SDXL needs exactly one text encoder with pooled")
        self.pooled_index = pooled[0] if pooled else None
        self.force_zeros = bool(self.sdxl and self.sdxl.get("force_zeros_for_empty_prompt"))

    @property
    def tokenizer(self) -> CLIPTokenizer:
        """The first encoder's tokenizer (the one prompt-length counters use)."""
        return self.tokenizers[0]

    def encode_pooled(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, 77 n, D) context and, for SDXL, (B, P) pooled embeddings for a list of prompts."""
        for p in prompts:
            if not isinstance(p, str):
                raise TokenizerError(f"prompts must be strings, got {type(p).__name__}")
        per_prompt = [tokenize_prompts(p, self.tokenizers) for p in prompts]
        n = max(w[0].num_windows for w in per_prompt)
        contexts = []
        pooled = None
        for j, (spec, tok, run) in enumerate(
            zip(self.specs, self.tokenizers, self.runs, strict=True)
        ):
            windows = [pad_windows(w[j], n, tok) for w in per_prompt]
            ids = np.concatenate([w.ids for w in windows])  # (B n, 77)
            out = run(input_ids=ids)
            hidden = out[spec["hidden_state"]].astype(np.float32)
            hidden = hidden.reshape(len(prompts), n, *hidden.shape[1:])
            contexts.append(
                np.concatenate(
                    [weighted_embedding(h, w) for h, w in zip(hidden, windows, strict=True)]
                )
            )
            if j == self.pooled_index:
                p = out[spec["pooled"]].astype(np.float32)
                pooled = p.reshape(len(prompts), n, p.shape[-1])[:, 0]
        context = np.concatenate(contexts, axis=-1).astype(np.float32)
        return context, pooled

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """(B, 77 n, D) context for a list of prompts, n windows each."""
        return self.encode_pooled(prompts)[0]

    def conditioning(
        self,
        prompts: Sequence[str],
        negatives: Sequence[str] | None,
        time_ids: np.ndarray | None = None,
        negative_time_ids: np.ndarray | None = None,
    ) -> Conditioning:
        """Conditioning for the prompts and, when guidance is on, their negative prompts.

        SDXL needs `time_ids` (K,) (and `negative_time_ids` with guidance). With the bundle's
        `force_zeros_for_empty_prompt`, an empty negative prompt is all-zero context and pooled
        embedding instead of the encoding of "" (diffusers' SDXL rule).
        """
        b = len(prompts)
        texts = list(prompts) if negatives is None else [*negatives, *prompts]
        context, pooled = self.encode_pooled(texts)
        if negatives is not None and self.force_zeros:
            empty = np.array([neg == "" for neg in negatives] + [False] * b)
            context[empty] = 0.0
            if pooled is not None:
                pooled[empty] = 0.0
        added = added_uncond = None
        if self.sdxl is not None:
            if time_ids is None or (negatives is not None and negative_time_ids is None):
                raise InputError(
                    "SDXL conditioning needs time ids (and negative ones with guidance)"
                )
            pos = np.broadcast_to(np.asarray(time_ids, np.float32), (b, len(time_ids)))
            added = {"text_embeds": pooled[-b:], "time_ids": np.ascontiguousarray(pos)}
            if negatives is not None:
                neg = np.asarray(negative_time_ids, np.float32)
                neg = np.ascontiguousarray(np.broadcast_to(neg, (b, len(neg))))
                added_uncond = {"text_embeds": pooled[:b], "time_ids": neg}
        if negatives is None:
            return Conditioning(context, None, added, None)
        return Conditioning(context[b:], context[:b], added, added_uncond)
