"""The sweep's human report: trials table (parquet + CSV), summary.md and PNG plots."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # figures drawn to files without pyplot: no backend chosen, no global state

from lfa_ray.config import Config
from lfa_ray.runlog import read_metrics
from lfa_ray.storage import Location

CURVE_COLUMNS = ["trial_id", "epoch", "val_dice", "val_loss"]


def _better(cfg: Config):
    return np.nanmax if cfg.tune.mode == "max" else np.nanmin


def error_line(error) -> str:
    """A trial's error in one readable line: its cause (Ray wraps it in a task error whose text
    starts with a colour-coded ``ray::...`` header), without terminal colour codes."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("ray::")]
    return lines[0] if lines else type(cause).__name__


def collect(grid, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per trial (params, best/last metrics, epochs, ASHA stop, status) and all per-epoch curves."""
    metric = cfg.tune.metric
    rows, curves = [], []
    for result in grid:
        # NNN_id: N is the order the searcher proposed
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_")
        df = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        config = result.config or {}  # None for a trial stopped (Ctrl-C, time budget) before its first result
        params = {k: config.get(k) for k in cfg.tune.search_space}
        row = {"trial_id": trial_id, **params, "status": "ERROR" if result.error else "TERMINATED",
               "error": error_line(result.error)}
        if "epoch" in df and len(df):
            # an epoch Tune had when its driver was lost is reported again by the restarted trial
            df = df.dropna(subset=["epoch"]).drop_duplicates(subset="epoch", keep="last")
            last = df.iloc[-1]
            row.update({f"best_{metric}": float(_better(cfg)(df[metric])), f"last_{metric}": float(last[metric]),
                        "best_val_dice": float(df["val_dice"].max()), "last_val_dice": float(last["val_dice"]),
                        "epochs": int(last["epoch"]),
                        # Tune marks every trial's last result done, ASHA-stopped or not; the
                        # loop's own run_finished says whether training ended by itself.
                        "stopped_early": bool(not result.error and not last.get("run_finished", 0)),
                        "seconds": float(last.get("time_total_s", math.nan))})
            curves.append(df.assign(trial_id=trial_id)[CURVE_COLUMNS])
        else:
            row.update({f"best_{metric}": math.nan, f"last_{metric}": math.nan, "best_val_dice": math.nan,
                        "last_val_dice": math.nan, "epochs": 0, "stopped_early": False, "seconds": math.nan})
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("trial_id").reset_index(drop=True)
    return table, (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS))


def best_row(table: pd.DataFrame, cfg: Config) -> pd.Series:
    col = f"best_{cfg.tune.metric}"
    ok = table.dropna(subset=[col])
    return ok.loc[ok[col].idxmax() if cfg.tune.mode == "max" else ok[col].idxmin()]


def param_value(row: pd.Series, key: str):
    """A table cell back as a plain Python value (YAML-safe)."""
    v = row[key]
    if isinstance(v, np.ndarray):
        return [x.item() if hasattr(x, "item") else x for x in v]
    return v.item() if hasattr(v, "item") else v


def write_trials(table: pd.DataFrame, exp_dir: Location) -> None:
    for name, write in (("trials.parquet", lambda f: table.to_parquet(f, index=False)),
                        ("trials.csv", lambda f: f.write(table.to_csv(index=False).encode()))):
        buf = io.BytesIO()
        write(buf)
        (exp_dir / name).write_bytes(buf.getvalue())


def _save(fig, out: Location) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    out.write_bytes(buf.getvalue())


def final_metrics(final_dir: Location) -> dict:
    rows = read_metrics(final_dir / "metrics.csv")
    return {**rows[-1], "best_val_dice": max(r["val_dice"] for r in rows)} if rows else {}


def _plots(exp_dir: Location, cfg: Config, table: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    metric = cfg.tune.metric
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for trial_id, c in curves.groupby("trial_id"):
        stopped = bool(table.loc[table.trial_id == trial_id, "stopped_early"].iloc[0])
        ax.plot(c["epoch"], c["val_dice"], marker="o", ms=3, ls="--" if stopped else "-",
                label=trial_id.split("_")[0])
    ax.set(xlabel="epoch", ylabel="val_dice", title="val_dice per epoch (dashed: stopped early by ASHA)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save(fig, exp_dir / "trials_val_dice.png")

    keys = list(cfg.tune.search_space)
    fig = Figure(figsize=(4 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        x = table[key].map(lambda v: str(list(v)) if isinstance(v, (list, np.ndarray)) else v)
        ax.scatter(x, table[f"best_{metric}"], c=table["stopped_early"].map({True: "tab:gray", False: "tab:blue"}))
        if "loguniform" in cfg.tune.search_space[key]:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"best {metric}")
    fig.suptitle(f"searched parameters vs best {metric} (gray: stopped early)")
    fig.tight_layout()
    _save(fig, exp_dir / "params_vs_metric.png")
    return ["trials_val_dice.png", "params_vs_metric.png"]


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(list(v)) if isinstance(v, np.ndarray) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_summary(exp_dir: Location, cfg: Config, table: pd.DataFrame, curves: pd.DataFrame, best_params: dict,
                  final: dict, model: Location, test: dict | None = None, ended_early: str | None = None) -> None:
    """``summary.md``; ``test``: the final model's scores on the test split (lfa_ray.evaluate);
    ``ended_early``: why the sweep ended before all its trials ran."""
    metric = cfg.tune.metric
    plots = _plots(exp_dir, cfg, table, curves)
    shown = ["trial_id", *cfg.tune.search_space, f"best_{metric}", f"last_{metric}", "epochs", "stopped_early",
             "status"]
    text = [
        f"# Sweep {exp_dir.name}",
        "",
        f"{len(table)} trials (Optuna TPE, the original config first; ASHA on epochs: max_t "
        f"{cfg.tune.scheduler.max_t}, grace {cfg.tune.scheduler.grace_period}, reduction "
        f"{cfg.tune.scheduler.reduction_factor}); {int(table['stopped_early'].sum())} stopped early, "
        f"{int((table['status'] == 'ERROR').sum())} errored."
        + (f" The sweep ended after {len(table)} of {cfg.tune.num_samples} trials: {ended_early}." if ended_early
           else ""),
        "",
        "Best config: " + ", ".join(f"`{k}={v}`" for k, v in best_params.items()) + " (`best_config.yaml`).",
        "",
        f"Final retrain ({cfg.final.epochs} epochs max): best val_dice {final.get('best_val_dice', math.nan):.4f}, "
        f"last {final.get('val_dice', math.nan):.4f} after {int(final.get('epoch', 0))} epochs; model `{model}`.",
        "",
        (f"Test split ({test['images']} photos, never used to choose a trial or an epoch): Dice mean "
         f"{test['dice_mean']:.4f}, median {test['dice_median']:.4f}, 5th percentile {test['dice_p5']:.4f}, "
         f"{test['dice_below_0.5']} below 0.5; IoU {test['iou_mean']:.4f}; boundary F1 "
         f"{test['boundary_f1_mean']:.4f} (`final/test/`: per photo, worst photos)." if test else
         "No test split (`data.test_fraction: 0` and no test folder): the val_dice above chose the model, "
         "so it is an optimistic score."),
        "",
        "## Trials",
        "",
        _md_table(table[shown].sort_values(f"best_{metric}", ascending=cfg.tune.mode == "min")),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        f"`tensorboard --logdir {exp_dir}` shows every trial, an HParams view and the final run.",
        "",
    ]
    (exp_dir / "summary.md").write_text("\n".join(text))
