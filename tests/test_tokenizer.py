"""latentrt's CLIPTokenizer against transformers' CLIPTokenizer on the real CLIP vocabulary.

The oracle is transformers' CLIPTokenizer (5.x: the `tokenizers`-backed one; ftfy is not involved)
loaded from vocab.json/merges.txt that tokenizer_reference.py builds from open-clip-torch's BPE
file the way openai/CLIP does, independently of runtime/tokenizer.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import CLIPTokenizer as HFCLIPTokenizer

from latentrt.errors import TokenizerError
from latentrt.runtime.tokenizer import DEFAULT_BPE_PATH, UNICODE_TABLE_PATH, CLIPTokenizer
from tests import tokenizer_reference
from tests.prompt_corpus import build_corpus

EOS = "<|endoftext|>"


@pytest.fixture(scope="session")
def vocab_files(tmp_path_factory):
    return tokenizer_reference.write_clip_vocab_files(tmp_path_factory.mktemp("clip_vocab"))


@pytest.fixture(scope="session")
def hf_eos(vocab_files):
    return HFCLIPTokenizer(*map(str, vocab_files))


@pytest.fixture(scope="session")
def hf_bang(vocab_files):
    return HFCLIPTokenizer(*map(str, vocab_files), pad_token="!")


@pytest.fixture(scope="session")
def tok_eos():
    return CLIPTokenizer.from_bpe_gz()


@pytest.fixture(scope="session")
def tok_bang(vocab_files):
    return CLIPTokenizer.from_files(*vocab_files, pad_token="!")


@pytest.fixture(scope="session")
def corpus():
    return build_corpus()


def test_shipped_bpe_file_is_open_clips():
    assert DEFAULT_BPE_PATH.read_bytes() == tokenizer_reference.open_clip_bpe_path().read_bytes()


def test_vocabulary_and_special_ids(tok_eos, tok_bang, hf_eos, hf_bang):
    assert tok_eos.vocab == hf_eos.get_vocab() == tok_bang.vocab
    assert tok_eos.vocab_size == len(hf_eos) == 49408
    assert (tok_eos.bos_id, tok_eos.eos_id) == (hf_eos.bos_token_id, hf_eos.eos_token_id)
    assert tok_eos.pad_id == hf_eos.pad_token_id == 49407
    assert tok_bang.pad_id == hf_bang.pad_token_id == 0


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 2000
    joined = "".join(corpus)
    for probe in ["é", "猫", "Ж", "م", "🐱", "&amp;", "&#39;", "\t", "\n", "\u00a0", "\u200b"]:
        assert probe in joined
    assert max(len(p.split()) for p in corpus) > 200


def test_encode_matches_transformers_on_corpus(tok_eos, tok_bang, hf_eos, hf_bang, corpus):
    ref_eos = hf_eos(corpus, add_special_tokens=False)["input_ids"]
    ref_bang = hf_bang(corpus, add_special_tokens=False)["input_ids"]
    bad = [p for p, r in zip(corpus, ref_eos, strict=True) if tok_eos.encode(p) != r]
    assert not bad, f"{len(bad)} prompts differ, e.g. {bad[:3]!r}"
    bad = [p for p, r in zip(corpus, ref_bang, strict=True) if tok_bang.encode(p) != r]
    assert not bad, f"{len(bad)} prompts differ with pad '!', e.g. {bad[:3]!r}"
    # the corpus exercises the quirk that a '!' pad token is cut out of the text as a special token
    assert any(a != b for a, b in zip(ref_eos, ref_bang, strict=True))


@pytest.mark.parametrize("pad", ["eos", "bang"])
@pytest.mark.parametrize("max_length", [77, 16])
def test_padded_batch_matches_transformers(pad, max_length, request, corpus):
    tok = request.getfixturevalue(f"tok_{pad}")
    hf = request.getfixturevalue(f"hf_{pad}")
    ref = hf(corpus, padding="max_length", truncation=True, max_length=max_length)["input_ids"]
    got = tok(corpus, max_length=max_length)
    assert got.dtype == np.int64 and got.shape == (len(corpus), max_length)
    np.testing.assert_array_equal(got, np.asarray(ref, dtype=np.int64))
    long_rows = got[[len(hf.encode(p, add_special_tokens=False)) > max_length - 2 for p in corpus]]
    assert len(long_rows) > 10 and (long_rows[:, -1] == tok.eos_id).all()


def test_every_code_point_in_context(tok_eos, hf_eos):
    """Each BMP code point, and each astral one where the Unicode tables differ from Python's."""
    import unicodedata

    astral = [
        c
        for c in range(0x10000, 0x110000)
        if unicodedata.category(chr(c)) == "Cn" or chr(c).lower() != chr(c)
    ]
    rng = np.random.default_rng(0)
    astral = sorted(rng.choice(astral, size=20000, replace=False).tolist())
    cps = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF] + astral
    texts = [
        " ".join(f"a{chr(c)}b Q{chr(c)}, {chr(c)}{chr(c)}" for c in cps[i : i + 64])
        for i in range(0, len(cps), 64)
    ]
    ref = hf_eos(texts, add_special_tokens=False)["input_ids"]
    bad = [t for t, r in zip(texts, ref, strict=True) if tok_eos.encode(t) != r]
    assert not bad, f"{len(bad)} blocks of code points differ, e.g. {bad[0]!r}"


