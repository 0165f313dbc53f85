"""User-facing errors: one short message, a non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A mistake in the user's input (file, key, resources) with the fix in the message."""


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main`` so a UserError prints ``error: ...`` and exits 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
