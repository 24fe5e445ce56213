"""When a negative prompt acts: step units, AUTOMATIC1111 prompt editing, the text for every step.

This module owns the *timing* of negative prompts and nothing else. It turns the user's
``negative_prompt`` / ``negative_start`` / ``negative_end`` (and extra windows) into one answer per
0-based denoising step: the negative *text* to encode at that step, or ``None`` for "off" (the
pipeline's own no-negative conditioning). Every other module (callbacks, engine, CLI, UI) takes
its timing from here, so the boundaries are defined, validated and tested in one place.

Units. A step is an ``int`` (0-based); a ``float`` in [0, 1] is a fraction of the
``N = num_inference_steps`` steps, ``k = int(f * N)``. A window ``[start, end)`` is half-open.
The third unit is a noise level, :class:`Sigma` or :class:`TimestepPercent` (ComfyUI's
``start_percent``): the negative is on at the steps whose sigma lies in ``[sigma_end, sigma_start]``,
as ComfyUI's ``ConditioningSetTimestepRange`` decides. Sigmas fall step by step, so such a bound is
a step too once the scheduler's sigmas are known: :func:`noise_level_step` finds it (``generate()``
does, before anything else sees the bound).

Prompt editing inside a negative prompt follows AUTOMATIC1111's webui exactly
(``[from:to:when]``, ``[to:when]``, ``[from::when]``, nesting, alternation ``[a|b]``); emphasis
such as ``(x:1.2)`` or ``[x]`` is kept verbatim here, another module weights it. Where A1111
silently falls back to the literal prompt on malformed syntax, :meth:`NegativeSchedule.validate`
refuses it instead.

The two ways of delaying a negative differ by one step, because A1111 keeps the text *before* a
switch while ``step <= end`` (0-based), whereas ``negative_start=k`` is off for steps ``0..k-1``:

>>> steps = a1111_texts("[:glasses:0.3]", 20)
>>> steps[:7] == [""] * 7, steps[7]
(True, 'glasses')
>>> texts = NegativeSchedule.from_args("glasses", negative_start=0.3).texts(20)
>>> texts[:6] == [None] * 6, texts[6]
(True, 'glasses')
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Iterable, Union

from negschedule.errors import InputError

__all__ = [
    "NegativeWindow",
    "NegativeSchedule",
    "resolve_step",
    "parse_step_value",
    "a1111_schedule",
    "a1111_texts",
    "check_a1111_syntax",
    "NoiseLevel",
    "Sigma",
    "TimestepPercent",
    "noise_level_step",
]


@dataclass(frozen=True)
class NoiseLevel:
    """A window bound given as a noise level instead of a step (see :class:`Sigma`, :class:`TimestepPercent`)."""

    value: float
    unit: ClassVar[str] = ""  # as the command line writes it: "sigma:3", "percent:0.2"

    def sigma(self, training_sigmas: list[float]) -> float:
        raise NotImplementedError

    def check(self, argument: str) -> None:
        raise NotImplementedError

    def __str__(self) -> str:
        # A value of the wrong type must still name itself in the error that refuses it.
        is_number = isinstance(self.value, numbers.Real) and not isinstance(self.value, bool)
        return f"{self.unit}:{self.value:g}" if is_number else f"{self.unit}:{self.value!r}"


@dataclass(frozen=True)
class Sigma(NoiseLevel):
    """A noise level in k-diffusion's sigma, ``sqrt((1 - alpha_bar) / alpha_bar)`` (A1111's "minimum sigma" unit)."""

    unit: ClassVar[str] = "sigma"

    def sigma(self, training_sigmas: list[float]) -> float:
        return float(self.value)

    def check(self, argument: str) -> None:
        if not (isinstance(self.value, numbers.Real) and not isinstance(self.value, bool) and 0 <= self.value < math.inf):
            raise InputError(argument, str(self), "a sigma must be a number >= 0")


@dataclass(frozen=True)
class TimestepPercent(NoiseLevel):
    """ComfyUI's ``start_percent`` / ``end_percent``: a point of the model's training-timestep range.

    0 is the noisiest end (every step lies after it), 1 the clean end. In between, as ComfyUI's
    ``ModelSamplingDiscrete.percent_to_sigma`` reads it, the sigma at the fractional training
    timestep ``(1 - p) * 999``, log-sigma interpolated between the two integer timesteps around it.
    """

    unit: ClassVar[str] = "percent"

    def sigma(self, training_sigmas: list[float]) -> float:
        p = float(self.value)
        if p <= 0.0:
            return math.inf
        if p >= 1.0:
            return 0.0
        # ComfyUI writes 999.0 whatever the schedule's length; clamped as it clamps.
        t = min(max((1.0 - p) * 999.0, 0.0), len(training_sigmas) - 1.0)
        low, high = math.floor(t), math.ceil(t)
        w = t - low
        return math.exp((1 - w) * math.log(training_sigmas[low]) + w * math.log(training_sigmas[high]))

    def check(self, argument: str) -> None:
        if not (isinstance(self.value, numbers.Real) and not isinstance(self.value, bool) and 0 <= self.value <= 1):
            raise InputError(argument, str(self), "a timestep percent must lie in [0, 1]")


def noise_level_step(bound: NoiseLevel, step_sigmas: list[float], training_sigmas: list[float], is_end: bool) -> int:
    """The step a noise-level bound falls on, given each step's sigma (falling) and the training sigmas.

    A start at sigma ``s`` turns the negative on at the first step with sigma <= ``s``; an end at
    ``s`` turns it off at the first step with sigma < ``s`` - both ends inclusive in sigma, as
    ComfyUI's conditioning range is (a cond acts while ``sigma_end <= sigma <= sigma_start``).
    """
    s = bound.sigma(training_sigmas)
    if is_end:
        return sum(1 for sigma in step_sigmas if sigma >= s)
    return sum(1 for sigma in step_sigmas if sigma > s)


StepValue = Union[int, float]


# --------------------------------------------------------------------------------------------
# Step units
# --------------------------------------------------------------------------------------------


def _check_num_steps(num_inference_steps: object) -> int:
    # bool is an int subclass; True steps is a bug in the caller, not one step.
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise InputError("num_inference_steps", num_inference_steps, "must be a positive int")
    if num_inference_steps <= 0:
        raise InputError("num_inference_steps", num_inference_steps, "must be a positive int")
    return int(num_inference_steps)


def resolve_step(value: StepValue, num_inference_steps: int, argument: str) -> int:
    """Resolve a step value to a 0-based step index in ``[0, num_inference_steps]``.

    An ``int`` is a step and stays as it is; a ``float`` in [0, 1] is a fraction of the steps,
    ``int(value * num_inference_steps)`` (truncation, so ``0.3`` of 20 is 6; beware that float
    rounding makes ``0.29 * 100`` give 28, the same arithmetic A1111 uses). ``N`` itself is
    allowed (a start at ``N`` never acts, an end at ``N`` runs to the last step). Anything else
    raises :class:`InputError` naming ``argument``.
    """
    n = _check_num_steps(num_inference_steps)
    if isinstance(value, bool):
        raise InputError(argument, value, "must be an int step or a float fraction, not a bool")
    if isinstance(value, NoiseLevel):
        raise InputError(argument, str(value), "a noise level becomes a step only against a scheduler's sigmas: "
                                               "give it to generate(), which resolves it")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise InputError(argument, value, "a step must be >= 0")
        if value > n:
            raise InputError(argument, value, f"step is past num_inference_steps={n}")
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        # Written so that NaN fails too.
        if not (0.0 <= f <= 1.0):
            raise InputError(
                argument, value, "a float is a fraction of the steps and must lie in [0, 1] (an int is a step)"
            )
        return int(f * n)
    raise InputError(argument, value, "must be an int step or a float fraction in [0, 1]")


_INT_TEXT = re.compile(r"[0-9]+")
_FRACTION_TEXT = re.compile(r"[0-9]+\.[0-9]*|\.[0-9]+")


def parse_step_value(text: str, argument: str = "negative_start") -> StepValue:
    """Parse a command-line step value: ``"5"`` is step 5, a decimal point makes a fraction.

    ``"0.2"`` is 20 % of the steps and ``"1.0"`` is all of them, while ``"1"`` is step 1: the
    decimal point, not the magnitude, decides the unit, so that ``1`` and ``1.0`` cannot be
    confused silently. Signs, exponents, ``nan``/``inf`` and fractions above 1 raise
    :class:`InputError` naming ``argument``.
    """
    if not isinstance(text, str):
        raise InputError(argument, text, "must be a string")
    stripped = text.strip()
    unit, sep, number = stripped.partition(":")
    if sep and unit.strip().lower() in ("sigma", "percent"):
        try:
            value = float(number)
        except ValueError:
            raise InputError(argument, text, f"expected a number after '{unit}:'") from None
        level = Sigma(value) if unit.strip().lower() == "sigma" else TimestepPercent(value)
        level.check(argument)
        return level
    if _INT_TEXT.fullmatch(stripped):
        return int(stripped)
    if _FRACTION_TEXT.fullmatch(stripped):
        value = float(stripped)
        if value > 1.0:
            raise InputError(
                argument, text, "a value with a decimal point is a fraction and must lie in [0, 1] (write an int for a step)"
            )
        return value
    raise InputError(argument, text, "expected a step (e.g. 5), a fraction with a decimal point (e.g. 0.2), "
                                     "sigma:S or percent:P (a noise level, ComfyUI's timestep percent)")


# --------------------------------------------------------------------------------------------
# AUTOMATIC1111 prompt editing
# --------------------------------------------------------------------------------------------
#
# A1111 parses with a lark Earley grammar whose top level is a sequence of "prompts" and runs of
# stray ``[ ] ( ) :`` characters, and falls back to the literal prompt when the parse fails. This
# is an independent recursive-descent parser for the same language. Inside a construct there is no
# stray fallback: every ``[`` / ``(`` there must open a well-formed group, or the enclosing
# construct fails. Each group parses in at most one way, so the only real choice is at the top
# level: whether a ``[`` opens a construct or is a stray character. We take the construct wherever
# one parses, outermost first, which is what lark's ambiguity resolution does except in the "tied"
# prompts described at ``_reading_is_tied`` (there A1111 itself is arbitrary and we refuse).


@dataclass(frozen=True)
class _Scheduled:
    """``[before:after:when]``; ``before`` is None for the two-part form ``[after:when]``."""

    before: tuple | None
    after: tuple
    when: str  # the number as written: A1111 decides fraction vs step by the presence of "."


@dataclass(frozen=True)
class _Alternate:
    """``[a|b|...]``: one option per sampling step, cycling."""

    options: tuple


# A node sequence ("prompt") is a tuple of str | _Scheduled | _Alternate.

# lark's SIGNED_NUMBER: what A1111 accepts as the "when" of a scheduled construct.
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_WHEN = re.compile(r"\s*(" + _NUMBER + r")\s*\]")
# Characters that end a node sequence (they belong to an enclosing construct).
_SEQUENCE_END = frozenset(":|])")
# Characters A1111's top level also accepts one by one outside any group.
_STRAY = frozenset("[]():")


class _ParseFailure(Exception):
    """The prompt is not in A1111's grammar: A1111 would use it literally."""


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self._groups: dict[int, tuple[tuple, int] | None] = {}

    def top(self) -> tuple:
        """The whole prompt; stray brackets, parentheses and colons are literal text here."""
        s, i, out = self.text, 0, []
        while i < len(s):
            c = s[i]
            if c == "[":
                parsed = self.group(i)
                if parsed is None:
                    out.append("[")
                    i += 1
                else:
                    node, i = parsed
                    out.extend(node)
            elif c in "]():":
                # "(" needs no attempt at an emphasis group: its content parses the same way at
                # the top level, and emphasis keeps its characters verbatim anyway.
                out.append(c)
                i += 1
            elif c == "|":
                # Not a stray character in A1111's grammar: the whole parse fails.
                raise _ParseFailure(i)
            else:
                piece, i = self._plain(i)
                out.append(piece)
        return _merge(out)

    def _plain(self, i: int) -> tuple[str, int]:
        s = self.text
        if s[i] == "\\":
            # An escape takes the next character verbatim (the emphasis parser unescapes it later);
            # a backslash at the end or before a newline is outside the grammar.
            if i + 1 >= len(s) or s[i + 1] == "\n":
                raise _ParseFailure(i)
            return s[i : i + 2], i + 2
        return s[i], i + 1

    def item(self, i: int) -> tuple[tuple, int] | None:
        """One element of a node sequence at ``i``; None where a sequence must end."""
        c = self.text[i]
        if c in _SEQUENCE_END:
            return None
        if c in "[(":
            return self.group(i)
        piece, j = self._plain(i)
        return (piece,), j

    def group(self, i: int) -> tuple[tuple, int] | None:
        """The group opened at ``i`` (memoized: a group's parse does not depend on context)."""
        if i not in self._groups:
            self._groups[i] = self._bracket(i) if self.text[i] == "[" else self._paren(i)
        return self._groups[i]

    def _sequence(self, i: int) -> tuple[tuple, int] | None:
        """Nodes up to the next ``: | ] )`` at this level; None if a group inside is malformed."""
        s, out = self.text, []
        while i < len(s) and s[i] not in _SEQUENCE_END:
            parsed = self.item(i)
            if parsed is None:
                return None
            node, i = parsed
            out.extend(node)
        return _merge(out), i

    def _paren(self, i: int) -> tuple[tuple, int] | None:
        # (x) or (x:y): kept verbatim, but its content must parse for an enclosing construct to.
        s = self.text
        first = self._sequence(i + 1)
        if first is None:
            return None
        inner, j = first
        if j < len(s) and s[j] == ")":
            return ("(", *inner, ")"), j + 1
        if j < len(s) and s[j] == ":":
            second = self._sequence(j + 1)
            if second is None:
                return None
            weight, k = second
            if k < len(s) and s[k] == ")":
                return ("(", *inner, ":", *weight, ")"), k + 1
        return None

    def _bracket(self, i: int) -> tuple[tuple, int] | None:
        """A construct opened by the ``[`` at ``i``, or None when none parses there."""
        s = self.text
        first = self._sequence(i + 1)
        if first is None:
            return None
        head, j = first
        if j >= len(s):
            return None
        if s[j] == "]":  # [x]: de-emphasis, verbatim
            return ("[", *head, "]"), j + 1
        if s[j] == "|":
            options = [head]
            while j < len(s) and s[j] == "|":
                option = self._sequence(j + 1)
                if option is None:
                    return None
                body, j = option
                options.append(body)
            if j < len(s) and s[j] == "]":
                return (_Alternate(tuple(options)),), j + 1
            return None
        if s[j] == ":":
            # [to:when] and [from:to:when] cannot both match here: "when ]" has no ":" after it.
            m = _WHEN.match(s, j + 1)
            if m:
                return (_Scheduled(None, head, m.group(1)),), m.end()
            second = self._sequence(j + 1)
            if second is None:
                return None
            after, k = second
            if k < len(s) and s[k] == ":":
                m = _WHEN.match(s, k + 1)
                if m:
                    return (_Scheduled(head, after, m.group(1)),), m.end()
        return None


