"""The one exception type for bad input, and the command-line convention around it.

Anything the user can fix (a bad flag, a missing file, an invalid hyperparameter) raises
`PicoError` with one line saying what is wrong and how to fix it. Command lines catch it through
`run_cli`, print that line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_BAD_INPUT = 2


class PicoError(Exception):
    """Bad input: the message is one line meant for the user."""


def check_utf8(argv: list[str]) -> None:
    """PicoError for an argument that is not UTF-8 text.

    Python keeps undecodable bytes as lone surrogates, which pass every check and then fail as a
    traceback wherever the text is printed or written, often after the work is done.
    """
    for arg in argv:
        try:
            arg.encode()
        except UnicodeEncodeError:
            shown = arg.encode(errors="surrogateescape").decode(errors="backslashreplace")
            raise PicoError(f"the argument {shown!r} is not UTF-8 text: pass it in UTF-8") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (no usage dump) and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line entry point: PicoError becomes one line on stderr and exit status 2."""
    try:
        check_utf8(sys.argv[1:] if argv is None else argv)
        return main(argv) or 0
    except PicoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
