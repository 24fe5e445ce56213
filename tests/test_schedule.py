"""Tests for negschedule.schedule: step units, every window boundary, A1111 prompt editing.

The A1111 expectations are facts about AUTOMATIC1111's modules/prompt_parser.py (its doctests and
the example in its header comment, current scheduling, no hires fix), checked against its actual
behaviour, not derived from our implementation.
"""

from __future__ import annotations

import contextlib
import doctest

import pytest

from negschedule import schedule as schedule_module
from negschedule.errors import InputError
from negschedule.schedule import (
    NegativeSchedule,
    NegativeWindow,
    a1111_schedule,
    a1111_texts,
    check_a1111_syntax,
    parse_step_value,
    resolve_step,
)


def texts_of(prompt, start=None, end=None, steps=10, windows=()):
    return NegativeSchedule.from_args(prompt, start, end, windows).texts(steps)


@contextlib.contextmanager
def raises_input_error(argument):
    """Like pytest.raises(InputError), and the error must name ``argument``."""
    with pytest.raises(InputError) as info:
        yield info
    assert info.value.argument == argument, str(info.value)


# ------------------------------------------------------------------------------ module docs


def test_module_doctests_pass():
    result = doctest.testmod(schedule_module)
    assert result.attempted >= 5
    assert result.failed == 0


# ------------------------------------------------------------------------------ parse_step_value


@pytest.mark.parametrize(
    "text, expected",
    [("5", 5), ("0", 0), (" 12 ", 12), ("0.2", 0.2), ("1.0", 1.0), ("0.0", 0.0), (".5", 0.5), ("1.", 1.0)],
)
def test_parse_step_value(text, expected):
    value = parse_step_value(text)
    assert value == expected
    assert type(value) is type(expected)  # the decimal point decides the unit


def test_parse_step_value_one_is_a_step_and_one_point_zero_is_everything():
    assert parse_step_value("1") == 1 and isinstance(parse_step_value("1"), int)
    assert parse_step_value("1.0") == 1.0 and isinstance(parse_step_value("1.0"), float)
    assert resolve_step(parse_step_value("1"), 20, "negative_start") == 1
    assert resolve_step(parse_step_value("1.0"), 20, "negative_start") == 20


@pytest.mark.parametrize("text", ["", "abc", "-1", "+1", "1.5", "2.0", "1e3", "nan", "inf", "0x10", "1_0", "0.2.3"])
def test_parse_step_value_rejects(text):
    with raises_input_error("negative_end"):
        parse_step_value(text, "negative_end")


