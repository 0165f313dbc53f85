"""The one failure policy of a training run (lfa_ray.runs.failed): the same line and exit code
for Ctrl-C, divergence, a full disk and a dead worker, whichever run (train, a sweep's final
retrain, a refining model) it ends, each naming the command that continues. Ray's own exception
type wraps the workers' errors, as trainer.fit() raises it; the real runs are in test_train.py
(Ctrl-C, SIGTERM, a dead worker, a full disk, divergence) and test_tune.py (the final retrain)."""

from __future__ import annotations

import errno

import pytest
from ray.exceptions import ActorDiedError
from ray.train import WorkerGroupError

from lfa_ray.checkpoint import save_state
from lfa_ray.errors import Stopped, UserError
from lfa_ray.loop import Diverged
from lfa_ray.runs import failed
from lfa_ray.storage import locate

RUNS = {  # what the run is called, the command that continues it
    "train": ("training", "python -m lfa_ray.train --resume-from RUN"),
    "final": ("the final retrain", "python -m lfa_ray.tune --resume --name sw"),
    "refiner": ("the refining model's training", "python -m lfa_ray.tune --resume --name sw"),
}
DIVERGED = "training diverged at epoch 3: train_loss is nan (learning rate 0.5); lower train.lr"


def _errors() -> dict:
    return {
        "ctrl-c": KeyboardInterrupt(),
        "diverged": WorkerGroupError("rank 0 failed", {0: Diverged(DIVERGED)}),
        "disk full": WorkerGroupError("rank 0 failed", {0: OSError(errno.ENOSPC, "No space left on device")}),
        "dead worker": WorkerGroupError("rank 0 failed", {0: ActorDiedError()}),
    }


def _run_with_checkpoints(tmp_path, *epochs: int):
    run = locate(tmp_path / "run")
    run.mkdir()
    for e in epochs:
        save_state({"progress": {"epoch": e}}, run / f"checkpoint_epoch_{e:04d}")
    return run


@pytest.mark.parametrize("kind", list(RUNS))
@pytest.mark.parametrize("error", list(_errors()))
def test_every_run_ends_with_one_line_naming_the_command_that_continues(tmp_path, kind, error):
    what, command = RUNS[kind]
    run = _run_with_checkpoints(tmp_path, 1, 2)
    (run / "checkpoint_epoch_0003").mkdir()  # a copy cut short: no state.pt
    with pytest.raises(UserError) as info:
        failed(_errors()[error], run, what=what, continue_with=command, fresh=False, retries=0)
    line = str(info.value)
    assert "\n" not in line and line.endswith((f"continue it with: {command}",
                                               f"continue it with: {command} (scaling.max_failures > 0 "
                                               f"restarts by itself)"))
    expected = {
        "ctrl-c": (Stopped, f"{what} stopped; "),
        "diverged": (UserError, f"{what} failed: {DIVERGED}; "),
        "disk full": (UserError, f"disk full: no space left writing {run}; free space there, then "),
        "dead worker": (UserError, f"{what} failed: ActorDiedError: "),
    }[error]
    assert type(info.value) is expected[0] and line.startswith(expected[1]), line
    # only a dead worker is worth Ray's own retries; a diverged run would diverge again
    assert line.endswith("restarts by itself)") == (error == "dead worker")
    kept = sorted(c.name for c in run.children())
    # a full disk's cut-short copy is removed, so the continued run does not trip over it
    assert ("checkpoint_epoch_0003" in kept) == (error != "disk full")
    assert {"checkpoint_epoch_0001", "checkpoint_epoch_0002"} <= set(kept)


@pytest.mark.parametrize("error", list(_errors()))
def test_a_new_run_that_kept_nothing_is_removed_and_says_run_the_same_command_again(tmp_path, error):
    run = _run_with_checkpoints(tmp_path)
    (run / "config.yaml").write_text("written at the start\n")
    with pytest.raises(UserError) as info:
        failed(_errors()[error], run, what="training", continue_with="python -m lfa_ray.train --resume-from RUN",
               fresh=True, retries=0)
    assert str(info.value).endswith(" run the same command again (nothing was kept)")
    assert "--resume-from" not in str(info.value)
    assert not run.exists()  # it would block the retry (refused as an existing run)


def test_a_continued_run_that_kept_nothing_keeps_its_folder_and_says_how_to_continue(tmp_path):
    """A sweep's final retrain stopped before its first checkpoint: the sweep (and final/) stay, and
    the resume command is what continues it."""
    run = _run_with_checkpoints(tmp_path)
    with pytest.raises(Stopped, match=r"^the final retrain stopped; continue it with: python -m lfa_ray.tune "):
        failed(KeyboardInterrupt(), run, what="the final retrain",
               continue_with="python -m lfa_ray.tune --resume --name sw", fresh=False, retries=0)
    assert run.exists()


def test_lfa_rays_own_error_in_the_driver_passes_as_it_is(tmp_path):
    run = _run_with_checkpoints(tmp_path, 1)
    own = UserError("train.init_from x: that UNET has model.features [8] ...")
    with pytest.raises(UserError) as info:
        failed(own, run, what="training", continue_with="CMD", fresh=False, retries=0)
    assert info.value is own
