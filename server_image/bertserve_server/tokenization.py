"""WordPiece tokenization with bert-as-service 1.10.0's exact semantics, on the Rust ``tokenizers`` library.

Why it exists: the server tokenizes *before* batching, so that batches can be grouped by length,
and it must do so fast (the original ran Google's pure-Python tokenizer inside the GPU worker).
The WordPiece itself is Hugging Face's ``tokenizers`` (BertNormalizer + BertPreTokenizer +
WordPiece) built from ``vocab.txt``; everything around it follows 1.10.0's
``extract_features.convert_lst_to_features`` (reference §5.7):

- ``"a ||| b"`` is a sentence pair (split at the *last* ``" ||| "`` of the stripped line, by
  the same regular expression); pre-tokenized input splits at the first ``"|||"`` element;
- ``[CLS] a [SEP] (b [SEP])``, type ids 0 for the first part and 1 for ``b [SEP]``;
- truncation keeps the left part: ``a[:max_seq_len-2]``; pairs pop the last token of the longer
  side until ``len(a)+len(b) <= max_seq_len-3``;
- pre-tokenized input is mapped to ids as is (``[UNK]`` when not in the vocabulary), with no
  lower-casing or further splitting; ``no_special_token`` drops ``[CLS]``/``[SEP]`` for
  pre-tokenized single sentences only (truncating to ``max_seq_len``);
- ``mask_cls_sep`` sets the mask to 0 at ``[CLS]`` and every ``[SEP]``;
- ``max_seq_len=None`` means "as long as needed": items are only cut at
  ``max_position_embeddings`` and the caller pads each batch to its longest item.
- before WordPiece, each sentence (each side of a pair) is cut to :attr:`BertTokenizer.max_chars`
  characters: ``limit × (MAX_INPUT_CHARS_PER_WORD + 1)``, room for ``limit`` tokens of the longest
  word WordPiece splits plus a separator each. A 64 MiB sentence therefore costs no more than
  a long one; only text with runs of whitespace or words over 100 characters before its
  ``limit``-th token can tokenize differently from 1.10.0 (which tokenized everything and then
  truncated).

Two details make the Rust tokenizer agree with Google's ``BasicTokenizer`` character for
character: lower-casing is done here with Python's ``str.lower()`` *before* accent stripping (the
Rust normalizer strips first and lower-cases per character, which loses Greek final sigma), and
text containing a capital sigma is cleaned of control characters before lower-casing, as Google
does. One deliberate difference from 1.10.0: an empty string yields ``[CLS] [SEP]`` instead of
being dropped (which desynchronised the reply and hung the client); frontends reject empty
strings before they get here anyway.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bertserve_server.encoder import TokenizedInput

CLS = "[CLS]"
SEP = "[SEP]"
UNK = "[UNK]"
#: Element that separates the two sentences of a pre-tokenized pair.
TOKENIZED_PAIR_SEPARATOR = "|||"
#: Longest word WordPiece splits; longer words become ``[UNK]`` (Google's default).
MAX_INPUT_CHARS_PER_WORD = 100
#: ``-max_seq_len`` must leave room for ``[CLS] a [SEP] b [SEP]`` (1.10.0's ``check_max_seq_len``).
MIN_MAX_SEQ_LEN = 4

_PAIR = re.compile(r"^(.*) \|\|\| (.*)$")
_CAPITAL_SIGMA = "\u03a3"


def load_vocab(path: str | Path) -> dict[str, int]:
    """Google's ``load_vocab``: one token per line, stripped; id = line number (later duplicates win)."""
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            vocab[line.strip()] = index
    return vocab


def _google_clean(text: str) -> str:
    """Google ``BasicTokenizer._clean_text``: drop NUL, U+FFFD and control chars; whitespace → space."""
    out = []
    for char in text:
        cp = ord(char)
        if cp in (0, 0xFFFD):
            continue
        if char in " \t\n\r":
            out.append(" ")
            continue
        category = unicodedata.category(char)
        if category == "Zs":
            out.append(" ")
        elif not category.startswith("C"):
            out.append(char)
    return "".join(out)


