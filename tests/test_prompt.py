"""Prompt syntax, 75-token windows and A1111's weighting rule.

Oracles: A1111's documented parse results (its parse_prompt_attention docstring), token ids from
transformers' CLIPTokenizer, and a PyTorch reference: a seeded tiny transformers CLIPTextModel whose
hidden states are weighted and concatenated here in torch with the rule written out independently.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel
from transformers import CLIPTokenizer as HFCLIPTokenizer

from latentrt.errors import InputError, TokenizerError
from latentrt.runtime import prompt as P
from latentrt.runtime.tokenizer import CLIPTokenizer
from tests import tokenizer_reference

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    files = tokenizer_reference.write_clip_vocab_files(tmp_path_factory.mktemp("vocab"))
    return HFCLIPTokenizer(*map(str, files))


@pytest.fixture(scope="module")
def tok_l():
    return CLIPTokenizer.from_bpe_gz()


@pytest.fixture(scope="module")
def tok_g():
    return CLIPTokenizer.from_bpe_gz(pad_token="!")


def ids_of(hf, text):
    return hf.encode(text, add_special_tokens=False)


def as_pairs(fragments):
    return [("BREAK", -1.0) if f.is_break else (f.text, f.weight) for f in fragments]


# A1111's parse_prompt_attention docstring examples, with its documented results.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    ("", [("", 1.0)]),
    ("[a]", [("a", 1 / 1.1)]),
    ("((a))", [("a", 1.1 * 1.1)]),
    ("(a:1.5) b", [("a", 1.5), (" b", 1.0)]),
    ("( a : 0.5 )", [(" a ", 0.5)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a\\\\b", [("a\\b", 1.0)]),
]

# Malformed input degrades to literal text (hand-worked from A1111's rules).
MALFORMED = [
    ("(word:abc)", [("word:abc", 1.1)]),
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),
    ("word)", [("word)", 1.0)]),
    ("a]b", [("a]b", 1.0)]),
    (")(", [(")", 1.0)]),
    ("a:b", [("a:b", 1.0)]),
    ("[x:1.5]", [("x:1.5", 1 / 1.1)]),
    ("a\\b", [("ab", 1.0)]),
    ("BREAKfast BREAK", [("BREAKfast", 1.0), ("BREAK", -1.0), ("", 1.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_EXAMPLES + MALFORMED)
def test_parse_matches_hand_worked_results(prompt, expected):
    got = as_pairs(P.parse_prompt(prompt))
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_parse_never_crashes_on_random_syntax():
    rng = random.Random(0)
    alphabet = list("()[]:\\ ab1.5-+,") + ["BREAK", " BREAK ", "(", ":0.7)", ":x)"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        frags = P.parse_prompt(text)
        assert frags and all(isinstance(f.text, str) and np.isfinite(f.weight) for f in frags)


@pytest.mark.parametrize("bad", [None, 1.5, b"(a)", ["a"]])
def test_non_string_prompt_raises(bad, tok_l):
    with pytest.raises(TokenizerError, match="str"):
        P.parse_prompt(bad)
    with pytest.raises(TokenizerError):
        P.tokenize_prompt(bad, tok_l)


def test_single_window_equals_tokenizer_output(tok_l, tok_g, hf):
    text = "a photo of an astronaut riding a horse on mars, 8k"
    lw, gw = P.tokenize_prompts(text, [tok_l, tok_g])
    assert lw.num_windows == gw.num_windows == 1
    np.testing.assert_array_equal(lw.ids[0], tok_l(text)[0])
    np.testing.assert_array_equal(gw.ids[0], tok_g(text)[0])
    ref = hf(text, padding="max_length", truncation=True, max_length=77)["input_ids"]
    assert lw.ids[0].tolist() == ref
    assert (lw.weights == 1).all() and lw.weights.dtype == np.float32


def test_weighted_window_by_hand(tok_l, hf):
    w = P.tokenize_prompt("a (red cat:1.3) on [a] ((sofa))", tok_l)
    content = ids_of(hf, "a ") + ids_of(hf, "red cat") + ids_of(hf, " on ") + ids_of(hf, "a")
    content += ids_of(hf, " ") + ids_of(hf, "sofa")
    expected_w = [1.0, 1.3, 1.3, 1.0, 1 / 1.1, 1.21]
    assert w.ids[0, : len(content) + 2].tolist() == [BOS, *content, EOS]
    np.testing.assert_allclose(w.weights[0, 1 : len(content) + 1], expected_w, rtol=1e-6)
    assert (w.weights[0, len(content) + 1 :] == 1).all()


def _expected_windows(hf, fragments, pad_id):
    """Windows built directly from A1111's description: 75 content tokens, BOS/EOS, then pad."""
    ids, weights = [], []
    for text, weight in fragments:
        t = ids_of(hf, text)
        ids += t
        weights += [weight] * len(t)
    out_ids, out_w = [], []
    for s in range(0, max(len(ids), 1), 75):
        chunk, cw = ids[s : s + 75], weights[s : s + 75]
        out_ids.append([BOS, *chunk, EOS] + [pad_id] * (75 - len(chunk)))
        out_w.append([1.0, *cw, 1.0] + [1.0] * (75 - len(chunk)))
    return np.array(out_ids), np.array(out_w, dtype=np.float32)


