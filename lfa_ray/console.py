"""What reaches the console from the processes of a Ray job.

:func:`setup_worker` runs in every worker process of lfa_ray's Ray jobs (``runtime_env``'s
``worker_process_setup_hook``, set by :func:`lfa_ray.ray_train.init_ray`): it configures Ray's
loggers so that the console says what happens once. Ray Train's line per report ("Reporting
training result N", which repeats every metric lfa_ray prints) and the placement group cleaner's
note when a trial that ASHA stopped is freed are off unless ``--verbose``; a worker's traceback of
a :class:`~lfa_ray.errors.UserError` (which the driver prints as one line) and of the teardown of
a trial ASHA stopped (its placement group removed under it) are not printed. Ray Data's lines per
dataset execution stay in its ray-data.log (:class:`QuietData`). Light on imports: every process of
the job, Ray's own actors included, runs it.
"""

from __future__ import annotations

import logging
import os
import sys

VERBOSE = "LFA_RAY_VERBOSE"  # "1" (--verbose): Ray's own console output, in every process of the job


def verbose() -> bool:
    return os.environ.get(VERBOSE) == "1"


def _not_expected(record: logging.LogRecord) -> bool:
    """False for Ray Train's traceback of an error that is expected or said elsewhere."""
    exc = sys.exc_info()[1]
    if exc is None:
        return True
    from lfa_ray.errors import UserError

    if isinstance(exc, UserError):
        return False
    return not (type(exc).__name__ == "ActorDiedError" and "placement group was removed" in str(exc))


class QuietData(logging.Filter):
    """On Ray Data's console (lfa_ray/ray_data_logging.yaml, at WARNING): its note that progress bars
    are off (lfa_ray turns them off unless --verbose, :mod:`lfa_ray.stream`), its note that a task
    failed and its tracebacks of a photo that does not decode are not printed: the driver says why
    the run failed in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from lfa_ray.errors import UserError

        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f"\n{record.exc_info[1]!r} {record.exc_info[1]}"
        return not (text.startswith(("Progress bars disabled", "An exception was raised from a task of operator"))
                    or f"{UserError.__module__}.UserError: " in text or "UserError(" in text)


def setup_worker() -> None:
    from lfa_ray.ray_internals import quiet_worker

    quiet_worker(_not_expected, verbose())