def _merge(nodes: Iterable) -> tuple:
    """Join adjacent strings so trees compare and cache cheaply."""
    out: list = []
    for node in nodes:
        if isinstance(node, str) and out and isinstance(out[-1], str):
            out[-1] += node
        else:
            out.append(node)
    return tuple(out)


def _bits(mask: int):
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _reading_is_tied(parser: _Parser) -> bool:
    """Whether A1111 reads this prompt arbitrarily: its parser has to break a tie.

    Almost every top-level construct can also be read as stray characters, and lark (ambiguity
    "resolve") picks a reading from the right end: for each prefix ``[0, m)`` it prefers the prefix
    as one whole prompt, then a prefix that ends in a prompt, then one that ends in a run of stray
    characters, and among equally preferred splits it takes whichever its Earley sets hold first.
    That last choice is an implementation detail: with lark 1.1.2, which A1111 pins, those sets
    are unordered and the choice varies from one process to the next. It only matters when a run of stray
    characters touches the ``]`` of a construct, as in ``[a:3]::`` or ``[a:3]:``. We model the
    preference over all prefixes, tracking which scheduling/alternation constructs each reading
    keeps, and report a tie when equally preferred readings keep different ones.
    """
    s, n = parser.text, len(parser.text)
    escaped = [False] * n  # second character of a backslash pair: never starts anything
    i = 0
    while i < n:
        if s[i] == "\\":
            if i + 1 < n:
                escaped[i + 1] = True
            i += 2
        else:
            i += 1
    nxt: list[int | None] = [None] * (n + 1)  # end of the sequence element starting at p
    relevant = 0  # bit p: a scheduled or alternation construct starts at p
    for p in range(n):
        if escaped[p]:
            continue
        try:
            parsed = parser.item(p)
        except _ParseFailure:
            parsed = None
        if parsed is not None:
            nxt[p] = parsed[1]
            if isinstance(parsed[0][0], (_Scheduled, _Alternate)):
                relevant |= 1 << p
    # reach[p]: ends m of the prompts [p, m); gain[p]: constructs kept along p's chain to its end.
    reach, gain = [0] * (n + 1), [0] * (n + 1)
    reach[n] = 1 << n
    for p in range(n - 1, -1, -1):
        e = nxt[p]
        if e is None:
            reach[p] = 1 << p
        else:
            reach[p] = (1 << p) | reach[e]
            gain[p] = (relevant & ((1 << e) - (1 << p))) | gain[e]
    into = [1 << m for m in range(n + 1)]  # into[m]: starts k of the prompts [k, m)
    for p in range(n):
        if nxt[p] is not None:
            into[nxt[p]] |= into[p]
    run_start = list(range(n + 1))  # start of the run of stray characters ending at m
    for m in range(1, n + 1):
        if s[m - 1] in _STRAY and not escaped[m - 1]:
            run_start[m] = run_start[m - 1]
    derivable = 1  # bit m: the prefix [0, m) is in the top-level language
    for m in range(1, n + 1):
        if derivable & ((into[m] & ~(1 << m)) | ((1 << m) - (1 << run_start[m]))):
            derivable |= 1 << m
    tied = object()
    kept: dict[int, object] = {0: 0}
    for m in range(1, n + 1):
        if not derivable >> m & 1:
            continue
        if reach[0] >> m & 1:
            kept[m] = gain[0] & ~gain[m]
            continue
        if run_start[m] == 0:  # all stray characters: no construct in it
            kept[m] = 0
            continue
        ends_in_prompt = derivable & into[m] & ~(1 << m) & ~1
        if ends_in_prompt:
            choices = {
                kept[k] if kept[k] is tied else kept[k] | (gain[k] & ~gain[m])  # type: ignore[operator]
                for k in _bits(ends_in_prompt)
            }
        else:
            choices = {kept[k] for k in _bits(derivable & ((1 << m) - (1 << max(run_start[m], 1))))}
        kept[m] = choices.pop() if len(choices) == 1 else tied
    return kept.get(n) is tied