def test_long_prompt_is_split_into_windows(tok_l, tok_g, hf):
    filler = ", ".join(f"word{i} thing" for i in range(40))
    prompt = f"a (castle:1.2) {filler} [fog]"
    frags = [("a ", 1.0), ("castle", 1.2), (f" {filler} ", 1.0), ("fog", 1 / 1.1)]
    for tok in (tok_l, tok_g):
        w = P.tokenize_prompt(prompt, tok)
        exp_ids, exp_w = _expected_windows(hf, frags, tok.pad_id)
        assert w.num_windows == exp_ids.shape[0] >= 2
        np.testing.assert_array_equal(w.ids, exp_ids)
        np.testing.assert_allclose(w.weights, exp_w, rtol=1e-6)


def test_window_boundaries(tok_l, hf):
    one = "a " * 75
    assert len(ids_of(hf, one)) == 75
    assert P.tokenize_prompt(one, tok_l).num_windows == 1
    assert P.tokenize_prompt(one + "b", tok_l).num_windows == 2
    assert P.tokenize_prompt("", tok_l).ids.tolist() == [[BOS, EOS] + [EOS] * 75]
    assert P.tokenize_prompt(one + "b", tok_l).token_count == 76


def test_break_starts_a_new_window(tok_l, tok_g, hf):
    w = P.tokenize_prompt("a cat BREAK (a dog:1.4)", tok_g)
    assert w.num_windows == 2
    assert w.ids[0, :4].tolist() == [BOS, *ids_of(hf, "a cat"), EOS]
    assert w.ids[1, :4].tolist() == [BOS, *ids_of(hf, "a dog"), EOS]
    assert (w.ids[:, 4:] == 0).all()
    np.testing.assert_allclose(w.weights[1, :4], [1.0, 1.4, 1.4, 1.0])
    assert P.tokenize_prompt("a BREAK", tok_l).num_windows == 1
    assert P.tokenize_prompt("BREAK a", tok_l).num_windows == 2
    assert P.tokenize_prompt("(a BREAK b)", tok_l).num_windows == 2
    assert P.tokenize_prompt("a " * 75 + "BREAK b", tok_l).num_windows == 2


def test_comma_backtrack(tok_l, hf):
    head = "a " * 70 + ", "
    tail = "b c d e f g h"
    prompt = head + tail
    assert len(ids_of(hf, head)) == 71
    plain = P.tokenize_prompt(prompt, tok_l)
    moved = P.tokenize_prompt(prompt, tok_l, comma_backtrack=20)
    assert plain.ids[0, 72:76].tolist() == ids_of(hf, "b c d e")
    assert moved.ids[0, 71:74].tolist() == [ids_of(hf, ",")[0], EOS, EOS]
    assert moved.ids[1, :9].tolist() == [BOS, *ids_of(hf, tail), EOS]
    far = P.tokenize_prompt(prompt, tok_l, comma_backtrack=3)
    np.testing.assert_array_equal(far.ids, plain.ids)


def test_sdxl_tokenizers_align(tok_l, tok_g, hf):
    prompt = "a (sunset:1.2)!!! over the sea BREAK " + "waves, " * 60 + "wow!"
    lw, gw = P.tokenize_prompts(prompt, [tok_l, tok_g])
    assert lw.num_windows == gw.num_windows == 3
    np.testing.assert_array_equal(lw.weights, gw.weights)
    content = lw.ids != EOS
    np.testing.assert_array_equal(lw.ids[content], gw.ids[content])
    first_eos = (lw.ids == EOS).argmax(axis=1)
    np.testing.assert_array_equal(first_eos, (gw.ids == EOS).argmax(axis=1))
    for row, e in zip(gw.ids, first_eos, strict=True):
        assert (row[e + 1 :] == 0).all()
    assert not (gw.ids[content] == 0).any()  # "!" is text, not the pad id, by default
    assert 256 in gw.ids[2]
    exact = P.tokenize_prompt("wow!", tok_g, pad_is_special=True)
    np.testing.assert_array_equal(exact.ids[0], tok_g("wow!")[0])


