"""One way out for every command: ``error: …`` on stderr and a non-zero exit, never a traceback (cli.md)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from cardos.batch import BatchFormatError
from cardos.keyfile import KeyFileError
from terminal.errors import TerminalError

P = ParamSpec("P")
R = TypeVar("R")

EXPECTED = (TerminalError, KeyFileError, BatchFormatError, ValueError, OSError)


class CliError(Exception):
    """A failure the command explains in one line."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn exceptions into ``error: …`` lines; ``ONECARD_DEBUG=1`` re-raises for a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except (CliError, *EXPECTED) as exc:
            if os.environ.get("ONECARD_DEBUG"):
                raise
            raise fail(_one_line(exc)) from None
        except Exception as exc:
            if os.environ.get("ONECARD_DEBUG"):
                raise
            raise fail(f"internal error ({exc.__class__.__name__}): {_one_line(exc)}", 2) from None

    return wrapper


def _one_line(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return " ".join(text.split()) if "\n" in text else text


def stderr(message: str) -> None:
    """A progress or note line on stderr (keeps ``--json`` stdout clean)."""
    print(message, file=sys.stderr)