class BertTokenizer:
    """Turns client sentences into ``TokenizedInput``s for one model (one vocabulary, one set of flags).

    Args:
      vocab: path of ``vocab.txt``, or a token→id mapping. ``[CLS]``, ``[SEP]`` and ``[UNK]``
        must be in it.
      do_lower_case: False for ``-cased_tokenization`` (no lower-casing, no accent stripping).
      max_seq_len: ``-max_seq_len`` including special tokens, or None (``NONE``: dynamic).
      max_position_embeddings: the model's position limit; caps everything.
      mask_cls_sep, no_special_token: the flags of the same name.
    """

    def __init__(
        self,
        vocab: str | Path | Mapping[str, int],
        *,
        do_lower_case: bool = True,
        max_seq_len: int | None = 25,
        max_position_embeddings: int = 512,
        mask_cls_sep: bool = False,
        no_special_token: bool = False,
    ) -> None:
        self.vocab: dict[str, int] = dict(vocab) if isinstance(vocab, Mapping) else load_vocab(vocab)
        missing = [t for t in (CLS, SEP, UNK) if t not in self.vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
        if max_seq_len is not None:
            if max_seq_len < MIN_MAX_SEQ_LEN:
                raise ValueError(f"max_seq_len must be > 3 or None, got {max_seq_len}")
            if max_seq_len > max_position_embeddings:
                raise ValueError(
                    f"max_seq_len {max_seq_len} exceeds max_position_embeddings {max_position_embeddings}"
                )
        self.do_lower_case = do_lower_case
        self.max_seq_len = max_seq_len
        self.max_position_embeddings = max_position_embeddings
        self.mask_cls_sep = mask_cls_sep
        self.no_special_token = no_special_token
        self.cls_id = self.vocab[CLS]
        self.sep_id = self.vocab[SEP]
        self.unk_id = self.vocab[UNK]
        self._id_to_token = {index: token for token, index in self.vocab.items()}

        self._tokenizer = Tokenizer(
            models.WordPiece(self.vocab, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
        )
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=do_lower_case, lowercase=False
        )
        self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    @property
    def max_token_id(self) -> int:
        """Largest id this tokenizer can emit; must be below the model config's ``vocab_size``."""
        return max(self.vocab.values())

    @property
    def limit(self) -> int:
        """Longest item produced (special tokens included)."""
        return self.max_seq_len if self.max_seq_len is not None else self.max_position_embeddings

    @property
    def max_chars(self) -> int:
        """Characters of one sentence (or pair side) kept before tokenizing (see the module doc)."""
        return self.limit * (MAX_INPUT_CHARS_PER_WORD + 1)

    # -- public API -------------------------------------------------------------------------------

    def tokenize_batch(
        self, texts: Sequence[str] | Sequence[Sequence[str]], is_tokenized: bool = False
    ) -> list[TokenizedInput]:
        """Tokenize a request's sentences (strings, or token lists when ``is_tokenized``), in order."""
        if is_tokenized:
            pairs = [self._split_tokenized(i, item) for i, item in enumerate(texts)]
            return [self._assemble(a, b, tokenized=True) for a, b in pairs]
        firsts: list[str] = []
        seconds: list[str | None] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"element {i} must be a string, got {type(text).__name__}")
            first, second = self._split_pair(text)
            firsts.append(first)
            seconds.append(second)
        return self._assemble_texts(firsts, seconds, mask_specials=self.mask_cls_sep)

    def _assemble_texts(
        self, firsts: list[str], seconds: list[str | None], *, mask_specials: bool
    ) -> list[TokenizedInput]:
        cut = self.max_chars  # a 64 MiB sentence costs WordPiece no more than a long one
        firsts = [first[:cut] for first in firsts]
        seconds = [None if second is None else second[:cut] for second in seconds]
        segments = firsts + [s for s in seconds if s is not None]
        pieces = self.wordpiece_ids(segments)
        out = []
        next_b = len(firsts)
        for index, second in enumerate(seconds):
            if second is None:
                out.append(self._assemble_ids(pieces[index], [], mask_specials=mask_specials))
            else:
                out.append(self._assemble_ids(pieces[index], pieces[next_b], mask_specials=mask_specials))
                next_b += 1
        return out

    def tokenize_examples(self, examples: Sequence[str | tuple[str, str]]) -> list[TokenizedInput]:
        """Classifier inputs as ``run_classifier.py``'s ``convert_single_example`` builds them.

        Each example is a sentence (``"a ||| b"`` is a pair, as for encoding) or an explicit
        ``(text_a, text_b)`` pair. Layout, segment ids and the longest-first pair truncation are
        those of encoding (the same ``_truncate_seq_pair``); unlike encoding, the mask is 1 on every
        real token whatever ``-mask_cls_sep`` says, because the head was trained that way.
        """
        firsts: list[str] = []
        seconds: list[str | None] = []
        for i, example in enumerate(examples):
            if isinstance(example, str):
                first, second = self._split_pair(example)
            elif (
                isinstance(example, tuple) and len(example) == 2 and all(isinstance(t, str) for t in example)
            ):
                first, second = example
            else:
                raise TypeError(f"example {i} must be a string or a pair of strings, got {example!r:.60}")
            firsts.append(first)
            seconds.append(second)
        return self._assemble_texts(firsts, seconds, mask_specials=False)

    def tokenize(self, text: str | Sequence[str], is_tokenized: bool = False) -> TokenizedInput:
        """One sentence; see ``tokenize_batch``."""
        return self.tokenize_batch([text], is_tokenized)[0]

    def wordpiece(self, texts: Sequence[str]) -> list[tuple[list[str], list[int]]]:
        """Google ``FullTokenizer.tokenize`` (tokens and ids) for each text, no special tokens, no limit."""
        names = self._id_to_token
        return [([names[i] for i in ids], ids) for ids in self.wordpiece_ids(texts)]

    def wordpiece_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Like ``wordpiece``, ids only (the fast path)."""
        prepared = [self._prepare(t) for t in texts]
        # encode_batch_fast skips character offsets (and token strings): about 20 % faster.
        return [e.ids for e in self._tokenizer.encode_batch_fast(prepared, add_special_tokens=False)]

    # -- internals ---------------------------------------------------------------------------------

    def _prepare(self, text: str) -> str:
        if not self.do_lower_case:
            return text
        if _CAPITAL_SIGMA in text:
            # Python's lower() chooses final/medial sigma by context: give it Google's context.
            text = _google_clean(text)
        return text.lower()

    @staticmethod
    def _split_pair(text: str) -> tuple[str, str | None]:
        line = text.strip()
        if " ||| " not in line:
            return line, None
        match = _PAIR.match(line)
        if match is None:
            return line, None
        return match.group(1), match.group(2)

    @staticmethod
    def _split_tokenized(index: int, item: Sequence[str]) -> tuple[list[str], list[str]]:
        if isinstance(item, str) or not isinstance(item, Sequence):
            raise TypeError(f"element {index} must be a list of tokens, got {type(item).__name__}")
        tokens = list(item)
        for token in tokens:
            if not isinstance(token, str):
                raise TypeError(f"element {index} must hold only strings, got {type(token).__name__}")
        try:
            cut = tokens.index(TOKENIZED_PAIR_SEPARATOR)
        except ValueError:
            return tokens, []
        return tokens[:cut], tokens[cut + 1 :]

    def _assemble(self, a: list[str], b: list[str], *, tokenized: bool) -> TokenizedInput:
        unk = UNK
        vocab = self.vocab
        a = [t if t in vocab else unk for t in a]
        b = [t if t in vocab else unk for t in b]
        if tokenized and self.no_special_token and not b:
            a = a[: self.limit]
            ids = tuple(vocab[t] for t in a)
            return TokenizedInput(ids, (0,) * len(ids), (1,) * len(ids), tuple(a))
        return self._assemble_ids([vocab[t] for t in a], [vocab[t] for t in b])

    def _assemble_ids(
        self, a_ids: list[int], b_ids: list[int], *, mask_specials: bool | None = None
    ) -> TokenizedInput:
        limit = self.limit
        names = self._id_to_token
        edge = 0 if (self.mask_cls_sep if mask_specials is None else mask_specials) else 1
        na, nb = len(a_ids), len(b_ids)
        if nb:
            while na + nb > limit - 3:  # 1.10.0's _truncate_seq_pair, on lengths
                if na > nb:
                    na -= 1
                else:
                    nb -= 1
        else:
            na = min(na, limit - 2)
        if not nb:  # a single sentence, or a pair whose second part was truncated away (as 1.10.0)
            return TokenizedInput(
                input_ids=(self.cls_id, *a_ids[:na], self.sep_id),
                type_ids=(0,) * (na + 2),
                input_mask=(edge, *(1,) * na, edge),
                tokens=(CLS, *[names[i] for i in a_ids[:na]], SEP),
            )
        return TokenizedInput(
            input_ids=(self.cls_id, *a_ids[:na], self.sep_id, *b_ids[:nb], self.sep_id),
            type_ids=(0,) * (na + 2) + (1,) * (nb + 1),
            input_mask=(edge, *(1,) * na, edge, *(1,) * nb, edge),
            tokens=(CLS, *[names[i] for i in a_ids[:na]], SEP, *[names[i] for i in b_ids[:nb]], SEP),
        )