def test_parse_step_value_names_negative_start_by_default():
    with raises_input_error("negative_start"):
        parse_step_value("x")
    with raises_input_error("negative_start"):
        parse_step_value(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ resolve_step


@pytest.mark.parametrize(
    "value, n, expected",
    [(0, 20, 0), (5, 20, 5), (20, 20, 20), (0.0, 20, 0), (1.0, 20, 20), (0.3, 20, 6), (0.2, 20, 4), (0.5, 3, 1)],
)
def test_resolve_step(value, n, expected):
    assert resolve_step(value, n, "negative_start") == expected


def test_resolve_step_truncates_like_int():
    # 0.29 * 100 == 28.999999999999996: int() truncates, the same arithmetic A1111 uses.
    assert resolve_step(0.29, 100, "negative_start") == 28
    assert a1111_schedule("[a:b:0.29]", 100) == [(28, "a"), (100, "b")]


def test_resolve_step_accepts_numpy_scalars():
    np = pytest.importorskip("numpy")
    assert resolve_step(np.int64(3), 10, "negative_start") == 3
    assert resolve_step(np.float64(0.5), 10, "negative_start") == 5


@pytest.mark.parametrize("value", [21, -1, True, False, 1.5, -0.1, float("nan"), float("inf"), "5", None, 5j])
def test_resolve_step_rejects(value):
    with raises_input_error("negative_end"):
        resolve_step(value, 20, "negative_end")


@pytest.mark.parametrize("n", [0, -1, 2.0, True, "20", None])
def test_num_inference_steps_must_be_a_positive_int(n):
    with raises_input_error("num_inference_steps"):
        resolve_step(0, n, "negative_start")
    with raises_input_error("num_inference_steps"):
        NegativeSchedule.from_args("x").validate(n)
    with raises_input_error("num_inference_steps"):
        a1111_schedule("x", n)


# ------------------------------------------------------------------------------ window boundaries


def test_no_bounds_acts_on_every_step():
    assert texts_of("ugly") == ["ugly"] * 10


def test_start_zero_acts_from_the_first_step():
    assert texts_of("ugly", start=0) == ["ugly"] * 10


def test_start_k_is_off_for_steps_0_to_k_minus_1():
    assert texts_of("ugly", start=3) == [None] * 3 + ["ugly"] * 7


def test_start_n_is_allowed_and_never_acts():
    assert texts_of("ugly", start=10) == [None] * 10
    assert texts_of("ugly", start=1.0) == [None] * 10


def test_start_past_n_is_an_error():
    with raises_input_error("negative_start"):
        texts_of("ugly", start=11)


def test_start_fractions():
    assert texts_of("ugly", start=0.0) == ["ugly"] * 10
    assert texts_of("ugly", start=0.3, steps=20) == [None] * 6 + ["ugly"] * 14  # int(0.3 * 20) == 6
    assert texts_of("ugly", start=0.25, steps=10) == [None] * 2 + ["ugly"] * 8  # int(2.5) == 2


def test_end_is_exclusive():
    assert texts_of("ugly", start=2, end=5) == [None, None, "ugly", "ugly", "ugly"] + [None] * 5


def test_end_n_runs_to_the_last_step():
    assert texts_of("ugly", start=4, end=10) == texts_of("ugly", start=4)
    assert texts_of("ugly", end=1.0) == ["ugly"] * 10


def test_end_fraction():
    assert texts_of("ugly", end=0.5) == ["ugly"] * 5 + [None] * 5


@pytest.mark.parametrize("start, end", [(3, 3), (5, 3), (0, 0), (0.5, 0.5), (0.5, 0.2), (10, 10), (4, 0.4)])
def test_end_not_after_start_is_an_error(start, end):
    with raises_input_error("negative_end"):
        texts_of("ugly", start=start, end=end)


def test_end_equal_to_start_after_resolution_is_an_error():
    # Both resolve to step 6 at 20 steps: an empty window is a mistake, not a silent no-op.
    with raises_input_error("negative_end"):
        texts_of("ugly", start=0.3, end=0.31, steps=20)


def test_end_past_n_is_an_error():
    with raises_input_error("negative_end"):
        texts_of("ugly", end=11)
    with raises_input_error("negative_end"):
        texts_of("ugly", end=1.01)


def test_bounds_are_checked_against_the_step_count_at_validate():
    sched = NegativeSchedule.from_args("ugly", negative_start=15)  # fine until N is known
    sched.validate(20)
    with raises_input_error("negative_start"):
        sched.validate(10)


@pytest.mark.parametrize("value", [True, -1, "3", None])
def test_bad_bound_types(value):
    with raises_input_error("negative_start"):
        NegativeSchedule((NegativeWindow("ugly", value),)).validate(10)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ from_args


def test_bounds_without_a_negative_prompt_are_errors():
    with raises_input_error("negative_start"):
        NegativeSchedule.from_args(None, negative_start=3)
    with raises_input_error("negative_start"):
        NegativeSchedule.from_args("", negative_start=0.2)
    with raises_input_error("negative_end"):
        NegativeSchedule.from_args(None, negative_end=3)


def test_no_negative_prompt_means_off_everywhere():
    sched = NegativeSchedule.from_args(None)
    assert sched.windows == ()
    assert sched.texts(4) == [None] * 4
    assert sched.distinct_texts(4) == []
    assert NegativeSchedule.from_args("").texts(3) == [None] * 3


def test_negative_prompt_must_be_a_string():
    with raises_input_error("negative_prompt"):
        NegativeSchedule.from_args(["ugly"])  # type: ignore[arg-type]


def test_windows_accept_tuples_and_windows():
    sched = NegativeSchedule.from_args(None, windows=[("a",), ("b", 2), ("c", 1, 3), NegativeWindow("d", 0.5)])
    assert sched.windows == (
        NegativeWindow("a"),
        NegativeWindow("b", 2),
        NegativeWindow("c", 1, 3),
        NegativeWindow("d", 0.5),
    )
    with raises_input_error("windows"):
        NegativeSchedule.from_args(None, windows=["not a window"])
    with raises_input_error("windows"):
        NegativeSchedule.from_args(None, windows=[("a", 0, 1, 2)])


def test_schedule_is_hashable_and_keeps_a_tuple():
    sched = NegativeSchedule([NegativeWindow("a")])  # type: ignore[arg-type]
    assert isinstance(sched.windows, tuple)
    assert hash(sched) == hash(NegativeSchedule((NegativeWindow("a"),)))


# ------------------------------------------------------------------------------ several windows


def test_overlapping_windows_join_in_window_order():
    sched = NegativeSchedule.from_args("hats", 0, 6, windows=[("glasses", 4, 8)])
    assert sched.texts(10) == ["hats"] * 4 + ["hats, glasses"] * 2 + ["glasses"] * 2 + [None] * 2
    assert sched.distinct_texts(10) == ["hats", "hats, glasses", "glasses"]


def test_window_order_not_start_order_decides_the_join():
    sched = NegativeSchedule.from_args("late", 5, windows=[("early", 0)])
    assert sched.texts(6)[5] == "late, early"


def test_empty_texts_are_skipped_when_joining():
    sched = NegativeSchedule.from_args("[:glasses:5]", windows=[("hats",)])
    texts = sched.texts(10)
    assert texts[:6] == ["hats"] * 6  # "" from the A1111 prompt does not leave a dangling ", "
    assert texts[6:] == ["glasses, hats"] * 4


def test_whitespace_only_text_is_off():
    assert texts_of("   ", steps=3) == [None] * 3
    assert texts_of("[ :glasses:1]", steps=3) == [None, None, "glasses"]  # " " before step 2


def test_a_bad_second_window_names_the_argument_and_the_window():
    with raises_input_error("negative_end") as info:
        NegativeSchedule.from_args("a", windows=[("b", 5, 2)]).validate(10)
    assert info.value.reason.startswith("window 1: ")
    with raises_input_error("negative_prompt") as info:
        NegativeSchedule.from_args("a", windows=[("[b:c:x]",)])
    assert info.value.reason.startswith("window 1: ")


def test_distinct_texts_in_order_of_first_use():
    sched = NegativeSchedule.from_args("[a|b]", 0, 4, windows=[("c", 3)])
    assert sched.texts(6) == ["a", "a", "b", "a, c", "c", "c"]
    assert sched.distinct_texts(6) == ["a", "b", "a, c", "c"]


# ------------------------------------------------------------------------------ A1111 vs negative_start


def test_a1111_fraction_switch_keeps_the_old_text_one_step_longer():
    # [:glasses:0.3] at 20 steps: "" for 0-based steps 0..6 (step <= int(0.3 * 20) = 6), glasses from 7.
    assert a1111_schedule("[:glasses:0.3]", 20) == [(6, ""), (20, "glasses")]
    assert a1111_texts("[:glasses:0.3]", 20) == [""] * 7 + ["glasses"] * 13
    assert texts_of("[:glasses:0.3]", steps=20) == [None] * 7 + ["glasses"] * 13
    # negative_start=0.3 starts at step int(0.3 * 20) = 6.
    assert texts_of("glasses", start=0.3, steps=20) == [None] * 6 + ["glasses"] * 14


def test_a1111_syntax_inside_a_window_uses_the_run_step_count():
    # The prompt is resolved with A1111's steps = N, then clipped to the window.
    expected = [None, None, "hats", "hats", "hats", "glasses", "glasses", None, None, None]
    assert texts_of("[hats:glasses:4]", start=2, end=7) == expected


# ------------------------------------------------------------------------------ A1111 doctests


def g(prompt):
    return a1111_schedule(prompt, 10)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        (
            "[a|(b:1.1)]",
            [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)"), (5, "a")]
            + [(6, "(b:1.1)"), (7, "a"), (8, "(b:1.1)"), (9, "a"), (10, "(b:1.1)")],
        ),
        ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
        ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
    ],
)
def test_a1111_doctests(prompt, expected):
    assert g(prompt) == expected


