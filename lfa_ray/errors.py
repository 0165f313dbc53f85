"""User-facing errors: one short message, a non-zero exit, no traceback."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from typing import Callable


class UserError(Exception):
    """A mistake in the user's input (file, key, resources) with the fix in the message."""

    exit_code = 2


class Stopped(UserError):
    """The user stopped the command (Ctrl-C); the message says how to continue."""

    exit_code = 130


TERMINATED_EXIT = 143  # 128 + SIGTERM: how a shell reports a command that SIGTERM ended
_terminated = threading.Event()


def stop_on_sigterm() -> None:
    """Make SIGTERM (``ray job stop``, a container's stop, a node being shut down) stop the command
    as Ctrl-C does — the run's checkpoints kept and the command that continues printed — exiting
    143. Installed at a command's start and again once Ray has started (``ray.init`` installs its
    own handler, which exits at once and leaves Ray's processes to abort)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
    _terminated.set()
    on_ctrl_c = signal.getsignal(signal.SIGINT)  # Tune's, while a sweep runs: it ends the sweep cleanly
    if callable(on_ctrl_c):
        on_ctrl_c(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main`` so a UserError prints ``error: ...`` and exits 2 (Stopped: 130;
    stopped by SIGTERM: 143, :func:`stop_on_sigterm`)."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        _terminated.clear()
        stop_on_sigterm()
        try:
            return main(argv) or 0
        except Stopped as exc:
            print(f"stopped: {exc}", file=sys.stderr)
            return TERMINATED_EXIT if _terminated.is_set() else exc.exit_code
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("terminated" if _terminated.is_set() else "interrupted", file=sys.stderr)
            return TERMINATED_EXIT if _terminated.is_set() else 130

    return wrapper
