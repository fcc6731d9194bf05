"""A deterministic corpus of >= 2000 prompts for tokenizer parity tests and the benchmark.

Ordinary image prompts, attention syntax, unicode (accents, CJK, Cyrillic, Arabic, emoji, ...),
HTML entities, numbers, punctuation runs, odd whitespace, special-token strings and very long
prompts. `build_corpus()` always returns the same list.
"""

from __future__ import annotations

import random

SUBJECTS = [
    "a cat",
    "an old man",
    "a red fox",
    "a lighthouse",
    "a cyberpunk city",
    "two dogs",
    "a bowl of ramen",
    "a medieval knight",
    "an astronaut",
    "a steam locomotive",
    "a dragon",
    "a girl with an umbrella",
    "a wooden cabin",
    "a koi pond",
    "a robot barista",
    "the Eiffel Tower",
    "a mountain lake",
    "a vintage car",
    "a bouquet of roses",
    "a tiger",
]
SETTINGS = [
    "in the rain",
    "at sunset",
    "on the moon",
    "in a misty forest",
    "under neon lights",
    "by the sea",
    "in a snowy village",
    "inside a cathedral",
    "on a busy street",
    "in space",
    "at golden hour",
    "in a field of sunflowers",
    "underwater",
    "in the desert",
    "at night",
]
STYLES = [
    "oil painting",
    "watercolor",
    "digital art",
    "photorealistic",
    "35mm film photo",
    "studio ghibli style",
    "concept art",
    "pencil sketch",
    "isometric 3d render",
    "ukiyo-e",
    "art nouveau",
    "low poly",
    "pixel art",
    "cinematic lighting",
    "octane render",
]
MODIFIERS = [
    "highly detailed",
    "8k",
    "masterpiece",
    "best quality",
    "sharp focus",
    "bokeh",
    "volumetric light",
    "trending on artstation",
    "intricate",
    "hdr",
    "ultra-wide angle",
    "soft shadows",
    "award winning",
    "by greg rutkowski",
    "4k uhd",
    "depth of field",
]
UNICODE_WORDS = [
    "café",
    "naïve",
    "crème brûlée",
    "Ångström",
    "São Paulo",
    "Zürich",
    "façade",
    "jalapeño",
    "Tiếng Việt",
    "Đà Nẵng",
    "smørrebrød",
    "Łódź",
    "İstanbul",
    "straße",
    "ΣΟΦΙΑ",
    "ΟΔΟΣ",
    "Ελληνικά",
    "東京の夜景",
    "富士山と桜",
    "北京烤鸭",
    "猫",
    "한국어 텍스트",
    "서울의 밤",
    "Москва зимой",
    "Привет, мир",
    "ЁЛКА",
    "Українська",
    "مرحبا بالعالم",
    "القاهرة ليلاً",
    "שלום עולם",
    "नमस्ते दुनिया",
    "ภาษาไทย",
    "ქართული",
    "Հայերեն",
    "ﬁne ﬂower",
    "ǅungla",
    "e\u0301cole",
    "n\u0303",
    "\u1100\u1161",
    "Ⅻ",
    "①②③",
    "½ ¾",
    "x²",
    "ℌ𝔢𝔩𝔩𝔬",
    "𝕬𝖇𝖈",
]
EMOJI = [
    "🐱",
    "🐶",
    "🌸",
    "🔥",
    "✨",
    "🚀",
    "🌈",
    "👍🏽",
    "👩‍🚀",
    "🏳️‍🌈",
    "🇯🇵",
    "🇺🇸",
    "❤️",
    "😀😃😄",
    "🧑‍🎨",
    "👨‍👩‍👧‍👦",
    "🌊",
    "🍜",
    "🎨",
    "☕",
]
ENTITIES = ["&amp;", "&#39;", "&lt;", "&gt;", "&quot;", "&nbsp;", "&#x27;", "&copy;", "&#8212;"]
NUMBERS = [
    "1024x768",
    "3.14159",
    "1,000,000",
    "2nd",
    "21st century",
    "1990s",
    "f/1.8",
    "50mm",
    "-273.15",
    "0.5",
    "١٢٣",
    "１２３",
    "v2.1",
    "4k",
    "10:30",
    "99%",
    "#1",
    "3/4",
    "1e-5",
]
PUNCT = [
    "!!!",
    "...",
    "?!?",
    "---",
    "~~~",
    "''",
    '""',
    "(((",
    ")))",
    "[[",
    "]]",
    "::",
    ";;",
    "!?",
    "***",
    "<<>>",
    "|||",
    "___",
    "@@",
    "$$$",
    "…",
    "—",
    "«»",
    "「」",
    "、。",
    "¡¿",
]
CONTRACTIONS = [
    "don't",
    "it's",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "DON'T",
    "IT'S",
    "'s",
    "cats' toys",
    "rock 'n' roll",
    "'tis",
    "o'clock",
    "can't",
    "shouldn't've",
]
WHITESPACE = [
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u200b",
    "\u200c",
    "\u200d",
    "\ufeff",
    "\u3000",
    "\u2009",
    "\u2028",
    "\u0085",
    "\x0b",
    "\x0c",
    "  ",
    "\t\t \n",
]
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|EndOfText|>", "!", "<|", "|>"]
WEIGHTED = [
    "(masterpiece)",
    "((best quality))",
    "[blurry]",
    "(red hair:1.3)",
    "(eyes:0.8)",
    "\\(escaped\\)",
    "(unbalanced",
    "word)",
    "(word:abc)",
    "BREAK",
    "[[low quality]]",
]


