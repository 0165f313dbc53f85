"""``python -m lfa_ray.report compare``: finished sweeps side by side, from the files a sweep writes."""

from __future__ import annotations

import json

import pandas as pd
from PIL import Image

from lfa_ray import cli
from lfa_ray.config import dump_config, load_config
from lfa_ray.report import write_trials
from lfa_ray.runlog import RunLog
from lfa_ray.storage import locate

from helpers import error_line

EPOCH_KEYS = {"train_loss": 1.0, "val_loss": 0.5, "val_accuracy": 0.9, "val_iou": 0.5, "lr": 1e-3,
              "images_per_second": 50.0, "train_images": 100, "run_finished": 0, "setup_seconds": 1.0}


def _metrics(run, start: float, dice: list[float]) -> None:
    """``run/metrics.csv`` as a run writes it: epochs of 10 s from ``start``."""
    log = RunLog(str(run))
    for epoch, d in enumerate(dice, 1):
        log.log({"epoch": epoch, **EPOCH_KEYS, "val_dice": d, "best_val_dice": max(dice[:epoch]),
                 "epoch_seconds": 10.0, "time": start + 10.0 * epoch})
    log.close()


def _sweep(root, name: str, lrs: list[float], dice: list[float], final: list[float] | None, test: dict | None):
    """A sweep's folder with its trials (trial i reports ``dice[i]`` at its last epoch), final retrain
    and test scores written the way lfa_ray.tune writes them."""
    exp = locate(root / name)
    exp.mkdir()
    dump_config(load_config(None), exp / "config.yaml")
    rows = []
    for i, (lr, d) in enumerate(zip(lrs, dice, strict=True), 1):
        trial_id = f"{i:03d}_{name}"
        _metrics(root / name / f"trial_{trial_id}" / "train", 1000.0 + 20 * i, [d / 2, d])
        rows.append({"trial_id": trial_id, "train.lr": lr, "train.batch_size": 8, "train.aug_strength": 0.5,
                     "status": "TERMINATED", "error": "", "best_val_dice": d, "last_val_dice": d, "epochs": 2,
                     "stopped_early": i % 2 == 0, "seconds": 20.0})
    write_trials(pd.DataFrame(rows), exp)
    if final:
        _metrics(root / name / "final", 2000.0, final)
    if test:
        (exp / "final" / "test" / "summary.json").write_text(json.dumps(test))


def test_compare_puts_finished_sweeps_side_by_side(tmp_path, capsys):
    test = {"images": 120, "dice_mean": 0.8123, "dice_median": 0.9, "dice_p5": 0.1, "dice_below_0.5": 11,
            "iou_mean": 0.7, "boundary_f1_mean": 0.75}
    _sweep(tmp_path, "a", [1e-3, 3e-4, 2e-3], [0.40, 0.55, 0.10], [0.6, 0.7], test)
    _sweep(tmp_path, "b", [5e-4, 1e-4], [0.30, 0.20], None, None)  # stopped before its final retrain
    out = tmp_path / "cmp"
    assert cli.report(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): [c.strip(" |") for c in line.split(" | ")[1:]]
            for line in printed.splitlines() if line.startswith("| ")}
    assert rows[""] == ["a", "b"]
    assert rows["trials run (stopped early, errored)"] == ["3 (1, 0)", "2 (1, 0)"]
    assert rows["best trial"] == ["002_a", "001_b"] and rows["best train.lr"] == ["0.0003", "0.0005"]
    assert rows["best trial's val_dice"] == ["0.5500", "0.3000"]
    assert rows["final retrain: best val_dice (epochs)"] == ["0.7000 (2)", "–"]
    assert rows["test Dice: mean, median"] == ["0.8123, 0.9000", "–"]
    assert rows["test photos below 0.5 Dice"] == ["11 of 120", "–"]
    # a: trial 1 starts at 1000 + 20, the final's last epoch ends at 2000 + 20; b: 1020 to trial 2's end, 1060
    assert rows["time, first epoch's start to last epoch's end"] == ["16 min 40 s", "40 s"]
    assert (out / "compare.md").read_text() in printed
    with Image.open(out / "compare.png") as png:
        assert png.width > 600 and png.height > 300

    # the same name twice: the columns are the paths
    assert cli.report(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(out)]) == 0
    assert f"| | {tmp_path / 'a'} | {tmp_path / 'a'} |" in capsys.readouterr().out


def test_compare_refuses_what_is_not_a_finished_sweep(tmp_path, capsys):
    _sweep(tmp_path, "a", [1e-3], [0.4], None, None)
    (tmp_path / "train_run").mkdir()
    out = tmp_path / "cmp"
    assert cli.report(["compare", str(tmp_path / "a")]) == 2
    assert error_line(capsys) == ("error: report compare: give two sweep folders or more, e.g. "
                                  "python -m lfa_ray.report compare results/a results/b")
    for other, what in ((tmp_path / "train_run", "not a finished sweep (no trials.parquet)"),
                        (tmp_path / "nope", "not found")):
        assert cli.report(["compare", str(tmp_path / "a"), str(other), "--out", str(out)]) == 2
        assert error_line(capsys) == (f"error: {other}: {what}; give the folders of sweeps python -m lfa_ray.tune "
                                      f"ran (<storage.path>/<name>)")
    assert not out.exists()  # nothing written by a refused comparison


def test_a_param_comes_back_of_the_type_its_search_space_gives():
    """A column holding an unscored trial's empty cell is float: the best row's batch size 4.0 must
    reach the final retrain's profile as 4 (a profile refuses 4.0)."""
    from lfa_ray.report import param_value

    table = pd.DataFrame({"train.batch_size": [4, None], "train.epochs": [7, None], "train.lr": [1e-3, None],
                          "model.features": [[8, 16], None]})
    row = table.iloc[0]
    assert row["train.batch_size"] == 4.0 and isinstance(row["train.batch_size"].item(), float)
    space = {"train.batch_size": {"choice": [4, 8, 16]}, "train.epochs": {"randint": [5, 9]},
             "train.lr": {"loguniform": [1e-4, 1e-2]}, "model.features": {"choice": [[8, 16], [4, 8]]}}
    got = [param_value(row, key, spec) for key, spec in space.items()]
    assert got == [4, 7, 1e-3, [8, 16]]
    assert [type(v) for v in got] == [int, int, float, list]
