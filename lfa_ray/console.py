"""What reaches the console from the processes of a Ray job.

:func:`setup_worker` runs in every worker process of lfa_ray's Ray jobs (``runtime_env``'s
``worker_process_setup_hook``, set by :func:`lfa_ray.ray_train.init_ray`): it configures Ray's
loggers so that the console says what happens once. Ray Train's line per report ("Reporting
training result N", which repeats every metric lfa_ray prints) and the placement group cleaner's
note when a trial that ASHA stopped is freed are off unless ``--verbose``; a worker's traceback of
a :class:`~lfa_ray.errors.UserError` (which the driver prints as one line) and of the teardown of
a trial ASHA stopped (its placement group removed under it) are not printed. Light on imports:
every process of the job, Ray's own actors included, runs it.
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


def setup_worker() -> None:
    from lfa_ray.ray_internals import quiet_worker

    quiet_worker(_not_expected, verbose())
