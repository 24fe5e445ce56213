"""AUTOMATIC1111 emphasis: which part of a prompt gets which weight, and where ``BREAK`` cuts it.

This module owns reading A1111's attention syntax in one prompt text (after ``schedule.py`` has
resolved prompt editing to the text of one step): ``(text)`` multiplies the weight by 1.1,
``[text]`` divides it by 1.1, ``(text:1.4)`` multiplies it by 1.4, nesting multiplies, brackets
left open at the end still count, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters
(a lone backslash is dropped), and ``BREAK`` (a whole word, in capitals) starts a new 75-token
chunk. :func:`parse_prompt_attention` gives exactly A1111's ``parse_prompt_attention`` result:
``(text, weight)`` spans in order, adjacent spans of equal weight merged, ``BREAK`` as
``("BREAK", -1.0)``; the weights come out of the same multiplications in the same order, so they
are equal as floats too (``1.5730000000000004``). ``long_prompts.py`` turns spans into embeddings.

Why by hand: compel (the maintained prompt-weighting library for diffusers) has its own syntax
(``word++``, ``(word)1.2``, ``.and()``/``.blend()``), no ``BREAK``, no ``[word]`` de-emphasis and
no A1111 escapes, and it applies a weight by blending toward the empty prompt's embedding
(``empty + w * (z - empty)``, masking out down-weighted words) instead of A1111's "scale the
token embeddings, restore the mean"; so its images differ from A1111's for the same prompt. lark
(which A1111 uses for prompt *editing*) is no help either: A1111 reads emphasis with a regular
tokenizer and a bracket stack that tolerates unbalanced brackets, which a grammar would have to
reject or re-create with error recovery; a 40-line scanner is the faithful and simpler choice.

A1111's quirks are kept, so that a prompt copied from it encodes the same: a ``BREAK`` marker is
a row like any other, so inside brackets its weight is multiplied too (``(a BREAK b)`` gives
``("BREAK", -1.1)``) and then it is no longer a break but the word "BREAK" with a negative weight
(A1111 breaks only on ``("BREAK", -1)``); a marker next to text of weight -1 merges into it.
A weight may have spaces around it (``(cat: 1.2 )``), as in A1111 since 1.6.

>>> parse_prompt_attention("an (important) word")
[('an ', 1.0), ('important', 1.1), (' word', 1.0)]
>>> plain_text("a (glasses:1.0), \\\\(x\\\\)")
'a glasses, (x)'
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import InputError

__all__ = ["Span", "BREAK", "parse_prompt_attention", "is_break", "has_weights", "plain_text"]

ROUND = 1.1  # "(x)"
SQUARE = 1 / 1.1  # "[x]"; A1111 multiplies by this float, it does not divide by 1.1


class Span(NamedTuple):
    """A piece of prompt text and its attention weight (``BREAK`` is ``("BREAK", -1.0)``)."""

    text: str
    weight: float

    def __repr__(self) -> str:  # as A1111's pairs read in its doctests
        return repr(tuple(self))


BREAK = Span("BREAK", -1.0)

# A "):weight)" closer: A1111 accepts any run of digits and dots after an optional sign, then
# calls float() on it, so "1.2.3" matches and is refused by float (A1111 raises there too).
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
# A run of ordinary characters: everything up to the next character with a meaning.
_PLAIN_RUN = re.compile(r"[^\\()\[\]:]+")
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ESCAPABLE = "()[]\\"


def is_break(span: Span) -> bool:
    """Whether ``span`` is the ``BREAK`` marker."""
    return span.weight == -1.0 and span.text == "BREAK"


def parse_prompt_attention(text: str, argument: str = "prompt") -> list[Span]:
    """Spans of ``text`` with their weights, as A1111's ``parse_prompt_attention`` gives them.

    Raises :class:`InputError` naming ``argument`` for a weight A1111 cannot read either
    (``(x:1.2.3)``), where A1111 itself fails with a ``ValueError``.

    >>> parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")[1]
    ('house', 1.5730000000000004)
    """
    if not isinstance(text, str):
        raise InputError(argument, text, "must be a string")
    # Mutable [text, weight] rows, BREAK markers among them as A1111 keeps them; brackets remember
    # the row where they opened.
    rows: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for row in rows[start:]:
            row[1] *= factor

    def add_text(piece: str) -> None:
        for i, part in enumerate(_BREAK_WORD.split(piece)):
            if i:
                rows.append(list(BREAK))
            rows.append([part, 1.0])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt and nxt in _ESCAPABLE:
                rows.append([nxt, 1.0])
                i += 2
            else:
                rows.append(["", 1.0])  # a lone backslash vanishes
                i += 1
        elif c == "(":
            open_round.append(len(rows))
            i += 1
        elif c == "[":
            open_square.append(len(rows))
            i += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, i)
            if m and open_round:
                try:
                    weight = float(m.group(1))
                except ValueError:
                    raise InputError(argument, text, f"emphasis weight {m.group(1)!r} is not a number") from None
                scale_from(open_round.pop(), weight)
            elif m:
                add_text(m.group(0))  # a weight with no "(" to close is plain text
            else:
                add_text(":")
            i = m.end() if m else i + 1
        elif c == ")":
            if open_round:
                scale_from(open_round.pop(), ROUND)
            else:
                add_text(")")
            i += 1
        elif c == "]":
            if open_square:
                scale_from(open_square.pop(), SQUARE)
            else:
                add_text("]")
            i += 1
        else:
            m = _PLAIN_RUN.match(text, i)
            add_text(m.group(0))
            i = m.end()

    for start in open_round:
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)
    if not rows:
        return [Span("", 1.0)]
    merged: list[list] = [rows[0]]
    for row in rows[1:]:
        if row[1] == merged[-1][1]:  # equal weights merge, a marker's -1 included (A1111 does)
            merged[-1][0] += row[0]
        else:
            merged.append(row)
    return [Span(t, w) for t, w in merged]


def has_weights(text: str) -> bool:
    """Whether ``text`` needs the weighted encoder: some weight other than 1, or a ``BREAK``."""
    spans = parse_prompt_attention(text)
    return len(spans) > 1 or spans[0].weight != 1.0 or is_break(spans[0])


def plain_text(text: str) -> str:
    """The text CLIP reads from ``text`` when it carries no weight: the syntax removed.

    For a text without weights or ``BREAK`` this is what A1111 tokenizes, so ``(glasses:1.0)`` and
    ``glasses`` give the same tokens; a text with plain characters only comes back unchanged.
    """
    return "".join(span.text for span in parse_prompt_attention(text) if not is_break(span))
