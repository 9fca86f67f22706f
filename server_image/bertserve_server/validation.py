"""Checks on what a client sent, before anything is queued: clear errors instead of hangs.

Why it exists: bert-as-service 1.10.0 trusted the server side of the wire. An empty string made
the sink wait forever for a row that never came, an empty list or a number in the list killed a
worker, malformed JSON in a big request killed the ventilator (reference §3.8). Both frontends
run every request through :func:`parse_json_payload` (ZeroMQ) and :func:`validate_texts` (both),
which raise :class:`~bertserve_server.errors.InvalidInput` with a message naming the offending
element, so the request is answered with an error and nothing downstream sees bad input.

The rules match what the 1.10.0 client itself refuses (``_check_input_lst_str``): a non-empty
list of non-blank strings, or (pre-tokenized) a non-empty list of non-empty lists of non-blank
strings.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any

from bertserve_server.errors import InvalidInput, RequestTooLarge

#: Largest request body either frontend parses (bytes), the default of ``-max_request_bytes``.
#: Checked before JSON decoding, so a huge payload costs a length comparison, not a parse.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
#: Longest decimal count accepted in a wire field such as ``msg_len`` (Python's ``int`` refuses
#: more than 4300 digits with a ValueError; no honest count has more than a handful).
MAX_COUNT_DIGITS = 18


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


#: Bodies above this are decoded and parsed in slices (see :func:`loads_in_slices`).
SLICED_PARSE_BYTES = 1024 * 1024
#: Deepest nesting the sliced parser follows (texts are at depth 2, tokens at depth 3).
MAX_JSON_DEPTH = 32
_SLICE_CHARS = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class _TooDeepError(Exception):
    pass


def decode_utf8_in_slices(data: bytes) -> str:
    """Strict UTF-8 decoding, one MiB at a time (each slice is short work under the GIL)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    view = memoryview(data)
    parts = [decoder.decode(view[i : i + _SLICE_CHARS]) for i in range(0, len(view), _SLICE_CHARS)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def loads_in_slices(text: str) -> Any:
    """``json.loads`` for big documents that never holds the GIL for long.

    ``json.loads`` is one C call: on a 64 MiB body it keeps every other thread of the process —
    the aiohttp loop answering ``/healthz``, the ZeroMQ I/O thread — waiting for hundreds of
    milliseconds. Here containers are walked in Python and only their scalar elements go to the
    C scanner, so the interpreter can switch threads between elements. Same results and the same
    ``json.JSONDecodeError`` as ``json.loads``; nesting deeper than :data:`MAX_JSON_DEPTH` is an
    :class:`InvalidInput`.
    """
    try:
        value, end = _parse_value(text, _WHITESPACE.match(text, 0).end(), 0)  # type: ignore[union-attr]
    except _TooDeepError:
        raise InvalidInput(f"request JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _parse_value(text: str, index: int, depth: int) -> tuple[Any, int]:
    if index >= len(text):
        raise json.JSONDecodeError("Expecting value", text, index)
    char = text[index]
    if char in "[{":
        if depth >= MAX_JSON_DEPTH:
            raise _TooDeepError
        return _parse_container(text, index, depth + 1)
    try:
        return _SCAN(text, index)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None


def _parse_container(text: str, index: int, depth: int) -> tuple[Any, int]:
    is_object = text[index] == "{"
    close = "}" if is_object else "]"
    out_list: list[Any] = []
    out_dict: dict[str, Any] = {}
    index = _WHITESPACE.match(text, index + 1).end()  # type: ignore[union-attr]
    if text.startswith(close, index):
        return (out_dict if is_object else out_list), index + 1
    while True:
        if is_object:
            if not text.startswith('"', index):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
            key, index = _SCAN(text, index)
            index = _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]
            if not text.startswith(":", index):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
            index = _WHITESPACE.match(text, index + 1).end()  # type: ignore[union-attr]
            out_dict[key], index = _parse_value(text, index, depth)
        else:
            value, index = _parse_value(text, index, depth)
            out_list.append(value)
        index = _WHITESPACE.match(text, index).end()  # type: ignore[union-attr]
        if text.startswith(close, index):
            return (out_dict if is_object else out_list), index + 1
        if not text.startswith(",", index):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _WHITESPACE.match(text, index + 1).end()  # type: ignore[union-attr]


def check_payload_size(size: int, limit: int = MAX_PAYLOAD_BYTES) -> None:
    if size > limit:
        raise RequestTooLarge(f"request body of {size} bytes exceeds the limit of {limit} bytes; split it")


def parse_json_payload(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> Any:
    """Decode a ZeroMQ message frame: strict UTF-8, then JSON (any spelling, reference §3)."""
    check_payload_size(len(payload), limit)
    try:
        text = (
            decode_utf8_in_slices(payload) if len(payload) > SLICED_PARSE_BYTES else payload.decode("utf-8")
        )
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"request is not valid UTF-8 (byte {exc.start}: {payload[exc.start : exc.start + 4]!r}); "
            "send a JSON array of strings encoded as UTF-8"
        ) from None
    return decode_json(text, "send a JSON array of strings")


def decode_json(text: str, hint: str, subject: str = "request is not valid JSON") -> Any:
    """``json.loads`` whose every failure is :class:`InvalidInput` (nesting too deep included).

    Documents over :data:`SLICED_PARSE_BYTES` go through :func:`loads_in_slices`.
    """
    try:
        return loads_in_slices(text) if len(text) > SLICED_PARSE_BYTES else json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{subject} ({exc.msg} at line {exc.lineno} column {exc.colno}); {hint}") from None
    except RecursionError:
        raise InvalidInput(f"request JSON is nested too deeply; {hint}") from None


def parse_count(value: bytes, field: str) -> int:
    """A non-negative decimal count from the wire (``msg_len``), or :class:`InvalidInput`."""
    if not value.isdigit() or not value.isascii():
        raise InvalidInput(f"{field} must be ASCII digits, got {value[:20]!r}")
    if len(value) > MAX_COUNT_DIGITS:
        raise InvalidInput(f"{field} has {len(value)} digits; at most {MAX_COUNT_DIGITS} are accepted")
    return int(value)


def _check_string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {_type_name(value)} {_describe(value)}")
    if not value.strip():
        raise InvalidInput(f"{where} must be a non-empty string, got {_describe(value)}")
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate is not None:  # JSON's "\ud800" escape: no UTF-8 form, so no tokenizer takes it
        raise InvalidInput(
            f"{where} holds an unpaired UTF-16 surrogate (U+{ord(surrogate.group()):04X}) at "
            f"character {surrogate.start()}; send valid Unicode text"
        )


def _check_non_empty_array(value: Any, name: str, expected: str) -> None:
    """Raise :class:`InvalidInput` naming ``name`` unless ``value`` is a non-empty JSON array."""
    if not isinstance(value, list):
        raise InvalidInput(f"{name} must be {expected}, got {_type_name(value)} {_describe(value)}")
    if not value:
        raise InvalidInput(f"{name} must be a non-empty array; got an empty array")


def validate_texts(texts: Any, is_tokenized: bool | None = None) -> tuple[list[Any], bool]:
    """Return ``(texts, is_tokenized)`` or raise :class:`InvalidInput`.

    ``is_tokenized=None`` infers it as 1.10.0 does: pre-tokenized iff every element is a list
    (the ZeroMQ protocol does not send the flag). An explicit flag (HTTP) must match the data.
    """
    _check_non_empty_array(texts, "texts", "a JSON array of strings (or of token arrays)")
    tokenized = all(isinstance(t, list) for t in texts)
    if is_tokenized is not None and bool(is_tokenized) != tokenized:
        if is_tokenized:
            first = next(i for i, t in enumerate(texts) if not isinstance(t, list))
            raise InvalidInput(
                f"is_tokenized is true, so every element must be an array of tokens, "
                f"but element {first} is {_type_name(texts[first])} {_describe(texts[first])}"
            )
        first = next(i for i, t in enumerate(texts) if isinstance(t, list))
        raise InvalidInput(
            f"element {first} is an array of tokens; set is_tokenized to true, or send strings only"
        )
    if tokenized:
        for i, tokens in enumerate(texts):
            if not tokens:
                raise InvalidInput(f"element {i} must be a non-empty array of tokens; got an empty array")
            for j, token in enumerate(tokens):
                _check_string(token, f"token {j} of element {i}")
    else:
        for i, text in enumerate(texts):
            if isinstance(text, list):
                raise InvalidInput(
                    f"element {i} is an array but other elements are strings; "
                    "send all strings, or all token arrays (pre-tokenized)"
                )
            _check_string(text, f"element {i}")
    return texts, tokenized


#: One classifier input: a sentence (``"a ||| b"`` is a pair) or an explicit ``(text_a, text_b)``.
Example = str | tuple[str, str]


def _example(value: Any, where: str) -> Example:
    if isinstance(value, list):
        if len(value) == 1:
            _check_string(value[0], f"{where}[0]")
            return str(value[0])
        if len(value) == 2:
            _check_string(value[0], f"{where}[0]")
            _check_string(value[1], f"{where}[1]")
            return (value[0], value[1])
        raise InvalidInput(
            f"{where} must be a string or a pair [text_a, text_b], got an array of {len(value)} elements"
        )
    _check_string(value, where)
    return str(value)


def validate_examples(inputs: Any) -> tuple[list[Example], bool]:
    """``/predict``'s ``inputs``: the examples, and whether the request was a batch.

    Accepted, as Text Embeddings Inference's ``/predict``: a string; a pair ``[text_a, text_b]``
    (an array of exactly two strings is always one pair); or an array of those (a one-element
    array ``[text]`` is a single sentence, so ``[["a"], ["b"]]`` sends two sentences).
    """
    if isinstance(inputs, str):
        return [_example(inputs, "inputs")], False
    _check_non_empty_array(inputs, "inputs", 'a string, a pair ["text_a", "text_b"] or an array of those')
    if len(inputs) == 2 and all(isinstance(v, str) for v in inputs):
        return [_example(inputs, "inputs")], False
    return [_example(value, f"inputs[{i}]") for i, value in enumerate(inputs)], True
