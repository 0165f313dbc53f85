"""The sweep's human report: trials table (parquet + CSV), summary.md and PNG plots; and
``python -m lfa_ray.report compare A B [C...]``: finished sweeps side by side (:func:`compare`)."""

from __future__ import annotations

if __name__ == "__main__":  # python -m lfa_ray.report: the command, run before this copy defines anything,
    from lfa_ray.cli import report  # so the module's state exists once (as lfa_ray.report)

    raise SystemExit(report())

import io
import json
import math
import re
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # figures drawn to files without pyplot: no backend chosen, no global state

from lfa_ray.config import Config, config_from_dict, read_yaml
from lfa_ray.errors import UserError
from lfa_ray.runlog import read_metrics
from lfa_ray.storage import Location, locate

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


def param_value(row: pd.Series, key: str, spec: Optional[dict] = None):
    """A table cell back as a plain Python value (YAML-safe); with its ``tune.search_space`` entry
    ``spec``, of the type the profile takes (a column with an unscored trial's empty cell is float)."""
    v = row[key]
    if isinstance(v, np.ndarray):
        v = [x.item() if hasattr(x, "item") else x for x in v]
    elif hasattr(v, "item"):
        v = v.item()
    kind, args = next(iter(spec.items())) if spec else (None, None)
    if kind == "choice":
        return next((a for a in args if a == v), v)
    return int(v) if kind == "randint" else v


def _distribution(spec: dict):
    """The Optuna distribution of a ``tune.search_space`` entry (lfa_ray.search's four kinds)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    (kind, args), = spec.items()
    if kind == "choice":
        return CategoricalDistribution([str(a) if isinstance(a, list) else a for a in args])  # [8, 16] as "[8, 16]"
    if kind == "randint":
        return IntDistribution(int(args[0]), int(args[1]) - 1)  # Tune's randint excludes its high end
    return FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")


class Mattered(NamedTuple):
    """:func:`importances`: each searched key's share, largest first (empty: ``why`` says why)."""
    shares: dict
    trials: int
    why: str = ""


def importances(table: pd.DataFrame, cfg: Config) -> Mattered:
    """What mattered in a sweep: each searched key's share of the variance of the trials' best
    ``tune.metric``, by Optuna's fANOVA (a random forest over the trials, seeded with ``train.seed``),
    and the number of trials it rests on (those that reported the metric, ASHA-stopped ones included,
    at the epoch they reached). Nothing with fewer than two such trials, or without scikit-learn
    (pinned in the package; a bare environment such as the GPU box's bundle may lack it), or where
    every trial scored the same (or fANOVA fails): ``why`` says which."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    col = f"best_{cfg.tune.metric}"
    done = table.dropna(subset=[col])
    if len(done) < 2:
        return Mattered({}, len(done), f"too few trials reported {cfg.tune.metric}")
    if done[col].nunique() < 2:
        return Mattered({}, len(done), f"every trial scored the same {cfg.tune.metric}")
    try:
        import sklearn  # noqa: F401 - fANOVA's random forest
    except ImportError:
        return Mattered({}, len(done), "scikit-learn is not installed (pip install scikit-learn==1.9.1)")
    space = {k: _distribution(spec) for k, spec in cfg.tune.search_space.items()}

    def value(row: pd.Series, key: str):
        v = param_value(row, key)
        return str(v) if isinstance(v, list) else v

    trials = [optuna.trial.create_trial(params={k: value(row, k) for k in space}, distributions=space,
                                        value=float(row[col])) for _, row in done.iterrows()]
    was = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    try:
        study = optuna.create_study(direction="maximize" if cfg.tune.mode == "max" else "minimize")
        study.add_trials(trials)
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=cfg.train.seed))
    except Exception as exc:  # noqa: BLE001 - a report line, never the end of a sweep that has trained
        return Mattered({}, len(done), f"fANOVA failed ({type(exc).__name__}: {exc})")
    finally:
        optuna.logging.set_verbosity(was)
    return Mattered({k: float(v) for k, v in found.items()}, len(done))


def importance_line(found: Mattered, metric: str) -> str:
    if not found.shares:
        return f"not worked out: {found.why}"
    return (", ".join(f"{k} {v:.2f}" for k, v in found.shares.items())
            + f" (share of the variance of the best {metric}, Optuna's fANOVA over {found.trials} trials)")


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


def _plot_top_two(exp_dir: Location, cfg: Config, table: pd.DataFrame, shares: dict[str, float]) -> list[str]:
    """The trials' best metric over the two most important searched keys (none with one key)."""
    if len(shares) < 2:
        return []
    metric = f"best_{cfg.tune.metric}"
    (kx, sx), (ky, sy) = list(shares.items())[:2]
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()

    def values(key: str):
        return table[key].map(lambda v: str(list(v)) if isinstance(v, (list, np.ndarray)) else v)

    dots = ax.scatter(values(kx), values(ky), c=table[metric], cmap="viridis", s=60, edgecolors="k")
    for key, setter in ((kx, ax.set_xscale), (ky, ax.set_yscale)):
        if "loguniform" in cfg.tune.search_space[key]:
            setter("log")
    fig.colorbar(dots, ax=ax, label=metric)
    ax.set(xlabel=f"{kx} (importance {sx:.2f})", ylabel=f"{ky} (importance {sy:.2f})",
           title=f"{metric} over the two parameters that mattered most")
    fig.tight_layout()
    _save(fig, exp_dir / "top_params.png")
    return ["top_params.png"]


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(list(v)) if isinstance(v, np.ndarray) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_summary(exp_dir: Location, cfg: Config, table: pd.DataFrame, curves: pd.DataFrame, best_params: dict,
                  final: dict, model: Location, test: dict | None = None, ended_early: str | None = None,
                  mattered: Mattered | None = None) -> None:
    """``summary.md``; ``test``: the final model's scores on the test split (lfa_ray.evaluate);
    ``ended_early``: why the sweep ended before all its trials ran; ``mattered``: :func:`importances`
    (also written to the sweep's TensorBoard text tab, ``what_mattered``)."""
    from lfa_ray.runlog import write_events

    metric = cfg.tune.metric
    mattered = mattered or importances(table, cfg)
    plots = _plots(exp_dir, cfg, table, curves) + _plot_top_two(exp_dir, cfg, table, mattered.shares)
    what_mattered = (f"What mattered: {importance_line(mattered, metric)}."
                     + (" With a few trials this is a hint, not a measurement: each trial is one training run, "
                        "and ASHA-stopped ones count at the epoch they reached." if mattered.shares else ""))
    write_events(exp_dir, len(table), {}, texts={"what_mattered": what_mattered})
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
        what_mattered,
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


