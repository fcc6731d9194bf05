"""Reference-side helpers for the tokenizer tests: the oracle's vocabulary files and Unicode tables.

`write_clip_vocab_files` writes vocab.json/merges.txt from the open-clip-torch wheel's BPE file the
way the original CLIP builds its vocabulary, for transformers' CLIPTokenizer to load.

`probe_tables` builds runtime/data/clip_unicode.json by probing `tokenizers` itself:
transformers' CLIPTokenizer runs on the `tokenizers` library, whose Oniguruma regex engine and
lowercasing follow a newer Unicode version than Python's `unicodedata`. The runtime ships these
classes as data so that it matches the reference on every code point, whatever the Python version.
Run `python tests/tokenizer_reference.py` to regenerate; test_tokenizer.py checks it is current.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

TABLE_PATH = Path(__file__).resolve().parents[1] / "runtime" / "data" / "clip_unicode.json"
_SEP = "\x00"


def open_clip_bpe_path() -> Path:
    """The BPE merges file inside the installed open-clip-torch wheel (its package is not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open-clip-torch is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _byte_chars() -> list[str]:
    """GPT-2's byte -> unicode characters in CLIP's order: printable bytes first, then the rest."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def write_clip_vocab_files(out_dir: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt of the real CLIP vocabulary, built as openai/CLIP builds it."""
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def all_code_points() -> list[int]:
    """Every Unicode scalar value (code points minus surrogates)."""
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def _to_ranges(code_points: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for c in sorted(code_points):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ranges


def _onig_members(pattern: str, code_points: list[int]) -> list[int]:
    """Code points the Oniguruma class `pattern` matches, using Split(removed) to find the rest."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=False)
    kept: set[int] = set()
    step = 8192
    for start in range(0, len(code_points), step):
        text = "".join(chr(c) for c in code_points[start : start + step])
        for piece, _ in split.pre_tokenize_str(text):
            kept.update(ord(ch) for ch in piece)
    return [c for c in code_points if c not in kept]


def _lowercase_map(code_points: list[int]) -> dict[str, str]:
    from tokenizers import normalizers

    probed = [c for c in code_points if chr(c) != _SEP]
    lowered = normalizers.Lowercase().normalize_str(_SEP.join(chr(c) for c in probed))
    out = {}
    for c, low in zip(probed, lowered.split(_SEP), strict=True):
        if low != chr(c):
            out[f"{c:X}"] = " ".join(f"{ord(ch):X}" for ch in low)
    return out


def probe_tables() -> dict:
    """Letter/number/whitespace classes and lowercase mapping as the reference engine has them."""
    import tokenizers

    cps = all_code_points()
    return {
        "source": f"probed from tokenizers {tokenizers.__version__} (Oniguruma \\p{{L}}, \\p{{N}}, "
        "\\s; Lowercase normalizer) over all Unicode scalar values",
        "letter_ranges": _to_ranges(_onig_members(r"\p{L}", cps)),
        "number_ranges": _to_ranges(_onig_members(r"\p{N}", cps)),
        "whitespace_ranges": _to_ranges(_onig_members(r"\s", cps)),
        "lowercase": _lowercase_map(cps),
    }


def comparable(table: dict) -> dict:
    """The table without its provenance line, for comparison."""
    return {k: v for k, v in table.items() if k != "source"}


if __name__ == "__main__":
    TABLE_PATH.write_text(json.dumps(probe_tables(), separators=(",", ":")) + "\n")
    print(f"wrote {TABLE_PATH} ({TABLE_PATH.stat().st_size} bytes)")