def _ordinary(rng: random.Random) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(SETTINGS), rng.choice(STYLES)]
    parts += rng.sample(MODIFIERS, rng.randint(0, 5))
    return ", ".join(parts)


def _mixed(rng: random.Random, pools: list[list[str]], n: int) -> str:
    words = [rng.choice(rng.choice(pools)) for _ in range(n)]
    seps = [" ", ", ", "", " ", "-", " "]
    out = words[0]
    for w in words[1:]:
        out += rng.choice(seps) + w
    return out


def _char_soup(rng: random.Random) -> str:
    blocks = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x590, 0x6FF),
        (0x900, 0x97F),
        (0x3040, 0x30FF),
        (0x4E00, 0x4FFF),
        (0xAC00, 0xAD00),
        (0x1F300, 0x1F64F),
        (0x2000, 0x206F),
        (0xFF00, 0xFFEF),
    ]
    chars = []
    for _ in range(rng.randint(1, 40)):
        lo, hi = rng.choice(blocks)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def build_corpus(seed: int = 5) -> list[str]:
    """The prompt corpus: about 2600 prompts, fixed for a given seed."""
    rng = random.Random(seed)
    corpus: list[str] = []
    corpus += [_ordinary(rng) for _ in range(700)]
    corpus += [_ordinary(rng).upper() for _ in range(50)]
    corpus += [_ordinary(rng).title() for _ in range(50)]
    corpus += [_mixed(rng, [SUBJECTS, WEIGHTED, MODIFIERS], rng.randint(2, 10)) for _ in range(200)]
    corpus += [_mixed(rng, [UNICODE_WORDS, SUBJECTS], rng.randint(1, 8)) for _ in range(300)]
    corpus += [_mixed(rng, [EMOJI, SUBJECTS, UNICODE_WORDS], rng.randint(1, 8)) for _ in range(150)]
    corpus += [_mixed(rng, [ENTITIES, SUBJECTS], rng.randint(2, 8)) for _ in range(120)]
    corpus += [_mixed(rng, [NUMBERS, SUBJECTS], rng.randint(2, 8)) for _ in range(150)]
    corpus += [_mixed(rng, [PUNCT, CONTRACTIONS, SUBJECTS], rng.randint(2, 10)) for _ in range(200)]
    ws = []
    for _ in range(200):
        words = rng.choice(SUBJECTS).split() + rng.choice(SETTINGS).split()
        text = rng.choice(WHITESPACE)
        for w in words:
            text += w + rng.choice(WHITESPACE)
        ws.append(text)
    corpus += ws
    corpus += [_mixed(rng, [SPECIALS, SUBJECTS, PUNCT], rng.randint(1, 8)) for _ in range(80)]
    corpus += [_char_soup(rng) for _ in range(250)]
    long_pools = [SUBJECTS, SETTINGS, STYLES, MODIFIERS, UNICODE_WORDS, NUMBERS, PUNCT]
    corpus += [_mixed(rng, long_pools, rng.randint(60, 300)) for _ in range(100)]
    corpus += ["", " ", "\n", "a", "A", "!", "<|endoftext|>", "x" * 300, "ab" * 200, "🐱" * 50]
    return corpus
