"""CLIP byte-level BPE tokenizer in plain Python + numpy, id-for-id equal to transformers'.

The reference is transformers' `CLIPTokenizer` (5.x), which is built on the `tokenizers` library;
transformers 5 has no pure-Python CLIP tokenizer any more, so there is no ftfy or BasicTokenizer
path to follow. What the reference does, and what this module reproduces:

1. special tokens (BOS, EOS and the pad token, e.g. `!` for OpenCLIP models) are cut out of the raw
   text first, case-sensitively, and map straight to their ids;
2. each remaining piece is normalized: Unicode NFC, every run of whitespace to one space,
   lower-casing code point by code point (no final-sigma rule). There is no ftfy fix-up, no HTML
   unescaping (`&amp;` stays three tokens) and no stripping;
3. the CLIP pattern splits it into words (`'s|'t|'re|'ve|'m|'ll|'d|letters+|one digit|other+`);
   a literal `<|endoftext|>` made by lower-casing becomes the words `<|`, `endoftext`, `|>`;
4. each word's UTF-8 bytes are mapped to printable characters, `</w>` is attached to the last one,
   and merges are applied lowest rank first.

Letter, number and whitespace classes and the lower-case mapping come from
`data/clip_unicode.json` (the Unicode tables of the reference's regex engine), so the result does not
depend on the Python version's `unicodedata`; NFC does come from `unicodedata`.
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from latentrt.errors import TokenizerError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_BPE_PATH = DATA_DIR / "bpe_simple_vocab_16e6.txt.gz"
UNICODE_TABLE_PATH = DATA_DIR / "clip_unicode.json"
# The original CLIP vocabulary: 256 bytes, 256 bytes + </w>, 48894 merges, BOS, EOS = 49408.
CLIP_NUM_MERGES = 49152 - 256 - 2
_CACHE_LIMIT = 1 << 16


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2/CLIP byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items(), key=lambda kv: (kv[0] not in printable, kv[0])))


def clip_vocab_from_merges(merges: Sequence[tuple[str, str]]) -> list[str]:
    """Vocabulary in id order, built the way the original CLIP builds it from its merges."""
    chars = list(bytes_to_unicode().values())
    return [
        *chars,
        *(c + END_OF_WORD for c in chars),
        *(a + b for a, b in merges),
        BOS_TOKEN,
        EOS_TOKEN,
    ]


def read_bpe_gz(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The merges of an original CLIP `bpe_simple_vocab_16e6.txt.gz` (header line skipped)."""
    path = Path(path) if path is not None else DEFAULT_BPE_PATH
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read CLIP BPE file {path}: {exc}") from exc
    body = lines[1 : CLIP_NUM_MERGES + 1]
    if len(body) != CLIP_NUM_MERGES:
        raise TokenizerError(
            f"{path} has {len(body)} merges after its header; a CLIP BPE file has {CLIP_NUM_MERGES}"
        )
    return _parse_merge_lines(body, path)


