"""WordPiece tokenization: parity with Google's BERT tokenizer and 1.10.0's feature layout.

The reference here is written in plain Python from the published algorithm (Google BERT's
``BasicTokenizer`` + ``WordpieceTokenizer``, and bert-as-service's ``convert_lst_to_features``),
independently of ``bertserve_server.tokenization``, which runs the Rust ``tokenizers`` library.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from bertserve_server.tokenization import BertTokenizer, load_vocab

# --- independent reference ------------------------------------------------------------------------


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    ranges = [
        (0x4E00, 0x9FFF),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
        (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF),
        (0xF900, 0xFAFF),
        (0x2F800, 0x2FA1F),
    ]
    return any(lo <= cp <= hi for lo, hi in ranges)


def reference_basic_tokenize(text: str, lower: bool) -> list[str]:
    cleaned = []
    for ch in text:
        if ord(ch) in (0, 0xFFFD) or _is_control(ch):
            continue
        cleaned.append(" " if _is_whitespace(ch) else ch)
    spaced = []
    for ch in cleaned:
        spaced.append(f" {ch} " if _is_cjk(ord(ch)) else ch)
    out: list[str] = []
    for raw in "".join(spaced).split():
        token = raw
        if lower:
            token = "".join(
                c for c in unicodedata.normalize("NFD", raw.lower()) if unicodedata.category(c) != "Mn"
            )
        word: list[str] = []
        for ch in token:
            if _is_punctuation(ch):
                if word:
                    out.append("".join(word))
                    word = []
                out.append(ch)
            else:
                word.append(ch)
        if word:
            out.append("".join(word))
    return " ".join(out).split()


def reference_wordpiece(token: str, vocab: dict[str, int]) -> list[str]:
    if len(token) > 100:
        return ["[UNK]"]
    pieces = []
    start = 0
    while start < len(token):
        end = len(token)
        found = None
        while start < end:
            piece = token[start:end] if start == 0 else "##" + token[start:end]
            if piece in vocab:
                found = piece
                break
            end -= 1
        if found is None:
            return ["[UNK]"]
        pieces.append(found)
        start = end
    return pieces


def reference_tokenize(text: str, vocab: dict[str, int], lower: bool = True) -> list[str]:
    return [p for t in reference_basic_tokenize(text, lower) for p in reference_wordpiece(t, vocab)]


def reference_features(
    text: str | list[str],
    vocab: dict[str, int],
    *,
    max_seq_len: int,
    tokenized: bool = False,
    lower: bool = True,
    mask_cls_sep: bool = False,
    no_special_token: bool = False,
) -> tuple[list[str], list[int], list[int]]:
    """tokens, type ids, mask: bert-as-service 1.10.0 ``convert_lst_to_features`` for one item."""
    if tokenized:
        assert isinstance(text, list)
        a, b = list(text), []
        if "|||" in text:
            j = text.index("|||")
            a, b = text[:j], text[j + 1 :]
        a = [t if t in vocab else "[UNK]" for t in a]
        b = [t if t in vocab else "[UNK]" for t in b]
        if no_special_token and not b:
            a = a[:max_seq_len]
            return a, [0] * len(a), [1] * len(a)
    else:
        assert isinstance(text, str)
        line = text.strip()
        m = re.match(r"^(.*) \|\|\| (.*)$", line)
        text_a, text_b = (line, None) if m is None else (m.group(1), m.group(2))
        a = reference_tokenize(text_a, vocab, lower)
        b = reference_tokenize(text_b, vocab, lower) if text_b else []
    if b:
        while len(a) + len(b) > max_seq_len - 3:
            (a if len(a) > len(b) else b).pop()
    elif len(a) > max_seq_len - 2:
        a = a[: max_seq_len - 2]
    edge = int(not mask_cls_sep)
    tokens = ["[CLS]", *a, "[SEP]"]
    types = [0] * len(tokens)
    mask = [edge] + [1] * len(a) + [edge]
    if b:
        tokens += [*b, "[SEP]"]
        types += [1] * (len(b) + 1)
        mask += [1] * len(b) + [edge]
    return tokens, types, mask


# --- fixtures -------------------------------------------------------------------------------------

SMALL_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "dog", "is", "hair", "##y", "un", "##want", "##ed", "runn",
    "##ing", ",", ".", "!", "?", "'", "(", ")", "-", "a", "b", "c", "##a", "##b", "##c", "中", "文",
    "cafe", "naive", "hello", "world", "x", "##x", "ο", "##δ", "##ος", "##οσ", "|", "[", "]", "cls",
]  # fmt: skip

TRICKY = [
    "Hello, World!",
    "UNwant\u00e9d,running",
    "  \tthe dog\nis  HAIRY.  ",
    "H\u00e9llo na\u00efve caf\u00e9 \u00c5ngstr\u00f6m \u0130stanbul",
    "\u4e2d\u6587\u5b57\u7b26 mixed with English \u65e5\u672c\u8a9e and \u3072\u3089\u304c\u306a",
    "don't stop!!! (yes)... a-b_c @home #tag $5 ~x^y `q` {z} <p> a|b",
    "a\x00b\x07c\u200bd\ufffde\u00adf g\u0085h\u2028i\u2029j\x0bk\x0cl",
    "tab\tnew\nline\r\nnbsp\u00a0ideographic\u3000space\u2003em",
    "x" * 100,
    "x" * 101,
    "\u039f\u0394\u039f\u03a3 \u03a3 \u03c3\u03c2 \u039f\u0394\u039f\u03a3. \u0391\u03a3\x00\u0392",
    "emoji \U0001f600 and symbols \u00a9 \u2122 \u20ac \u00b1 \u2192 \u221e",
    "combining alone \u0301 and e\u0301 and \u1e9e \u00df",
    "[CLS] literal [SEP] and [UNK]",
    "numbers 3.14159 1,000,000 2nd",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def small_vocab() -> dict[str, int]:
    return {t: i for i, t in enumerate(SMALL_VOCAB)}


@pytest.fixture(scope="module")
def minilm_vocab(minilm_hf_dir: Path) -> dict[str, int]:
    return load_vocab(minilm_hf_dir / "vocab.txt")


# --- WordPiece parity -----------------------------------------------------------------------------


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_wordpiece_matches_reference_on_tricky_text_small_vocab(
    small_vocab: dict[str, int], lower: bool
) -> None:
    tok = BertTokenizer(small_vocab, do_lower_case=lower)
    got = [tokens for tokens, _ in tok.wordpiece(TRICKY)]
    want = [reference_tokenize(t, small_vocab, lower) for t in TRICKY]
    for text, g, w in zip(TRICKY, got, want, strict=True):
        assert g == w, f"text {text!r}"


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_wordpiece_matches_reference_on_tricky_text_real_vocab(
    minilm_vocab: dict[str, int], lower: bool
) -> None:
    tok = BertTokenizer(minilm_vocab, do_lower_case=lower)
    results = tok.wordpiece(TRICKY)
    for text, (tokens, ids) in zip(TRICKY, results, strict=True):
        assert tokens == reference_tokenize(text, minilm_vocab, lower), f"text {text!r}"
        assert ids == [minilm_vocab[t] for t in tokens]


def test_greek_final_sigma_follows_python_lowercasing(minilm_vocab: dict[str, int]) -> None:
    # The Rust normalizer alone would give "οδοσ"; Google's tokenizer (Python lower()) gives "οδος".
    tok = BertTokenizer(minilm_vocab)
    ((tokens, _),) = tok.wordpiece(["\u039f\u0394\u039f\u03a3"])
    assert "".join(t.removeprefix("##") for t in tokens) == "\u03bf\u03b4\u03bf\u03c2"


def test_long_words_become_unk_over_100_chars(small_vocab: dict[str, int]) -> None:
    tok = BertTokenizer(small_vocab)
    (at_limit, _), (over, _) = tok.wordpiece(["x" * 100, "x" * 101])
    assert at_limit == ["x"] + ["##x"] * 99
    assert over == ["[UNK]"]


# --- 1.10.0 feature layout ------------------------------------------------------------------------

LAYOUT_CASES = [
    "the dog is hairy.",
    "the dog is hairy. ||| unwanted running!",
    "a ||| b ||| c",  # split at the last " ||| "
    "a|||b",  # no spaces: not a pair
    "the dog ||| ",  # stripped to "the dog |||": not a pair
    "  the dog ||| is hairy  ",
    "the " * 40,
    "the dog is hairy " * 5 + "||| unwanted " * 3,
    "un ||| " + "hairy " * 50,
    "hello world ||| \x00\x07",  # the second part tokenizes to nothing: a single sentence
    "",
]


@pytest.mark.parametrize("max_seq_len", [4, 5, 8, 25])
@pytest.mark.parametrize("mask_cls_sep", [False, True])
def test_features_match_reference_layout(
    small_vocab: dict[str, int], max_seq_len: int, mask_cls_sep: bool
) -> None:
    tok = BertTokenizer(
        small_vocab, max_seq_len=max_seq_len, max_position_embeddings=64, mask_cls_sep=mask_cls_sep
    )
    for text, item in zip(LAYOUT_CASES, tok.tokenize_batch(LAYOUT_CASES), strict=True):
        tokens, types, mask = reference_features(
            text, small_vocab, max_seq_len=max_seq_len, mask_cls_sep=mask_cls_sep
        )
        assert list(item.tokens) == tokens, f"text {text!r}"
        assert list(item.type_ids) == types, f"text {text!r}"
        assert list(item.input_mask) == mask, f"text {text!r}"
        assert list(item.input_ids) == [small_vocab[t] for t in tokens]
        assert len(item) <= max_seq_len


def test_pair_layout_and_type_ids(small_vocab: dict[str, int]) -> None:
    item = BertTokenizer(small_vocab).tokenize("the dog ||| is hairy")
    assert item.tokens == ("[CLS]", "the", "dog", "[SEP]", "is", "hair", "##y", "[SEP]")
    assert item.type_ids == (0, 0, 0, 0, 1, 1, 1, 1)
    assert item.input_mask == (1,) * 8


def test_mask_cls_sep_zeroes_every_special_position(small_vocab: dict[str, int]) -> None:
    item = BertTokenizer(small_vocab, mask_cls_sep=True).tokenize("the dog ||| is hairy")
    assert item.input_mask == (0, 1, 1, 0, 1, 1, 1, 0)


def test_truncation_keeps_the_left_part(small_vocab: dict[str, int]) -> None:
    item = BertTokenizer(small_vocab, max_seq_len=5).tokenize("the dog is hairy")
    assert item.tokens == ("[CLS]", "the", "dog", "is", "[SEP]")


def test_pair_truncation_pops_the_longer_side(small_vocab: dict[str, int]) -> None:
    item = BertTokenizer(small_vocab, max_seq_len=8).tokenize("the the the the the the ||| dog")
    # budget 5 = a + b: a shrinks from 6 to 4, b keeps its 1 token
    assert item.tokens == ("[CLS]", "the", "the", "the", "the", "[SEP]", "dog", "[SEP]")


TOKENIZED_CASES = [
    ["the", "Dog", "is", "hairy!"],  # no lower-casing, no splitting: Dog and hairy! are [UNK]
    ["the", "dog", "|||", "is", "hair", "|||", "x"],  # split at the first "|||"
    ["the", "|||"],  # empty second part: a single sentence
    ["the"] * 30,
    ["the"] * 10 + ["|||"] + ["dog"] * 20,
]


@pytest.mark.parametrize("no_special_token", [False, True])
def test_pretokenized_input_matches_reference(small_vocab: dict[str, int], no_special_token: bool) -> None:
    tok = BertTokenizer(small_vocab, max_seq_len=12, no_special_token=no_special_token)
    for tokens_in, item in zip(
        TOKENIZED_CASES, tok.tokenize_batch(TOKENIZED_CASES, is_tokenized=True), strict=True
    ):
        tokens, types, mask = reference_features(
            tokens_in, small_vocab, max_seq_len=12, tokenized=True, no_special_token=no_special_token
        )
        assert list(item.tokens) == tokens, f"tokens {tokens_in!r}"
        assert list(item.type_ids) == types
        assert list(item.input_mask) == mask
        assert list(item.input_ids) == [small_vocab[t] for t in tokens]


def test_no_special_token_applies_only_to_pretokenized_singles(small_vocab: dict[str, int]) -> None:
    tok = BertTokenizer(small_vocab, no_special_token=True)
    assert tok.tokenize(["the", "dog"], is_tokenized=True).tokens == ("the", "dog")
    assert tok.tokenize(["the", "|||", "dog"], is_tokenized=True).tokens == (
        "[CLS]",
        "the",
        "[SEP]",
        "dog",
        "[SEP]",
    )
    assert tok.tokenize("the dog").tokens == ("[CLS]", "the", "dog", "[SEP]")


def test_dynamic_length_cuts_only_at_max_position_embeddings(small_vocab: dict[str, int]) -> None:
    tok = BertTokenizer(small_vocab, max_seq_len=None, max_position_embeddings=16)
    short, long = tok.tokenize_batch(["the dog", "the " * 30])
    assert len(short) == 4
    assert len(long) == 16
    assert long.tokens[-1] == "[SEP]"
    pair = tok.tokenize("the " * 30 + "||| dog")
    assert len(pair) == 16 and pair.tokens[-2:] == ("dog", "[SEP]")


def test_batch_preserves_order_and_mixes_pairs(small_vocab: dict[str, int]) -> None:
    tok = BertTokenizer(small_vocab)
    texts = ["the dog", "is ||| hairy", "x", "a ||| b", "c"]
    batch = tok.tokenize_batch(texts)
    assert [tok.tokenize(t) for t in texts] == batch
    assert [item.tokens[1] for item in batch] == ["the", "is", "x", "a", "c"]


@pytest.mark.parametrize("bad", [3, 0, 65])
def test_invalid_max_seq_len_is_refused(small_vocab: dict[str, int], bad: int) -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        BertTokenizer(small_vocab, max_seq_len=bad, max_position_embeddings=64)


def test_vocab_without_special_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[SEP\]"):
        BertTokenizer({"[CLS]": 0, "[UNK]": 1, "a": 2})


def test_non_string_elements_are_type_errors(small_vocab: dict[str, int]) -> None:
    tok = BertTokenizer(small_vocab)
    with pytest.raises(TypeError, match="element 1"):
        tok.tokenize_batch(["the", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="element 0"):
        tok.tokenize_batch([["the", None]], is_tokenized=True)  # type: ignore[list-item]


def test_load_vocab_follows_google_line_numbering(tmp_path: Path) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n  spaced  \n[CLS]\n[SEP]\n", encoding="utf-8")
    assert load_vocab(path) == {"[PAD]": 0, "[UNK]": 1, "spaced": 2, "[CLS]": 3, "[SEP]": 4}
    tok = BertTokenizer(path)
    assert tok.tokenize("spaced").input_ids == (3, 2, 4)
    assert tok.max_token_id == 4
