"""The one error type for bad user input: it names the argument and the value it refuses.

The library raises it before any work starts; the CLI prints its message on one line and exits
with code 2 (argparse's convention), the web UI shows it in the page.
"""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad input: ``argument`` got ``value``, refused for ``reason``."""

    def __init__(self, argument: str, value: Any, reason: str):
        self.argument = argument
        self.value = value
        self.reason = reason
        super().__init__(f"{argument}={value!r}: {reason}")