@dataclass(frozen=True)
class _Parsed:
    tree: tuple | None  # None: not in A1111's grammar, A1111 uses the prompt literally
    tied: bool  # A1111's reading is arbitrary (see _reading_is_tied)


@lru_cache(maxsize=256)
def _parse(prompt: str) -> _Parsed:
    parser = _Parser(prompt)
    try:
        tree = parser.top()
    except _ParseFailure:
        return _Parsed(None, False)
    whole = parser._sequence(0)
    # A prompt that is one valid sequence, or has nothing to schedule, reads only one way.
    tied = (whole is None or whole[1] != len(prompt)) and any(True for _ in _walk(tree)) and _reading_is_tied(parser)
    return _Parsed(tree, tied)


def _walk(nodes: tuple):
    """Every scheduled and alternation node, nested ones included."""
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _when_step(when: str, steps: int) -> int:
    # A1111: a "." anywhere in the number makes it a fraction (so "1.5" is 150 % and clamps to the
    # end, while "1e1" is step 10); then truncate and clamp to the step count.
    value = float(when)
    if "." in when:
        value *= steps
    if not math.isfinite(value):
        # int(inf) raises OverflowError inside A1111 itself; there is no behaviour to reproduce.
        raise InputError("negative_prompt", when, "prompt-editing step is not a finite number")
    return min(steps, int(value))


