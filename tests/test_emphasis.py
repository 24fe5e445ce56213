"""A1111 emphasis parsing: the examples from A1111's own ``parse_prompt_attention`` doctest, and more."""

from __future__ import annotations

import doctest

import pytest

import negschedule.emphasis as emphasis
from negschedule.emphasis import BREAK, has_weights, parse_prompt_attention, plain_text
from negschedule.errors import InputError


def spans(text):
    return [tuple(s) for s in parse_prompt_attention(text)]


# A1111's doctest examples (modules/prompt_parser.py), with their results as A1111 prints them.
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
]


@pytest.mark.parametrize("text, expected", A1111_EXAMPLES, ids=[t for t, _ in A1111_EXAMPLES])
def test_a1111_doctest_examples_exactly(text, expected):
    got = spans(text)
    assert got == expected  # float equality: the same multiplications in the same order


def test_module_doctests():
    assert doctest.testmod(emphasis).failed == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(text)", [("text", 1.1)]),
        ("((text))", [("text", 1.1 * 1.1)]),
        ("[text]", [("text", 1 / 1.1)]),
        ("[[text]]", [("text", (1 / 1.1) * (1 / 1.1))]),
        ("(text:1.4)", [("text", 1.4)]),
        ("(worst quality:1.4), (low quality:1.4)", [("worst quality", 1.4), (", ", 1.0), ("low quality", 1.4)]),
        ("((a:1.2))", [("a", 1.2 * 1.1)]),
        ("(a:-0.5)", [("a", -0.5)]),
        ("(a:+2)", [("a", 2.0)]),
        ("(a:1.)", [("a", 1.0)]),
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
        ("a) b] c:", [("a) b] c:", 1.0)]),  # stray closers and colons are text
        ("x:1.2) y", [("x:1.2) y", 1.0)]),  # a weight with no "(" to close is text
        ("[a:1.2)", [("a:1.2)", 1 / 1.1)]),
        ("\\(x\\) \\[y\\] \\\\", [("(x) [y] \\", 1.0)]),
        ("a\\b", [("ab", 1.0)]),  # a lone backslash vanishes
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
        ("(a:1.0)", [("a", 1.0)]),
    ],
)
def test_weights_per_span(text, expected):
    assert spans(text) == expected


def test_break_splits_and_is_a_marker():
    assert spans("a BREAK b") == [("a", 1.0), tuple(BREAK), ("b", 1.0)]
    assert spans("a, BREAK\n(b)") == [("a,", 1.0), tuple(BREAK), ("", 1.0), ("b", 1.1)]
    # Only the whole word in capitals breaks.
    assert spans("BREAKFAST break") == [("BREAKFAST break", 1.0)]
    assert spans("a BREAK BREAK b") == [("a", 1.0), tuple(BREAK), ("", 1.0), tuple(BREAK), ("b", 1.0)]


def test_break_inside_brackets_is_weighted_as_a1111_weights_it():
    # A1111 multiplies the marker's -1 too; ("BREAK", -1.1) is then no break but the word, weighted.
    assert spans("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.0 * 1.1), ("b", 1.1)]
    assert spans("[a BREAK]") == [("a", 1 / 1.1), ("BREAK", -1.0 * (1 / 1.1)), ("", 1 / 1.1)]
    assert spans("(x:-1)BREAK y") == [("x", -1.0), ("", 1.0), tuple(BREAK), ("y", 1.0)]


def test_weight_may_have_spaces_around_it():
    # A1111 1.6+ reads ":\s*number\s*)" as the weight.
    assert spans("(cat: 1.2 )") == [("cat", 1.2)]
    assert spans("(cat:1.2 ) dog") == [("cat", 1.2), (" dog", 1.0)]
    assert spans("(cat :1.2)") == [("cat ", 1.2)]


def test_weight_that_is_not_a_number_is_refused():
    with pytest.raises(InputError) as err:
        parse_prompt_attention("(a:1.2.3)", "negative_prompt")
    assert err.value.argument == "negative_prompt"
    with pytest.raises(InputError):
        parse_prompt_attention("(a:.)")


@pytest.mark.parametrize(
    "text, weighted",
    [
        ("plain text, no syntax", False),
        ("(glasses:1.0)", False),
        ("\\(literal\\)", False),
        ("a [(b)] c", False),  # 1.1 * (1 / 1.1) == 1.0 exactly in floats
        ("(glasses)", True),
        ("[glasses]", True),
        ("(glasses:1.3)", True),
        ("a BREAK b", True),
    ],
)
def test_has_weights(text, weighted):
    assert has_weights(text) is weighted


def test_plain_text():
    assert plain_text("a (glasses:1.0), \\(x\\)") == "a glasses, (x)"
    assert plain_text("plain: text, with a colon") == "plain: text, with a colon"