def test_tokenizers_with_different_counts_are_refused(tok_l, tok_g):
    with pytest.raises(TokenizerError, match="aligned"):
        P.tokenize_prompts("wow!!", [tok_l, tok_g], pad_is_special=True)


def test_match_windows_pads_with_empty_prompt(tok_g):
    pos = P.tokenize_prompt("x " * 160, tok_g)
    neg = P.tokenize_prompt("blurry", tok_g)
    p2, n2 = P.match_windows(pos, neg, tok_g)
    assert p2.num_windows == n2.num_windows == 3
    np.testing.assert_array_equal(n2.ids[0], neg.ids[0])
    np.testing.assert_array_equal(n2.ids[1:], np.tile(tok_g("")[0], (2, 1)))
    assert (n2.weights[1:] == 1).all()
    n3, p3 = P.match_windows(neg, pos, tok_g)
    np.testing.assert_array_equal(n3.ids, n2.ids)
    with pytest.raises(InputError, match="pad"):
        P.pad_windows(pos, 1, tok_g)


def test_apply_weights_by_hand():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0]]], dtype=np.float32)  # (1, 2, 2), mean 2.5
    weights = np.array([[2.0, 1.0]], dtype=np.float32)
    # weighted [[2, 4], [3, 4]] has mean 3.25; rescaled by 2.5 / 3.25
    expected = np.array([[[2.0, 4.0], [3.0, 4.0]]]) * (2.5 / 3.25)
    got = P.apply_weights(hidden, weights)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got.mean(), hidden.mean(), rtol=1e-6)
    np.testing.assert_array_equal(P.apply_weights(hidden, np.ones((1, 2))), hidden)
    with pytest.raises(InputError, match="weights"):
        P.apply_weights(hidden, np.ones((1, 3)))


def test_weighted_embedding_matches_torch_reference(tok_l, hf):
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    model = CLIPTextModel(cfg).eval()
    with torch.no_grad():  # a non-zero final LayerNorm bias, as trained CLIP text encoders have;
        # with the zero default the window mean is ~0 and the rescale factor ill-conditioned
        model.final_layer_norm.bias.copy_(0.2 + 0.5 * torch.randn(32))
    filler = " ".join(f"tree{i}" for i in range(45))
    prompt = f"a (misty forest:1.4) {filler} [dark] BREAK ((moonlight)), (stars:0.6)"
    frags = [("a ", 1.0), ("misty forest", 1.4), (f" {filler} ", 1.0), ("dark", 1 / 1.1)]
    exp1, w1 = _expected_windows(hf, frags, EOS)
    exp2, w2 = _expected_windows(hf, [("moonlight", 1.21), (", ", 1.0), ("stars", 0.6)], EOS)
    exp_ids, exp_w = np.concatenate([exp1, exp2]), np.concatenate([w1, w2])

    win = P.tokenize_prompt(prompt, tok_l)
    assert win.num_windows == 3
    np.testing.assert_array_equal(win.ids, exp_ids)
    np.testing.assert_allclose(win.weights, exp_w, rtol=1e-6)

    with torch.no_grad():
        z = model(input_ids=torch.from_numpy(exp_ids)).last_hidden_state  # (3, 77, 32)
        mult = torch.from_numpy(exp_w)
        ref = []
        for i in range(z.shape[0]):  # each window separately, as A1111 encodes chunks
            zi = z[i : i + 1]
            before = zi.mean()
            zi = zi * mult[i : i + 1].unsqueeze(-1)
            ref.append(zi * (before / zi.mean()))
        ref = torch.cat(ref, dim=1)  # (1, 231, 32)

    got = P.weighted_embedding(z.numpy(), win)
    assert got.shape == (1, 77 * 3, 32) and got.dtype == np.float32
    assert np.abs(got - ref.numpy()).max() <= 1e-5
    unweighted = P.concat_windows(z.numpy())
    assert np.abs(got - unweighted).max() > 1e-2  # the weights do change the embedding
