"""User-facing errors: one short message, a non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A mistake in the user's input (file, key, resources) with the fix in the message."""

    exit_code = 2


class Stopped(UserError):
    """The user stopped the command (Ctrl-C); the message says how to continue."""

    exit_code = 130


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main`` so a UserError prints ``error: ...`` and exits 2 (Stopped: 130)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except Stopped as exc:
            print(f"stopped: {exc}", file=sys.stderr)
            return exc.exit_code
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
