"""Differential check of our A1111 prompt reading against AUTOMATIC1111's own parser, on random prompts.

Needs a checkout of stable-diffusion-webui (its ``modules/prompt_parser.py``, read from there, not
copied here) and ``lark`` (``pip install lark``). Random prompts built from the syntax's pieces
(brackets, colons, pipes, escapes, numbers, BREAK, spaces) go through A1111's
``get_learned_conditioning_prompt_schedules`` and ``parse_prompt_attention`` and through
``schedule.a1111_schedule`` and ``emphasis.parse_prompt_attention``; every difference is listed,
with whether ``check_a1111_syntax`` refuses the prompt (what ``generate()`` does with a prompt
A1111 reads arbitrarily or not at all).

    python benchmarks/fuzz_a1111_parser.py --a1111 ~/stable-diffusion-webui/modules/prompt_parser.py --n 20000

Measured (A1111 at 28bd8e1, 24 000 prompts in two runs): emphasis identical on all; schedules
identical but for 16 prompts with stray brackets around a scheduled group, all 16 refused by
``check_a1111_syntax``.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from negschedule.emphasis import parse_prompt_attention  # noqa: E402
from negschedule.errors import InputError  # noqa: E402
from negschedule.schedule import a1111_schedule, check_a1111_syntax  # noqa: E402

PIECES = ("a", "b", "cat", "x y", " ", "  ", "\n", ",", "[", "]", "(", ")", ":", "|", "\\", "1", "2", "3", "0.5", ".3",
          "1.5", "-1", "+2", "1e1", "BREAK", " BREAK ", ":0.5)", ": 1.2 )", "3 ]", "[a|]", ":  2 ]", "[x:y:0.25]", "(z:-1)")


def random_prompt(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))


def outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as err:  # both sides raise on a weight like "1.2.3": equal outcomes
        return "error", type(err).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a1111", required=True, type=Path, help="path to stable-diffusion-webui's modules/prompt_parser.py")
    parser.add_argument("--n", type=int, default=5000, help="random prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("a1111_prompt_parser", args.a1111)
    a1111 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(a1111)

    rng = random.Random(args.seed)
    schedule_diffs, emphasis_diffs, refused = [], [], 0
    for _ in range(args.n):
        prompt, steps = random_prompt(rng), rng.choice([1, 3, 10, 20])
        theirs = outcome(lambda: [(int(t), x) for t, x in a1111.get_learned_conditioning_prompt_schedules([prompt], steps)[0]])
        ours = outcome(a1111_schedule, prompt, steps)
        if theirs != ours and not (theirs[0] == ours[0] == "error"):
            schedule_diffs.append((prompt, steps, theirs, ours))
            try:
                check_a1111_syntax(prompt)
            except InputError:
                refused += 1
        theirs = outcome(lambda: [(t, float(w)) for t, w in a1111.parse_prompt_attention(prompt)])
        ours = outcome(lambda: [(s.text, s.weight) for s in parse_prompt_attention(prompt)])
        if theirs != ours and not (theirs[0] == ours[0] == "error"):
            emphasis_diffs.append((prompt, theirs, ours))
    print(f"{args.n} prompts: schedule differences {len(schedule_diffs)} ({refused} refused by check_a1111_syntax), "
          f"emphasis differences {len(emphasis_diffs)}")
    for prompt, steps, theirs, ours in schedule_diffs[:10]:
        print(f"schedule {prompt!r} at {steps} steps\n  A1111: {theirs}\n  ours:  {ours}")
    for prompt, theirs, ours in emphasis_diffs[:10]:
        print(f"emphasis {prompt!r}\n  A1111: {theirs}\n  ours:  {ours}")
    return 0 if not emphasis_diffs and refused == len(schedule_diffs) else 1


if __name__ == "__main__":
    sys.exit(main())