def _render(nodes: tuple, step: int, whens: dict) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            if step <= whens[node.when]:
                parts.append("" if node.before is None else _render(node.before, step, whens))
            else:
                parts.append(_render(node.after, step, whens))
        else:
            # A1111 schedules count steps from 1 here.
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, whens))
    return "".join(parts)


def a1111_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """AUTOMATIC1111's prompt schedule for one prompt: ``[(end_at_step, text), ...]``.

    The same result as A1111's ``get_learned_conditioning_prompt_schedules([prompt], steps)[0]``
    (current scheduling, no hires fix), as tuples. Each text holds while the sampling step is
    ``<= end_at_step``; the last entry ends at ``steps``. A ``when`` containing ``"."`` is a
    fraction (``int(when * steps)``), otherwise a step; it is clamped to ``steps`` and switch
    points below 1 are not listed. Alternation adds every step 1..steps. Like A1111, a prompt
    outside the grammar comes back literally as ``[(steps, prompt)]``; :func:`check_a1111_syntax`
    refuses such prompts instead, and also the rare ones A1111 reads arbitrarily (where we keep
    the construct).

    >>> a1111_schedule("a [b:c:2] d", 10)
    [(2, 'a b d'), (10, 'a c d')]
    """
    steps = _check_num_steps(steps)
    parsed = _parse(prompt)
    if parsed.tree is None:
        return [(steps, prompt)]
    nodes = list(_walk(parsed.tree))
    whens = {n.when: _when_step(n.when, steps) for n in nodes if isinstance(n, _Scheduled)}
    boundaries = {steps} | {w for w in whens.values() if w >= 1}
    if any(isinstance(n, _Alternate) for n in nodes):
        boundaries.update(range(1, steps + 1))
    return [(t, _render(parsed.tree, t, whens)) for t in sorted(boundaries)]