# -- comparing sweeps --------------------------------------------------------------------------

class Sweep(NamedTuple):
    """What :func:`compare` shows of one finished sweep."""
    where: str
    name: str
    cfg: Config
    table: pd.DataFrame
    best: Optional[pd.Series]  # the best trial's row (None: no trial reported)
    final: dict  # the final retrain's last epoch, with its best val_dice ({}: none)
    test: Optional[dict]  # the final model's test split scores
    seconds: float  # from the first epoch's start to the last epoch's end (trials and final retrain)


def read_sweep(where: str) -> Sweep:
    """A sweep folder (a path or a URI) that ``python -m lfa_ray.tune`` wrote."""
    loc = locate(where)
    if not (loc / "trials.parquet").is_file():
        what = "not found" if not loc.exists() else "not a finished sweep (no trials.parquet)"
        raise UserError(f"{where}: {what}; give the folders of sweeps python -m lfa_ray.tune ran "
                        f"(<storage.path>/<name>)")
    cfg = config_from_dict(read_yaml(loc / "config.yaml"))
    table = pd.read_parquet(io.BytesIO((loc / "trials.parquet").read_bytes()))
    best = best_row(table, cfg) if table[f"best_{cfg.tune.metric}"].notna().any() else None
    final = final_metrics(loc / "final")
    summary = loc / "final" / "test" / "summary.json"
    test = json.loads(summary.read_text()) if summary.is_file() else None
    epochs = [r for t in table["trial_id"] for r in read_metrics(loc / f"trial_{t}" / "train" / "metrics.csv")]
    epochs += read_metrics(loc / "final" / "metrics.csv")
    seconds = (max(r["time"] for r in epochs) - min(r["time"] - r["epoch_seconds"] for r in epochs)
               if epochs else math.nan)
    return Sweep(where, loc.name, cfg, table, best, final, test, seconds)


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "–"
    m, s = divmod(round(seconds), 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min {s:02d} s" if m else f"{s} s"


def _score(value: Optional[float]) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def comparison_rows(sweeps: list[Sweep]) -> list[tuple[str, list[str]]]:
    """The side-by-side table: (what, one cell per sweep)."""
    def cells(f) -> list[str]:
        return [f(s) for s in sweeps]

    keys = list(dict.fromkeys(k for s in sweeps for k in s.cfg.tune.search_space))
    rows = [
        ("trials run (stopped early, errored)", cells(
            lambda s: f"{len(s.table)} ({int(s.table['stopped_early'].sum())}, "
                      f"{int((s.table['status'] == 'ERROR').sum())})")),
        ("best trial", cells(lambda s: "–" if s.best is None else str(s.best["trial_id"]))),
        ("best trial's val_dice", cells(lambda s: "–" if s.best is None else _score(s.best["best_val_dice"]))),
    ]
    rows += [(f"best {key}", [_cell(param_value(s.best, key)) if s.best is not None and key in s.best.index else "–"
                              for s in sweeps]) for key in keys]
    rows += [
        ("final retrain: best val_dice (epochs)", cells(
            lambda s: f"{_score(s.final['best_val_dice'])} ({int(s.final['epoch'])})" if s.final else "–")),
        ("test Dice: mean, median", cells(
            lambda s: f"{_score(s.test['dice_mean'])}, {_score(s.test['dice_median'])}" if s.test else "–")),
        ("test photos below 0.5 Dice", cells(
            lambda s: f"{s.test['dice_below_0.5']} of {s.test['images']}" if s.test else "–")),
        ("test IoU, boundary F1", cells(
            lambda s: f"{_score(s.test['iou_mean'])}, {_score(s.test['boundary_f1_mean'])}" if s.test else "–")),
        ("time, first epoch's start to last epoch's end", cells(lambda s: _duration(s.seconds))),
    ]
    return rows


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def compare(where: list[str], out: str | Location) -> str:
    """Finished sweeps side by side: ``compare.md`` (also returned) and ``compare.png`` in ``out``."""
    if len(where) < 2:
        raise UserError("report compare: give two sweep folders or more, e.g. "
                        "python -m lfa_ray.report compare results/a results/b")
    sweeps = [read_sweep(w) for w in where]
    names = [s.name for s in sweeps]
    heads = names if len(set(names)) == len(names) else [s.where for s in sweeps]
    lines = ["| | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(sweeps)]
    lines += [f"| {what} | " + " | ".join(cells) + " |" for what, cells in comparison_rows(sweeps)]
    text = "\n".join([f"# {len(sweeps)} sweeps compared", "", *(f"- `{h}`: {s.where}" for h, s in
                                                                   zip(heads, sweeps, strict=True)),
                      "", *lines, "", "![compare.png](compare.png)", ""])
    out = locate(out)
    out.mkdir()
    _plot_sweeps(sweeps, heads, out / "compare.png")
    (out / "compare.md").write_text(text)
    return text


def _plot_sweeps(sweeps: list[Sweep], heads: list[str], out: Location) -> None:
    fig = Figure(figsize=(4 + 2.2 * len(sweeps), 4.2))
    trials, scores = fig.subplots(1, 2)
    for k, s in enumerate(sweeps):
        dice = s.table["best_val_dice"]
        x = pd.Series(k + np.linspace(-0.15, 0.15, len(dice)) if len(dice) > 1 else float(k), index=dice.index)
        trials.scatter(x, dice, color="tab:blue", alpha=0.7, s=24)
        if s.best is not None:
            trials.scatter([x[s.best.name]], [s.best["best_val_dice"]], color="tab:red", marker="*", s=140, zorder=3)
    trials.set(xticks=range(len(sweeps)), title="each trial's best val_dice (star: the best trial)",
               ylabel="val_dice")
    trials.set_xticklabels(heads, rotation=15, fontsize=8)
    width = 0.27
    for j, (label, value) in enumerate((
            ("best trial val_dice", lambda s: s.best["best_val_dice"] if s.best is not None else np.nan),
            ("final val_dice", lambda s: s.final.get("best_val_dice", np.nan)),
            ("test Dice (mean)", lambda s: s.test["dice_mean"] if s.test else np.nan))):
        scores.bar(np.arange(len(sweeps)) + (j - 1) * width, [value(s) for s in sweeps], width, label=label)
    scores.set(xticks=range(len(sweeps)), ylim=(0, 1.15), yticks=np.linspace(0, 1, 6), title="scores")
    scores.set_xticklabels(heads, rotation=15, fontsize=8)
    scores.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    _save(fig, out)
