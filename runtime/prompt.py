"""Prompt conventions of A1111/ComfyUI users: attention weights, BREAK, 75-token windows.

`parse_prompt` reads `(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.3)`, escapes `\\(`
`\\)` `\\[` `\\]` `\\\\` and `BREAK`, as A1111's parser does; malformed syntax degrades to literal
text (unclosed brackets still weight the rest of the prompt, as in A1111), never an exception.
`tokenize_prompt` turns a prompt into (n, 77) windows of ids and weights, `match_windows` pads
positive and negative to one window count, and `weighted_embedding` applies A1111's mean-preserving
weighting to the text encoder output and concatenates the windows to (1, 77 n, C).

Two deliberate differences from A1111, both where A1111 misbehaves: a weight that is not a number
(`(a:1.2.3)`) reads as literal text instead of raising, and `BREAK` inside brackets still starts a
window instead of being tokenized as the word "BREAK" with a negative weight.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from latentrt.errors import InputError, TokenizerError

from .tokenizer import CLIPTokenizer

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
WINDOW_CONTENT = 75
WINDOW_LENGTH = WINDOW_CONTENT + 2
COMMA_TOKEN = ",</w>"

_ATTENTION_RE = re.compile(
    r"""
    \\[()\[\]\\]                                   # escaped bracket or backslash
    | \\                                           # a lone backslash (dropped, as in A1111)
    | \( | \[                                      # openers
    | :\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)      # ':1.3)' closes a round bracket with a weight
    | \) | \]                                      # closers
    | [^\\()\[\]:]+                                # plain text
    | :                                            # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)


class Fragment(NamedTuple):
    """A run of prompt text with one attention weight, or a window break (is_break=True)."""

    text: str
    weight: float
    is_break: bool = False


def parse_prompt(prompt: str) -> list[Fragment]:
    """Split a prompt into weighted text runs and BREAKs, merging neighbours of equal weight."""
    if not isinstance(prompt, str):
        raise TokenizerError(f"prompt must be str, got {type(prompt).__name__}")
    texts: list[str | None] = []  # None marks a BREAK
    weights: list[float] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for i in range(start, len(weights)):
            weights[i] *= factor

    for m in _ATTENTION_RE.finditer(prompt):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            texts.append(token[1:])
            weights.append(1.0)
        elif token == "(":
            round_open.append(len(texts))
        elif token == "[":
            square_open.append(len(texts))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for k, part in enumerate(_BREAK_RE.split(token)):
                if k:
                    texts.append(None)
                    weights.append(1.0)
                texts.append(part)
                weights.append(1.0)
    for start in round_open:
        scale(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, SQUARE_MULTIPLIER)

    out: list[Fragment] = []
    for text, weight in zip(texts, weights, strict=True):
        if text is None:
            out.append(Fragment("BREAK", 1.0, True))
        elif out and not out[-1].is_break and out[-1].weight == weight:
            out[-1] = Fragment(out[-1].text + text, weight)
        else:
            out.append(Fragment(text, weight))
    return out or [Fragment("", 1.0)]


@dataclass(frozen=True)
class PromptWindows:
    """A prompt as n windows of 77 ids (BOS, up to 75 content tokens, EOS, pad) and their weights."""

    ids: np.ndarray  # (n, 77) int64
    weights: np.ndarray  # (n, 77) float32; 1.0 on BOS, EOS and padding
    token_count: int  # content tokens, as A1111 counts them (full windows count 75)

    @property
    def num_windows(self) -> int:
        """Number of 77-token windows."""
        return int(self.ids.shape[0])


def _layout_windows(
    items: Sequence[int | None], commas: Sequence[bool], comma_backtrack: int
) -> tuple[list[list[int]], int]:
    """Windows as lists of indices into the flat token stream; None in `items` is a BREAK."""
    windows: list[list[int]] = []
    current: list[int] = []
    last_comma = -1
    count = 0

    def close(is_last: bool = False) -> None:
        nonlocal current, last_comma, count
        count += len(current) if is_last else WINDOW_CONTENT
        windows.append(current)
        current = []
        last_comma = -1

    for item in items:
        if item is None:
            close()
            continue
        if commas[item]:
            last_comma = len(current)
        elif (
            comma_backtrack
            and len(current) == WINDOW_CONTENT
            and last_comma != -1
            and len(current) - last_comma <= comma_backtrack
        ):
            moved = current[last_comma + 1 :]
            current = current[: last_comma + 1]
            close()
            current = moved
        if len(current) == WINDOW_CONTENT:
            close()
        current.append(item)
    if current or not windows:
        close(is_last=True)
    return windows, count