def test_shipped_unicode_table_is_current():
    shipped = json.loads(UNICODE_TABLE_PATH.read_text())
    assert tokenizer_reference.comparable(shipped) == tokenizer_reference.comparable(
        tokenizer_reference.probe_tables()
    )


def test_from_files_equals_from_bpe_gz(vocab_files, tok_eos):
    tok = CLIPTokenizer.from_files(*vocab_files)
    assert tok.vocab == tok_eos.vocab and tok.merges == tok_eos.merges
    assert tok.pad_id == tok_eos.pad_id


@pytest.mark.parametrize("pad", ["eos", "bang"])
def test_save_is_read_by_transformers_and_from_dir(pad, request, tmp_path, corpus):
    tok = request.getfixturevalue(f"tok_{pad}")
    tok.save(tmp_path / "tokenizer")
    hf = HFCLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    back = CLIPTokenizer.from_dir(tmp_path / "tokenizer")
    assert hf.pad_token_id == tok.pad_id == back.pad_id
    assert hf.model_max_length == 77
    sample = corpus[::7]
    ref = hf(sample, padding="max_length", truncation=True, max_length=77)["input_ids"]
    np.testing.assert_array_equal(tok(sample), np.asarray(ref))
    np.testing.assert_array_equal(back(sample), np.asarray(ref))


def test_from_dir_reads_a_transformers_saved_folder(hf_bang, tmp_path, corpus):
    hf_bang.save_pretrained(str(tmp_path / "tok2"))
    tok = CLIPTokenizer.from_dir(tmp_path / "tok2")
    assert tok.pad_token == "!" and tok.pad_id == 0
    sample = corpus[::5]
    ref = hf_bang(sample, padding="max_length", truncation=True, max_length=77)["input_ids"]
    np.testing.assert_array_equal(tok(sample), np.asarray(ref))


def test_hand_checked_ids(tok_eos, tok_bang):
    # ids read off the CLIP vocabulary: "a</w>"=320, "photo</w>"=1125, "!</w>"=256, "!"=0
    assert tok_eos.encode("A  photo") == [320, 1125]
    assert tok_eos.encode("a!") == [320, 256]
    assert tok_bang.encode("a!") == [320, 0]
    assert tok_bang.encode("a!", pad_is_special=False) == [320, 256]
    assert tok_eos.encode("<|endoftext|>") == [49407]
    row = tok_bang("a photo", max_length=8)[0]
    assert row.tolist() == [49406, 320, 1125, 49407, 0, 0, 0, 0]


def test_cache_does_not_change_results(corpus):
    tok = CLIPTokenizer.from_bpe_gz()
    first = [tok.encode(p) for p in corpus[:300]]
    assert [tok.encode(p) for p in corpus[:300]] == first
    tok.clear_cache()
    assert [tok.encode(p) for p in corpus[:300]] == first


@pytest.mark.parametrize("bad", [None, b"a cat", 3, ["a"]])
def test_non_string_input_raises(tok_eos, bad):
    with pytest.raises(TokenizerError, match="str"):
        tok_eos.encode(bad)


def test_call_rejects_bad_arguments(tok_eos):
    with pytest.raises(TokenizerError):
        tok_eos(["a", None])
    with pytest.raises(TokenizerError):
        tok_eos("a", max_length=1)
    assert tok_eos([]).shape == (0, 77)


def test_bad_files_raise_tokenizer_error(tmp_path, vocab_files):
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(TokenizerError):
        CLIPTokenizer.from_bpe_gz(tmp_path / "bad.gz")
    with pytest.raises(TokenizerError):
        CLIPTokenizer.from_files(tmp_path / "missing.json", vocab_files[1])
    (tmp_path / "merges.txt").write_text("#version: 0.2\nzq zz\n")
    with pytest.raises(TokenizerError, match="merge"):
        CLIPTokenizer.from_files(vocab_files[0], tmp_path / "merges.txt")
    with pytest.raises(TokenizerError, match="pad token"):
        CLIPTokenizer.from_files(*vocab_files, pad_token="<pad>")
    with pytest.raises(TokenizerError, match="vocab.json"):
        CLIPTokenizer.from_dir(tmp_path)


def test_runtime_modules_import_without_torch_or_transformers():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'tokenizers', 'regex', 'ftfy'):\n"
        "    sys.modules[name] = None\n"
        "from latentrt.runtime.prompt import tokenize_prompt\n"
        "from latentrt.runtime.tokenizer import CLIPTokenizer\n"
        "print(tokenize_prompt('a (cat:1.2)', CLIPTokenizer.from_bpe_gz()).ids[0, :4].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[49406, 320, 2368, 49407]"
