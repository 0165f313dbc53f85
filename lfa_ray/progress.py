"""The sweep's console: one line per trial event and a progress line, printed by the driver.

Ray Tune's own status table and Ray Train's per-report lines are off unless ``--verbose``
(:func:`lfa_ray.ray_train.init_ray`, :func:`lfa_ray.tune.make_tuner`); this callback says what a
user follows a sweep for::

    trial_002_68542bf1 started: lr=0.000443, batch_size=4, aug_strength=0.424
    trial_002_68542bf1 epoch 2/8: val_dice 0.4651 (trial best 0.4651)
    trial_002_68542bf1 stopped by ASHA after epoch 2: best val_dice 0.4651
    [3/10 trials done | best val_dice 0.6120 (trial_003_fdbe14fd) | 1m32s elapsed | ETA ~3m05s]
"""

from __future__ import annotations

import math
import time

from ray.tune import Callback

DONE = ("TERMINATED", "ERROR")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class Progress(Callback):
    """Prints trial events and the sweep's progress; ``max_t`` tells ASHA's cut from a full run."""

    def __init__(self, num_samples: int, metric: str, mode: str, max_t: int, time_budget_s: float | None = None):
        self.num_samples, self.metric, self.mode, self.max_t = num_samples, metric, mode, max_t
        self.time_budget_s = time_budget_s  # the sweep ends by then: the ETA is never beyond it
        self.started = time.monotonic()
        self.best: dict[str, float] = {}  # trial name -> its best metric so far

    def setup(self, **info):  # also when a sweep is resumed: elapsed counts from here
        self.started = time.monotonic()

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def _best_of(self, name: str) -> float:
        return self.best.get(name, math.nan)

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in sorted(trial.config.items()))
        print(f"{trial} started: {params}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        name = str(trial)
        if name not in self.best or self._better(value, self.best[name]):
            self.best[name] = value
        print(f"{name} epoch {result.get('epoch')}/{self.max_t}: {self.metric} {value:.4f} "
              f"(trial best {self.best[name]:.4f})", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = last.get("epoch", 0)
        best = self._best_of(str(trial))
        if epoch < self.max_t and not last.get("run_finished"):
            how = f"stopped by ASHA after epoch {epoch}"
        elif epoch < self.max_t:
            how = f"finished after epoch {epoch} (early stopping)"
        else:
            how = f"finished {epoch} epochs"
        print(f"{trial} {how}: best {self.metric} {best:.4f}", flush=True)
        self._progress(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        from ray import cloudpickle

        from lfa_ray.ray_internals import trial_error_file
        from lfa_ray.report import error_line

        cause = "see its error.txt"
        try:  # the error as Tune just pickled it in its staging folder (storage gets it later)
            with open(trial_error_file(trial), "rb") as f:
                cause = error_line(cloudpickle.load(f)) or cause
        except Exception:  # noqa: BLE001 - no pickle (an actor's death): the text trace is in error.txt
            pass
        print(f"{trial} failed: {cause}", flush=True)
        self._progress(trials, trial)

    def _progress(self, trials, trial) -> None:
        done = len({t.trial_id for t in trials if t.status in DONE} | {trial.trial_id})
        elapsed = time.monotonic() - self.started
        left = max(0, self.num_samples - done)
        eta = ""
        if left:
            seconds = elapsed / done * left
            if self.time_budget_s is not None and self.time_budget_s - elapsed < seconds:
                eta = f" | ETA ~{_duration(max(0.0, self.time_budget_s - elapsed))} (time budget)"
            else:
                eta = f" | ETA ~{_duration(seconds)} for the trials"
        line = f"[{done}/{self.num_samples} trials done"
        scored = {n: v for n, v in self.best.items() if not math.isnan(v)}
        if scored:
            leader = (max if self.mode == "max" else min)(scored, key=scored.get)
            line += f" | best {self.metric} {scored[leader]:.4f} ({leader})"
        print(f"{line} | {_duration(elapsed)} elapsed{eta}]", flush=True)