def _parse_merge_lines(lines: Iterable[str], origin: object) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerError(f"{origin}: merge line {n} is not two symbols: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _char_class(ranges: Iterable[Sequence[int]]) -> str:
    parts = []
    for lo, hi in ranges:
        parts.append(
            re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        )
    return "".join(parts)


@lru_cache(maxsize=1)
def _text_rules() -> tuple[re.Pattern[str], re.Pattern[str], dict[int, str]]:
    """(whitespace-run pattern, CLIP word pattern, lower-case table) from the shipped Unicode data."""
    try:
        table = json.loads(UNICODE_TABLE_PATH.read_text())
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot read {UNICODE_TABLE_PATH}: {exc}") from exc
    letters = _char_class(table["letter_ranges"])
    numbers = _char_class(table["number_ranges"])
    spaces = _char_class(table["whitespace_ranges"])
    whitespace = re.compile(f"[{spaces}]+")
    words = re.compile(
        rf"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
        rf"|[{letters}]+|[{numbers}]|[^{spaces}{letters}{numbers}]+"
    )
    lower = {
        int(src, 16): "".join(chr(int(c, 16)) for c in dst.split())
        for src, dst in table["lowercase"].items()
    }
    return whitespace, words, lower


def _special_word_split(word: str) -> tuple[str, ...]:
    # The reference's byte-level stage re-splits a special-token string made by lower-casing.
    return ("<|", word[2:-2], "|>")


class CLIPTokenizer:
    """CLIP tokenizer: `encode` gives content ids, calling it gives padded (batch, max_length) ids."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        pad_token: str = EOS_TOKEN,
        bos_token: str = BOS_TOKEN,
        eos_token: str = EOS_TOKEN,
        unk_token: str = EOS_TOKEN,
        model_max_length: int = 77,
    ) -> None:
        """Build from a token -> id vocabulary and merges in rank order; checks they fit together."""
        for role, token in (("bos", bos_token), ("eos", eos_token), ("unk", unk_token)):
            if token not in vocab:
                raise TokenizerError(f"{role} token {token!r} is not in the vocabulary")
        if pad_token not in vocab:
            raise TokenizerError(f"pad token {pad_token!r} is not in the vocabulary")
        for a, b in merges:
            if a not in vocab or b not in vocab or a + b not in vocab:
                raise TokenizerError(
                    f"merge {a!r} {b!r} uses or makes a token not in the vocabulary"
                )
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.pad_token = pad_token
        self.bos_id, self.eos_id = vocab[bos_token], vocab[eos_token]
        self.unk_id, self.pad_id = vocab[unk_token], vocab[pad_token]
        self.model_max_length = model_max_length
        self.vocab_size = max(vocab.values()) + 1
        self._byte_table = str.maketrans({chr(b): c for b, c in bytes_to_unicode().items()})
        specials = sorted({bos_token, eos_token, unk_token, pad_token}, key=len, reverse=True)
        self._special_ids = {t: vocab[t] for t in specials}
        self._pad_is_text_only = pad_token not in (bos_token, eos_token, unk_token)
        self._special_re = re.compile("|".join(re.escape(t) for t in specials))
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_files(
        cls, vocab_json: str | Path, merges_txt: str | Path, pad_token: str = EOS_TOKEN, **kwargs
    ) -> CLIPTokenizer:
        """From a Hugging Face `vocab.json` and `merges.txt` (a `#version` header line is skipped)."""
        try:
            vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
            lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"cannot read tokenizer files: {exc}") from exc
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_json} is not a JSON object of token -> id")
        lines = [ln for ln in lines if ln.strip() and not ln.startswith("#version")]
        return cls(vocab, _parse_merge_lines(lines, merges_txt), pad_token=pad_token, **kwargs)

    @classmethod
    def from_bpe_gz(
        cls, path: str | Path | None = None, pad_token: str = EOS_TOKEN, **kwargs
    ) -> CLIPTokenizer:
        """From the original CLIP `bpe_simple_vocab_16e6.txt.gz`; None = the copy shipped here."""
        merges = read_bpe_gz(path)
        vocab = {tok: i for i, tok in enumerate(clip_vocab_from_merges(merges))}
        return cls(vocab, merges, pad_token=pad_token, **kwargs)

    @classmethod
    def from_dir(cls, path: str | Path) -> CLIPTokenizer:
        """From a diffusers/transformers `tokenizer/` folder; its JSON configs decide special tokens."""
        path = Path(path)
        config: dict = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (path / name).is_file():
                try:
                    loaded = json.loads((path / name).read_text(encoding="utf-8"))
                except ValueError as exc:
                    raise TokenizerError(f"{path / name} is not valid JSON: {exc}") from exc
                if not isinstance(loaded, dict):
                    raise TokenizerError(f"{path / name} is not a JSON object")
                config.update(loaded)
        kwargs: dict = {}
        for role in ("bos", "eos", "unk", "pad"):
            value = config.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None:
                kwargs[f"{role}_token"] = str(value)
        max_len = config.get("model_max_length")
        if isinstance(max_len, int) and 0 < max_len <= _MAX_SANE_LENGTH:
            kwargs["model_max_length"] = max_len
        specials = {kwargs.get(k, d) for k, d in _SPECIAL_DEFAULTS.items()}
        decoder = config.get("added_tokens_decoder") or {}
        added = [e.get("content") if isinstance(e, dict) else e for e in decoder.values()]
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            _check_added_tokens(added, specials, path)
            return cls.from_files(path / "vocab.json", path / "merges.txt", **kwargs)
        if (path / "tokenizer.json").is_file():
            vocab, merges, more_added = _read_tokenizer_json(path / "tokenizer.json")
            _check_added_tokens(added + more_added, specials, path)
            return cls(vocab, merges, **kwargs)
        raise TokenizerError(f"{path} has neither vocab.json + merges.txt nor tokenizer.json")

    def save(self, dirpath: str | Path) -> Path:
        """Write vocab.json, merges.txt and the two JSON configs transformers' from_pretrained reads."""
        out = Path(dirpath)
        out.mkdir(parents=True, exist_ok=True)
        ordered = dict(sorted(self.vocab.items(), key=lambda kv: kv[1]))
        (out / "vocab.json").write_text(json.dumps(ordered, ensure_ascii=False), encoding="utf-8")
        merges = "".join(f"{a} {b}\n" for a, b in self.merges)
        (out / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
        specials = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
        config = {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": self.model_max_length,
            "do_lower_case": True,
            **specials,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        return out

    def _normalize(self, text: str) -> str:
        whitespace, _, lower = _text_rules()
        if text.isascii():
            return whitespace.sub(" ", text).lower()
        text = whitespace.sub(" ", unicodedata.normalize("NFC", text))
        return text.translate(lower)

    def _bpe(self, word: str) -> tuple[int, ...]:
        symbols = list(word.encode("utf-8").decode("latin-1").translate(self._byte_table))
        symbols[-1] += END_OF_WORD
        ranks = self.ranks
        while len(symbols) > 1:
            best_rank, best = None, None
            for pair in zip(symbols, symbols[1:], strict=False):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged, i, n = [], 0, len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        get, unk = self.vocab.get, self.unk_id
        return tuple(get(s, unk) for s in symbols)

    def _encode_plain(self, text: str, out: list[int]) -> None:
        _, words, _ = _text_rules()
        cache = self._cache
        for word in words.findall(self._normalize(text)):
            ids = cache.get(word)
            if ids is None:
                if word in (BOS_TOKEN, EOS_TOKEN):
                    ids = tuple(i for w in _special_word_split(word) for i in self._bpe(w))
                else:
                    ids = self._bpe(word)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def encode(self, text: str, *, pad_is_special: bool = True) -> list[int]:
        """Token ids of `text` without BOS/EOS added, exactly as transformers' `encode` gives them.

        With pad_is_special=False a pad token such as `!` in the text is tokenized as plain text
        (as the original CLIP/OpenCLIP tokenizer does) instead of becoming the pad id.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"prompt must be str, got {type(text).__name__}")
        out: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            if m.group(0) == self.pad_token and not pad_is_special and self._pad_is_text_only:
                continue
            if m.start() > start:
                self._encode_plain(text[start : m.start()], out)
            out.append(self._special_ids[m.group(0)])
            start = m.end()
        if start < len(text):
            self._encode_plain(text[start:], out)
        return out

    def pad_ids(self, content: Sequence[int], max_length: int = 77) -> np.ndarray:
        """[BOS] content[: max_length - 2] [EOS] then pad ids, as one int64 row of max_length."""
        if max_length < 2:
            raise TokenizerError(f"max_length must be at least 2 (BOS and EOS), got {max_length}")
        row = np.full(max_length, self.pad_id, dtype=np.int64)
        body = list(content[: max_length - 2])
        row[0] = self.bos_id
        row[1 : len(body) + 1] = body
        row[len(body) + 1] = self.eos_id
        return row

    def __call__(self, texts: str | Sequence[str], max_length: int = 77) -> np.ndarray:
        """(batch, max_length) int64 ids: BOS, content truncated to keep EOS, EOS, pad."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence):
            raise TokenizerError(
                f"texts must be str or a sequence of str, got {type(texts).__name__}"
            )
        rows = [self.pad_ids(self.encode(t), max_length) for t in texts]
        if not rows:
            return np.zeros((0, max_length), dtype=np.int64)
        return np.stack(rows)

    def clear_cache(self) -> None:
        """Drop the word -> ids cache (benchmarks use this for cold-cache figures)."""
        self._cache.clear()


def _check_added_tokens(added: Iterable[object], specials: set[str], path: Path) -> None:
    for content in added:
        if content not in specials:
            raise NotImplementedError(
                f"{path}: added token {content!r} beyond BOS/EOS/UNK/PAD is not supported"
            )


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], list[object]]:
    """Vocabulary, merges and added-token strings of a `tokenizers` file holding a CLIP BPE model."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab, raw_merges = model["vocab"], model["merges"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenizerError(f"{path} is not a readable tokenizers file: {exc}") from exc
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != END_OF_WORD:
        raise TokenizerError(f"{path} does not hold a CLIP BPE model (BPE with '</w>' suffix)")
    lines = [m if isinstance(m, str) else " ".join(m) for m in raw_merges]
    added = [t.get("content") for t in data.get("added_tokens") or [] if isinstance(t, dict)]
    return vocab, _parse_merge_lines(lines, path), added


_MAX_SANE_LENGTH = 1 << 16
_SPECIAL_DEFAULTS = {
    "bos_token": BOS_TOKEN,
    "eos_token": EOS_TOKEN,
    "unk_token": EOS_TOKEN,
    "pad_token": EOS_TOKEN,
}