def a1111_texts(prompt: str, steps: int) -> list[str]:
    """The A1111 text of ``prompt`` at every 0-based sampling step ``0..steps-1``.

    Picked the way A1111's ``reconstruct_cond_batch`` picks: the first schedule entry with
    ``step <= end_at_step``. Steps 0 and 1 therefore always share a text (alternation included:
    ``[a|b]`` gives ``a, a, b, a, b, ...``), faithfully to A1111.

    >>> a1111_texts("[a|b]", 5)
    ['a', 'a', 'b', 'a', 'b']
    """
    schedule = a1111_schedule(prompt, steps)
    texts, entry = [], 0
    for step in range(steps):
        while step > schedule[entry][0]:
            entry += 1
        texts.append(schedule[entry][1])
    return texts


def _square_groups(prompt: str, argument: str) -> dict[int, int]:
    """Matching unescaped square brackets, open -> close; InputError if they do not balance."""
    stack, pairs, i = [], {}, 0
    while i < len(prompt):
        c = prompt[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            stack.append(i)
        elif c == "]":
            if not stack:
                raise InputError(argument, prompt, f"unbalanced ']' at position {i} (write \\] for a literal one)")
            pairs[stack.pop()] = i
        i += 1
    if stack:
        raise InputError(argument, prompt, f"unbalanced '[' at position {stack[-1]} (write \\[ for a literal one)")
    return pairs


def _failed_group_reason(content: str) -> str | None:
    """Why a square group A1111 cannot parse is an error; None when it is only emphasis with
    lenient round brackets, like ``[(x]`` (A1111 keeps it literally, the emphasis parser copes)."""
    # ":" and "|" of this group itself: outside nested square groups and closed round pairs.
    depth, open_rounds, marks, rounds_balanced, i = 0, [], [], True, 0
    closed: list[tuple[int, int]] = []
    while i < len(content):
        c = content[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif depth == 0:
            if c == "(":
                open_rounds.append(i)
            elif c == ")":
                if open_rounds:
                    closed.append((open_rounds.pop(), i))
                else:
                    rounds_balanced = False
            elif c in ":|":
                marks.append((i, c))
        i += 1
    rounds_balanced = rounds_balanced and not open_rounds
    marks = [(p, c) for p, c in marks if not any(a < p < b for a, b in closed)]  # e.g. [(ugly:1.2)]
    colons = [p for p, c in marks if c == ":"]
    pipes = [p for p, c in marks if c == "|"]
    if not colons and not pipes:
        return None
    if colons and pipes:
        return f"[{content}] mixes alternation '|' and scheduling ':'"
    if pipes:
        if not rounds_balanced:
            return f"[{content}]: unbalanced round bracket inside an alternation"
        return f"[{content}] is not a valid alternation"
    if len(colons) > 2:
        return f"[{content}] has {len(colons)} ':'; prompt editing is [from:to:when], [to:when] or [from::when]"
    when = content[colons[-1] + 1 :].strip()
    if not re.fullmatch(_NUMBER, when):
        return f"[{content}]: when={when!r} is not a non-negative number"
    if not rounds_balanced:
        return f"[{content}]: unbalanced round bracket inside a scheduled construct"
    return f"[{content}] is not valid prompt-editing syntax (round brackets inside must read (x) or (x:y))"


def _group_fails(parser: _Parser, open_at: int) -> bool:
    try:
        return parser.group(open_at) is None
    except _ParseFailure:  # a backslash before a newline inside it
        return True


def check_a1111_syntax(prompt: str, argument: str = "negative_prompt") -> None:
    """Refuse prompt-editing syntax that A1111 would silently take literally, or read arbitrarily.

    Raises :class:`InputError` naming ``argument`` for: unbalanced (unescaped) square brackets;
    a square group that attempts scheduling or alternation but is not well-formed (``[a:b:x]``,
    ``[a:b:]``, ``[a:b]``, ``[a:b:c:3]``, ``[a|b:3]``, an unbalanced round bracket inside one);
    a negative or non-finite ``when``; any other prompt with square brackets outside A1111's
    grammar (e.g. a ``|`` outside ``[a|b]``); and a stray ``:``, ``(``, ``)`` or ``]`` run
    touching a construct in a way A1111's parser resolves arbitrarily (``[a:3]:``). Emphasis
    stays lenient: unbalanced round brackets outside prompt editing, ``[(x]``, and prompts with
    no square brackets at all (a bare ``|`` or a trailing backslash: A1111 uses those literally,
    exactly as written) pass.
    """
    if not isinstance(prompt, str):
        raise InputError(argument, prompt, "must be a string")
    pairs = _square_groups(prompt, argument)
    parsed = _parse(prompt)
    # Groups that parse as nothing; the innermost one with a reason is the root cause.
    parser = _Parser(prompt)
    failing = sorted((close - open_, open_) for open_, close in pairs.items() if _group_fails(parser, open_))
    for _, open_at in failing:
        reason = _failed_group_reason(prompt[open_at + 1 : pairs[open_at]])
        if reason is not None:
            raise InputError(argument, prompt, reason)
    if parsed.tree is None:
        if pairs:
            # A1111 would drop every construct in it and encode the brackets literally.
            raise InputError(
                argument,
                prompt,
                "outside A1111's grammar (a '|' outside [a|b], or a lone backslash), so A1111 would ignore its prompt editing",
            )
        return
    for node in _walk(parsed.tree):
        if isinstance(node, _Scheduled):
            if node.when.startswith("-"):
                raise InputError(argument, prompt, f"prompt-editing when={node.when!r} is negative")
            if not math.isfinite(float(node.when)):
                raise InputError(argument, prompt, f"prompt-editing when={node.when!r} is not finite")
    if parsed.tied:
        raise InputError(
            argument,
            prompt,
            "a stray ':', '(', ')' or ']' touches prompt editing, so A1111 may or may not apply it "
            "(its parser breaks a tie arbitrarily); separate them with a space",
        )


# --------------------------------------------------------------------------------------------
# Windows and the schedule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NegativeWindow:
    """One negative prompt and the half-open window ``[start, end)`` of steps where it acts."""

    prompt: str  # may contain A1111 prompt editing, resolved with A1111's steps = N
    start: StepValue | NoiseLevel = 0  # int: 0-based step; float in [0, 1]: fraction, k = int(f * N); or a noise level
    end: StepValue | NoiseLevel | None = None  # exclusive, same units; None: until the last step


@dataclass(frozen=True)
class NegativeSchedule:
    """Which negative text acts at each step: the union of its windows.

    Several windows active at one step join their texts with ``", "`` in window order; a step
    whose joined text is empty or whitespace is "off" (``None``).
    """

    windows: tuple[NegativeWindow, ...] = ()

    def __post_init__(self):
        # Accept any iterable (a list from a config file) but keep the dataclass hashable.
        object.__setattr__(self, "windows", tuple(self.windows))

    @classmethod
    def from_args(
        cls,
        negative_prompt: str | None,
        negative_start: StepValue | None = None,
        negative_end: StepValue | None = None,
        windows: Iterable[NegativeWindow | tuple] = (),
    ) -> "NegativeSchedule":
        """Build a schedule from the pipeline-style arguments.

        ``negative_prompt`` with neither bound acts on every step ``[0, N)``; ``negative_start``
        or ``negative_end`` without a negative prompt is an error (there is nothing to time).
        ``windows`` appends further :class:`NegativeWindow` objects or ``(prompt, start, end)``
        tuples (``start`` and ``end`` optional). Syntax and types are checked here; the bounds,
        which need ``N``, in :meth:`validate`.
        """
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InputError("negative_prompt", negative_prompt, "must be a string or None")
        built: list[NegativeWindow] = []
        if negative_prompt:
            built.append(NegativeWindow(negative_prompt, 0 if negative_start is None else negative_start, negative_end))
        elif negative_start is not None:
            raise InputError("negative_start", negative_start, "needs a negative_prompt")
        elif negative_end is not None:
            raise InputError("negative_end", negative_end, "needs a negative_prompt")
        for item in windows:
            if isinstance(item, NegativeWindow):
                built.append(item)
            elif isinstance(item, tuple) and 1 <= len(item) <= 3:
                built.append(NegativeWindow(*item))
            else:
                raise InputError("windows", item, "expected a NegativeWindow or a (prompt, start, end) tuple")
        schedule = cls(tuple(built))
        schedule._check_windows(None)
        return schedule

    def _check_windows(self, n: int | None) -> None:
        """Types and syntax of every window, and its bounds when ``N`` is known."""
        for index, window in enumerate(self.windows):
            if not isinstance(window, NegativeWindow):
                raise InputError("windows", window, "expected a NegativeWindow")
            try:
                if not isinstance(window.prompt, str):
                    raise InputError("negative_prompt", window.prompt, "must be a string")
                check_a1111_syntax(window.prompt)
                if n is not None:
                    self._bounds(window, n)
                    a1111_schedule(window.prompt, n)  # a "when" that overflows only shows against N
            except InputError as error:
                if len(self.windows) == 1:
                    raise
                # With several windows, say which one.
                raise InputError(error.argument, error.value, f"window {index}: {error.reason}") from None

    def _bounds(self, window: NegativeWindow, n: int) -> tuple[int, int]:
        start = resolve_step(window.start, n, "negative_start")
        if window.end is None:
            # Only an explicit end must lie after the start: start == N with no end is the
            # legitimate "never acts" case.
            return start, n
        end = resolve_step(window.end, n, "negative_end")
        if end <= start:
            raise InputError(
                "negative_end", window.end, f"resolves to step {end}, not after negative_start (step {start}) at {n} steps"
            )
        return start, end

    def validate(self, num_inference_steps: int) -> None:
        """Raise :class:`InputError` for any bad bound or prompt, before any work starts."""
        self._check_windows(_check_num_steps(num_inference_steps))

    def texts(self, num_inference_steps: int) -> list[str | None]:
        """The negative text for each 0-based step; ``None`` where the negative is off."""
        self.validate(num_inference_steps)
        n = int(num_inference_steps)
        per_step: list[list[str]] = [[] for _ in range(n)]
        for window in self.windows:
            start, end = self._bounds(window, n)
            if start >= end:
                continue
            texts = a1111_texts(window.prompt, n)
            for step in range(start, end):
                if texts[step].strip():
                    per_step[step].append(texts[step])
        return [", ".join(parts) if parts else None for parts in per_step]

    def distinct_texts(self, num_inference_steps: int) -> list[str]:
        """Each distinct active text once, in order of first use: what needs encoding."""
        return list(dict.fromkeys(t for t in self.texts(num_inference_steps) if t is not None))