def test_a1111_stale_doctest_is_literal_in_current_a1111():
    # A1111's docstring still says [[5, 'a  c'], [10, 'a {b|d{ c']] (from before "|" meant
    # alternation); the current grammar cannot parse a "|" there, so A1111 returns the prompt as is.
    assert g("a [{b|d{:.5] c") == [(10, "a [{b|d{:.5] c")]


def test_a1111_header_comment_example():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert a1111_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


# ------------------------------------------------------------------------------ A1111 when, nesting, alternation


@pytest.mark.parametrize(
    "prompt, steps, expected",
    [
        ("[a:b:1.0]", 10, [(10, "a")]),  # a dot makes a fraction: all steps
        ("[a:b:1.]", 10, [(10, "a")]),
        ("[a:b:1]", 10, [(1, "a"), (10, "b")]),  # no dot: step 1
        ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),  # no dot: a step, even in exponent form
        ("[a:b:1.5]", 10, [(10, "a")]),  # 150 % clamps to the end
        ("[a:b:25]", 20, [(20, "a")]),  # clamped to steps
        ("[a:b:0]", 10, [(10, "b")]),  # switch points below 1 are not listed
        ("[a:b:0.01]", 20, [(20, "b")]),  # int(0.2) == 0
        ("[a:b:+2]", 10, [(2, "a"), (10, "b")]),
        ("[a:b: 2 ]", 10, [(2, "a"), (10, "b")]),
        ("[a:b:-1]", 10, [(10, "b")]),  # A1111 accepts it; check_a1111_syntax refuses it
        ("[(ugly:1.2):0.5]", 4, [(2, ""), (4, "(ugly:1.2)")]),
        ("a [b:c:2] d", 10, [(2, "a b d"), (10, "a c d")]),
    ],
)
def test_a1111_when(prompt, steps, expected):
    assert a1111_schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    "prompt, steps, expected",
    [
        ("[a:[b:[c:d:3]:2]:1]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "d")]),
        ("[x:[a|b]:3]", 6, [(1, "x"), (2, "x"), (3, "x"), (4, "b"), (5, "a"), (6, "b")]),
        ("[[a|b]:c:0.5]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "c")]),
        ("[a|[b:c:2]]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "c")]),
        ("[a|b|c]", 6, [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b"), (6, "c")]),
        ("x: [a:3]", 10, [(3, "x: "), (10, "x: a")]),  # a stray ":" away from the construct is fine
        ("\\[a:b:2\\]", 10, [(10, "\\[a:b:2\\]")]),  # escaped brackets are literal (kept escaped)
    ],
)
def test_a1111_nesting_and_alternation(prompt, steps, expected):
    assert a1111_schedule(prompt, steps) == expected


def test_a1111_texts_alternation_shares_steps_0_and_1():
    # reconstruct_cond_batch picks the first entry with step <= end_at_step: 0-based steps 0 and
    # 1 both land on the entry for A1111's step 1.
    assert a1111_texts("[a|b]", 6) == ["a", "a", "b", "a", "b", "a"]
    assert a1111_texts("[a|b|c]", 7) == ["a", "a", "b", "c", "a", "b", "c"]
    assert texts_of("[a|b]", steps=4) == ["a", "a", "b", "a"]


def test_a1111_texts_switch_points():
    assert a1111_texts("[a:b:3]", 6) == ["a", "a", "a", "a", "b", "b"]  # step <= 3
    assert a1111_texts("[a:b:0]", 3) == ["b", "b", "b"]
    assert a1111_texts("plain", 1) == ["plain"]


def test_a1111_keeps_emphasis_verbatim():
    assert a1111_texts("(worst quality:1.4), [lowres], ((ugly))", 2) == ["(worst quality:1.4), [lowres], ((ugly))"] * 2


def test_a1111_literal_fallback_for_prompts_outside_the_grammar():
    assert g("a | [b:3]") == [(10, "a | [b:3]")]
    assert g("[a|b:3]") == [(10, "[a|b:3]")]
    assert g("a \\") == [(10, "a \\")]


# ------------------------------------------------------------------------------ malformed syntax


@pytest.mark.parametrize(
    "prompt, reason",
    [
        ("a [unbalanced", "unbalanced '['"),
        ("ugly]", "unbalanced ']'"),
        ("[a:b:x]", "not a non-negative number"),
        ("[a:b:]", "not a non-negative number"),
        ("[a:b:-1]", "negative"),
        ("[a:-0.5]", "negative"),
        ("[a:b]", "not a non-negative number"),
        ("[a:b:c:3]", "3 ':'"),
        ("[x:[a:b:c:3]:2]", "[a:b:c:3] has 3 ':'"),  # the innermost culprit is named
        ("[a|b:3]", "mixes alternation"),
        ("[a(:b:3]", "unbalanced round bracket inside a scheduled construct"),
        ("[a|(b]", "unbalanced round bracket inside an alternation"),
        ("[a:(b:c:d):3]", "not valid prompt-editing syntax"),
        ("a | [b:3]", "outside A1111's grammar"),
        ("[a:3] \\", "outside A1111's grammar"),
        ("[a:b:1e400]", "not finite"),
        ("[a:3]::", "tie"),
        ("[a:3]:", "tie"),
        ("[a:3]((", "tie"),
    ],
)
def test_malformed_prompts_are_refused(prompt, reason):
    with raises_input_error("negative_prompt") as info:
        check_a1111_syntax(prompt)
    assert info.value.value == prompt
    assert reason in info.value.reason
    with raises_input_error("negative_prompt"):
        NegativeSchedule.from_args(prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "ugly, lowres",
        "(worst quality:1.4), lowres",
        "((worst quality), [:glasses:0.3]",  # unbalanced round brackets stay lenient
        "(a",
        "a)",
        "[(a]",  # square emphasis around a stray round bracket: emphasis's business
        "[(ugly:1.2)]",
        "[ugly:1.3]",  # valid A1111: [to:when], when = 1.3 * steps, clamped
        "\\[a:b:x\\]",
        "a | b",  # no square brackets: A1111 uses it literally, exactly as written
        "a \\",
        "[a:3] :",
        "x: [a:3]",
        "[:glasses:0.3]((ugly))",
        "[a:b:1e1]",
        "[a:b:+2]",
        "[fe|]male",
    ],
)
def test_valid_prompts_are_accepted(prompt):
    check_a1111_syntax(prompt)
    NegativeSchedule.from_args(prompt or None).validate(10)


def test_a_when_that_overflows_against_n_is_refused_at_validate():
    sched = NegativeSchedule.from_args("[a:b:1.7e308]")  # finite, but times N it is not
    with raises_input_error("negative_prompt"):
        sched.validate(10)


def test_check_a1111_syntax_names_the_given_argument():
    with raises_input_error("prompt"):
        check_a1111_syntax("[a:b:x]", argument="prompt")
    with raises_input_error("negative_prompt"):
        check_a1111_syntax(3)  # type: ignore[arg-type]


# ---- noise-level bounds (sigma, ComfyUI's timestep percent) ---------------------------------------


def _comfy_percent_to_sigma(percent: float, alphas_cumprod) -> float:
    """ComfyUI's ModelSamplingDiscrete.percent_to_sigma, written again here on tensors."""
    import torch

    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()
    t = torch.tensor((1.0 - percent) * 999.0).clamp(0, len(log_sigmas) - 1)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return float(((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp())


def test_timestep_percent_is_comfyuis_sigma():
    from diffusers import DDIMScheduler

    from negschedule.noise_levels import training_sigmas
    from negschedule.schedule import TimestepPercent

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    table = training_sigmas(scheduler)
    for p in (0.05, 0.2, 1 / 3, 0.5, 0.777, 0.99):
        assert TimestepPercent(p).sigma(table) == pytest.approx(_comfy_percent_to_sigma(p, scheduler.alphas_cumprod.double()), rel=1e-6)
    assert TimestepPercent(0).sigma(table) > 1e6 and TimestepPercent(1).sigma(table) == 0.0


def test_noise_level_bounds_are_inclusive_in_sigma():
    from negschedule.schedule import Sigma, noise_level_step

    steps = [10.0, 5.0, 2.0, 1.0, 0.5]
    # A start at sigma 2 is on from the step with sigma 2 (ComfyUI: active while sigma <= start).
    assert noise_level_step(Sigma(2.0), steps, [], is_end=False) == 2
    assert noise_level_step(Sigma(2.5), steps, [], is_end=False) == 2
    # An end at sigma 1 keeps the step with sigma 1 (active while sigma >= end), off from 0.5.
    assert noise_level_step(Sigma(1.0), steps, [], is_end=True) == 4
    assert noise_level_step(Sigma(0.9), steps, [], is_end=True) == 4
    assert noise_level_step(Sigma(100.0), steps, [], is_end=False) == 0
    assert noise_level_step(Sigma(0.0), steps, [], is_end=True) == 5


def test_noise_levels_on_the_command_line_and_outside_generate():
    from negschedule.schedule import NegativeSchedule, Sigma, TimestepPercent

    assert parse_step_value("percent:0.2") == TimestepPercent(0.2)
    assert parse_step_value(" sigma:3 ", "negative_end") == Sigma(3.0)
    for text in ("percent:1.5", "sigma:-1", "sigma:", "percent:nan", "sigma:inf"):
        with pytest.raises(InputError) as err:
            parse_step_value(text, "negative_end")
        assert err.value.argument == "negative_end"
    # Without a scheduler there is no step to find: one clear error, not a guess.
    with pytest.raises(InputError, match="generate"):
        NegativeSchedule.from_args("hat", negative_start=TimestepPercent(0.2)).texts(10)