def tokenize_prompts(
    prompt: str,
    tokenizers: Sequence[CLIPTokenizer],
    *,
    comma_backtrack: int = 0,
    pad_is_special: bool = False,
) -> list[PromptWindows]:
    """One parse of `prompt`, windowed identically for every tokenizer (SDXL's CLIP-L and bigG).

    Windows hold 75 content tokens; BREAK closes a window early. comma_backtrack > 0 moves up to
    that many tokens after the last comma of a full window into the next one (A1111's option). With
    pad_is_special=False a `!` pad token in the text is ordinary text, as for the OpenCLIP tokenizer
    the models were trained with, so all tokenizers of one vocabulary give the same content ids.
    """
    if not tokenizers:
        raise InputError("tokenize_prompts needs at least one tokenizer")
    fragments = parse_prompt(prompt)
    per_tok_ids: list[list[int]] = [[] for _ in tokenizers]
    weights: list[float] = []
    items: list[int | None] = []
    for frag in fragments:
        if frag.is_break:
            items.append(None)
            continue
        encoded = [t.encode(frag.text, pad_is_special=pad_is_special) for t in tokenizers]
        if any(len(e) != len(encoded[0]) for e in encoded):
            raise TokenizerError(
                f"tokenizers disagree on the number of tokens in {frag.text!r}; "
                "their windows cannot be aligned"
            )
        start = len(weights)
        for acc, e in zip(per_tok_ids, encoded, strict=True):
            acc.extend(e)
        weights.extend([frag.weight] * len(encoded[0]))
        items.extend(range(start, len(weights)))

    comma = tokenizers[0].vocab.get(COMMA_TOKEN)
    commas = [i == comma for i in per_tok_ids[0]]
    layout, count = _layout_windows(items, commas, comma_backtrack)

    flat_w = np.asarray(weights, dtype=np.float32)
    n = len(layout)
    lengths = np.array([len(w) for w in layout], dtype=np.int64)
    index = np.concatenate([np.asarray(w, dtype=np.int64) for w in layout])
    rows = np.repeat(np.arange(n), lengths)
    cols = 1 + (np.arange(index.size) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    win_w = np.ones((n, WINDOW_LENGTH), dtype=np.float32)
    win_w[rows, cols] = flat_w[index]
    out = []
    for tok, flat in zip(tokenizers, per_tok_ids, strict=True):
        ids = np.full((n, WINDOW_LENGTH), tok.pad_id, dtype=np.int64)
        ids[:, 0] = tok.bos_id
        ids[rows, cols] = np.asarray(flat, dtype=np.int64)[index]
        ids[np.arange(n), lengths + 1] = tok.eos_id
        out.append(PromptWindows(ids, win_w.copy(), count))
    return out


def tokenize_prompt(
    prompt: str,
    tokenizer: CLIPTokenizer,
    *,
    comma_backtrack: int = 0,
    pad_is_special: bool = False,
) -> PromptWindows:
    """A prompt as (n, 77) id and weight windows for one tokenizer; see `tokenize_prompts`."""
    return tokenize_prompts(
        prompt, [tokenizer], comma_backtrack=comma_backtrack, pad_is_special=pad_is_special
    )[0]


def pad_windows(
    windows: PromptWindows, num_windows: int, tokenizer: CLIPTokenizer
) -> PromptWindows:
    """Append empty-prompt windows (BOS, EOS, pad; weight 1) up to num_windows."""
    extra = num_windows - windows.num_windows
    if extra < 0:
        raise InputError(f"cannot pad {windows.num_windows} windows down to {num_windows}")
    if extra == 0:
        return windows
    empty = tokenizer.pad_ids([], WINDOW_LENGTH)
    ids = np.concatenate([windows.ids, np.tile(empty, (extra, 1))])
    weights = np.concatenate([windows.weights, np.ones((extra, WINDOW_LENGTH), np.float32)])
    return PromptWindows(ids, weights, windows.token_count)


def match_windows(
    positive: PromptWindows, negative: PromptWindows, tokenizer: CLIPTokenizer
) -> tuple[PromptWindows, PromptWindows]:
    """Pad the shorter of positive/negative with empty windows so both have the same count."""
    n = max(positive.num_windows, negative.num_windows)
    return pad_windows(positive, n, tokenizer), pad_windows(negative, n, tokenizer)


def apply_weights(hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A1111's rule per window: scale each token's embedding by its weight, then rescale the window
    so its mean over (77, C) equals the unweighted mean. hidden (n, 77, C), weights (n, 77)."""
    hidden = np.asarray(hidden)
    weights = np.asarray(weights)
    if hidden.ndim != 3 or weights.shape != hidden.shape[:2]:
        raise InputError(
            f"hidden must be (n, tokens, C) and weights (n, tokens); got {hidden.shape}, "
            f"{weights.shape}"
        )
    if (weights == 1.0).all():  # the rule is the identity then (the factor is exactly 1)
        return hidden
    h = hidden.astype(np.float64)
    original = h.mean(axis=(1, 2), keepdims=True)
    scaled = h * weights.astype(np.float64)[:, :, None]
    new = scaled.mean(axis=(1, 2), keepdims=True)
    # A window whose weighted mean is exactly 0 cannot be rescaled; it is left as weighted.
    factor = np.divide(original, new, out=np.ones_like(new), where=new != 0)
    return (scaled * factor).astype(hidden.dtype)


def concat_windows(hidden: np.ndarray) -> np.ndarray:
    """(n, 77, C) window embeddings -> (1, 77 n, C), windows in order."""
    hidden = np.asarray(hidden)
    return hidden.reshape(1, hidden.shape[0] * hidden.shape[1], hidden.shape[2])


def weighted_embedding(hidden: np.ndarray, windows: PromptWindows) -> np.ndarray:
    """Text-encoder hidden states of `windows.ids` -> weighted, concatenated (1, 77 n, C)."""
    return concat_windows(apply_weights(hidden, windows.weights))


def prompt_token_count(prompt: str, tokenizer: CLIPTokenizer) -> int:
    """Content tokens in `prompt` as A1111 counts them (for a UI's token counter)."""
    return tokenize_prompt(prompt, tokenizer).token_count


__all__ = [
    "Fragment",
    "PromptWindows",
    "apply_weights",
    "concat_windows",
    "match_windows",
    "pad_windows",
    "parse_prompt",
    "prompt_token_count",
    "tokenize_prompt",
    "tokenize_prompts",
    "weighted_embedding",
]
