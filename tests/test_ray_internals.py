"""Ray's private parts that lfa_ray uses (lfa_ray.ray_internals) are all in the installed Ray; when
one is gone, the check names the entry to adapt."""

from __future__ import annotations

import importlib

from lfa_ray import ray_internals


def test_every_private_part_of_ray_lfa_ray_uses_is_in_the_installed_ray():
    assert ray_internals.missing() == []


def test_a_part_gone_from_ray_is_named_with_the_entry_to_adapt(monkeypatch):
    """Ray renaming what lfa_ray reads, as a new Ray might: the check says which entry, not a
    sweep that hangs or a console full of tables later."""
    from ray.tune.experiment import Trial

    constants = importlib.import_module("ray.train.v2._internal.constants")
    monkeypatch.setattr(constants, "HEALTH_CHECK_INTERVAL_S_ENV_VAR", "RAY_TRAIN_POLL_S")
    monkeypatch.delattr(Trial, "pickled_error_file")
    monkeypatch.setattr(ray_internals, "PG_CLEANER_LOGGER", "ray.train.v3.no_such_module")
    problems = ray_internals.missing()
    assert [p.split(":")[0] for p in problems] == ["lfa_ray.ray_internals.REPORT_POLL",
                                                   "lfa_ray.ray_internals.fetch_stored_trial_files",
                                                   "lfa_ray.ray_internals.PG_CLEANER_LOGGER"], problems
    assert all("is not in the installed Ray" in p and "adapt it" in p and "\n" not in p for p in problems)


def test_the_raylets_worker_start_warning_is_dropped_and_its_other_messages_pass(monkeypatch, capsys):
    from ray._private import worker

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # put back afterwards
    ray_internals.quiet_worker_start_warning()
    ray_internals.quiet_worker_start_warning()  # a second init_ray wraps nothing twice
    warning = ("WARNING: 8 PYTHON worker processes have been started on node: 86230 with address: 192.0.2.2, "
               "which is 4x the maximum expected startup concurrency (2).")
    died = "A worker died or was killed while executing a task by an unexpected system error."
    for line in (warning, died):
        worker.print_to_stdstream({"lines": [line], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr().out
    assert "PYTHON worker processes" not in out and died in out


def test_ray_datas_interrupted_listing_thread_is_quiet_and_other_thread_errors_are_not(monkeypatch):
    import os
    import threading

    import ray

    passed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: passed.append(args.exc_type))  # what prints
    ray_internals._quiet_data_interrupts()
    util = os.path.join(os.path.dirname(ray.__file__), "data", "_internal", "util.py")
    for code in (compile("raise InterruptedError()", util, "exec"),  # Ray Data's listing thread: quiet
                 compile("raise InterruptedError()", "lfa_ray/stream.py", "exec"),
                 compile("raise ValueError('x')", util, "exec")):
        worker = threading.Thread(target=exec, args=(code, {}))
        worker.start()
        worker.join()
    assert passed == [InterruptedError, ValueError]
