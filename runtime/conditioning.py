"""Prompts -> text-encoder conditioning for the UNet, with the bundle's own tokenizers.

Prompts use the A1111 syntax (`(word:1.3)`, `[word]`, `BREAK`); prompts longer than one
77-token window are split into windows whose hidden states are concatenated, and every
prompt of a batch (negatives included) is padded to the same number of windows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from latentrt.errors import TokenizerError
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.denoiser import Conditioning
from latentrt.runtime.prompt import pad_windows, tokenize_prompt, weighted_embedding
from latentrt.runtime.tokenizer import CLIPTokenizer


class PromptEncoder:
    """Tokenizes prompts and runs the bundle's text encoder to the UNet's context."""

    def __init__(self, bundle: Bundle, components: dict[str, Callable]) -> None:
        if bundle.family.startswith("sdxl"):
            raise NotImplementedError(
                "SDXL conditioning (two encoders, pooled embeddings, time ids) is not built yet"
            )
        (spec,) = bundle.manifest["text_encoders"]
        self.spec = spec
        self.tokenizer = CLIPTokenizer.from_dir(bundle.path(spec["tokenizer"], must_exist=True))
        self.run = components[spec["component"]]

    def encode(self, prompts: list[str]) -> np.ndarray:
        """(B, 77 n, D) context for a list of prompts, n windows each."""
        for p in prompts:
            if not isinstance(p, str):
                raise TokenizerError(f"prompts must be strings, got {type(p).__name__}")
        windows = [tokenize_prompt(p, self.tokenizer) for p in prompts]
        n = max(w.num_windows for w in windows)
        windows = [pad_windows(w, n, self.tokenizer) for w in windows]
        ids = np.concatenate([w.ids for w in windows])  # (B n, 77)
        hidden = self.run(input_ids=ids)[self.spec["hidden_state"]].astype(np.float32)
        hidden = hidden.reshape(len(prompts), n, *hidden.shape[1:])
        return np.concatenate(
            [weighted_embedding(h, w) for h, w in zip(hidden, windows, strict=True)]
        ).astype(np.float32)

    def conditioning(self, prompts: list[str], negatives: list[str] | None) -> Conditioning:
        """Conditioning for the prompts and, when guidance is on, their negative prompts."""
        if negatives is None:
            return Conditioning(self.encode(prompts), None)
        uncond, cond = np.split(self.encode(list(negatives) + list(prompts)), 2)
        return Conditioning(cond, uncond)
