"""Experiment tracking beyond TensorBoard: an MLflow server (``lfa_ray[mlflow]``) and W&B (``lfa_ray[wandb]``).

``tracking.mlflow_uri`` (else ``MLFLOW_TRACKING_URI``) sends a sweep to MLflow as one parent run
with a child run per trial (its searched params; every epoch's metrics, the epoch as MLflow's step;
FINISHED or FAILED at its end, tagged ``stopped_early`` where ASHA stopped it) and one for the final
retrain (every profile key as a param, every epoch, the test scores, ``model.pt`` and
``summary.md`` as artifacts); ``train`` is one run of the same kind. ``tracking.experiment``
names the MLflow experiment (default: the sweep's or run's name).

Each run carries the tag ``lfa_ray.run``, the folder it records, and is found again by it: a
resumed sweep or run continues its runs rather than adding new ones, and epochs already logged
are not logged again. Every call to the server goes through :meth:`MLflowRuns._call`: a server
that stops answering mid-sweep costs one ``note:`` line, training goes on, and its runs there
keep the tag ``lfa_ray.complete=false`` (a run closed normally gets ``true``).

Ray's ``MLflowLoggerCallback`` does not fit a sweep that must survive restarts and a lost server:
its trial-to-run map lives in the driver's memory (a resumed sweep opens a second run per trial),
an error from the server raises inside Tune's callback and ends the sweep, a failed lookup falls
back to MLflow's global active run, it sends one request per metric per epoch, and it has no
parent run. :class:`MLflowTrials` is a Tune callback over ``MlflowClient`` instead.

``tracking.wandb: true`` logs each trial through Ray's ``WandbLoggerCallback`` (one W&B run per
trial, its id the trial's, continued on resume), grouped by the sweep's name in the project
``tracking.experiment``; the final retrain and ``train`` runs are W&B runs of that group, logged
from the driver. ``WANDB_MODE=offline`` needs no account: the runs are files, in ``<sweep>/wandb/``
(or ``<run>/wandb/``) on local storage, to ``wandb sync``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ray.air.integrations.wandb import WandbLoggerCallback  # imports wandb where it is installed
from ray.tune import Callback

from lfa_ray.config import Config, flat_keys
from lfa_ray.errors import Stopped, UserError
from lfa_ray.storage import Location

RUN_TAG = "lfa_ray.run"  # the folder a run records: how a resumed sweep finds its runs again
COMPLETE_TAG = "lfa_ray.complete"
# lfa_ray's requests give up within seconds (MLflow's defaults retry for minutes on a lost server)
# and print no run URLs; W&B prints nothing; a user's own settings win
_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "WANDB_SILENT": "true"}


def mlflow_uri(cfg: Config) -> Optional[str]:
    """``tracking.mlflow_uri``, else ``MLFLOW_TRACKING_URI`` where MLflow is installed (set for other
    tools, it does not make lfa_ray need MLflow: :func:`check` notes it)."""
    import importlib.util

    env = os.environ.get("MLFLOW_TRACKING_URI")
    return cfg.tracking.mlflow_uri or (env if env and importlib.util.find_spec("mlflow") else None)


def experiment(cfg: Config, folder: Location) -> str:
    return cfg.tracking.experiment or folder.name


def check(cfg: Config) -> None:
    """Refuse tracking that cannot work, in one line, before Ray starts: MLflow or W&B not
    installed, an MLflow server that does not answer, W&B online without a login."""
    if os.environ.get("MLFLOW_TRACKING_URI") and not mlflow_uri(cfg):
        print("note: MLFLOW_TRACKING_URI is set but MLflow is not installed here, so this is not tracked there "
              "(pip install 'lfa_ray[mlflow]' to track it)")
    if not (mlflow_uri(cfg) or cfg.tracking.wandb):
        return
    _settings()  # before Ray starts: its workers (W&B's loggers) inherit them
    if uri := mlflow_uri(cfg):
        key = "tracking.mlflow_uri" if cfg.tracking.mlflow_uri else "MLFLOW_TRACKING_URI"
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise UserError(f"{key} is {uri} but MLflow is not installed; pip install 'lfa_ray[mlflow]', "
                            f"or set tracking.mlflow_uri: null") from None
        if "://" not in uri and not uri.startswith(("databricks", "file:")):
            raise UserError(f"{key} {uri}: not a tracking URI; write it as http://HOST:PORT")
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure to reach it: one line
            text = str(exc)
            why = ("nothing listens there" if "Max retries exceeded" in text or "Connection refused" in text
                   else _first_line(exc))
            raise UserError(f"{key} {uri}: no MLflow server answers ({why}); "
                            f"start it (mlflow server --host 127.0.0.1 --port 5000) or fix the URI") from None
    if cfg.tracking.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("tracking.wandb is true but W&B is not installed; pip install 'lfa_ray[wandb]', "
                            "or set tracking.wandb: false") from None
        if os.environ.get("WANDB_MODE") not in ("offline", "disabled") and not _wandb_login():
            raise UserError("tracking.wandb is true but W&B has no login here; run `wandb login`, set "
                            "WANDB_API_KEY, or set WANDB_MODE=offline to keep the runs as local files")


def _settings() -> None:
    for name, value in _ENV.items():
        os.environ.setdefault(name, value)


def _wandb_login() -> bool:
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def test_scores(summary: Optional[dict]) -> dict:
    """The numbers of a test split's ``summary.json`` (:func:`lfa_ray.evaluate.score_test`), as ``test_*``."""
    return {f"test_{k}": v for k, v in (summary or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _params(cfg: Config) -> dict:
    return {k: str(v) for k, v in flat_keys(cfg.to_dict()).items()}


class MLflowRuns:
    """lfa_ray's runs on one MLflow server and experiment. Every call goes through :meth:`_call`:
    after the first failure (a lost server) it prints one note and does nothing more."""

    def __init__(self, uri: str, experiment: str):
        _settings()  # requests that give up in seconds
        self.uri, self.experiment = uri, experiment
        self.lost = False
        self.logged: dict[str, int] = {}  # run id -> the last epoch it has
        self._client = self._experiment_id = None

    def _call(self, fn, *args, **kwargs):
        if self.lost:
            return None
        try:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(self.uri)
                found = self._client.get_experiment_by_name(self.experiment)
                self._experiment_id = (found.experiment_id if found is not None
                                       else self._client.create_experiment(self.experiment))
            return fn(self._client, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking never stops training
            self.lost = True
            print(f"note: MLflow at {self.uri} stopped answering ({_first_line(exc)}); the work goes on without "
                  f"it, and its runs there stay incomplete ({COMPLETE_TAG}=false)", flush=True)
            return None

    def open(self, folder: Location, name: str, *, kind: str, parent: Optional[str] = None,
             params: Optional[dict] = None, resume: bool = True) -> Optional[str]:
        """The run recording ``folder`` (under ``parent``): found again by its tag and set RUNNING,
        else created with ``params``. ``resume`` false: a run found is of an earlier folder of that
        name (since deleted or reset); it is re-tagged ``<folder> (replaced)`` and a new run made.
        Its id (None once the server is lost)."""
        def do(client) -> str:
            found = client.search_runs([self._experiment_id], _tagged(folder, parent), max_results=1)
            if found and not resume:
                client.set_tag(found[0].info.run_id, RUN_TAG, f"{folder.uri} (replaced)")
                found = []
            if found:
                run = found[0]
                client.update_run(run.info.run_id, status="RUNNING")
                client.set_tag(run.info.run_id, COMPLETE_TAG, "false")
                self.logged[run.info.run_id] = int(run.data.metrics.get("epoch", 0))
                return run.info.run_id
            tags = {RUN_TAG: folder.uri, "lfa_ray.kind": kind, COMPLETE_TAG: "false"}
            if parent:
                tags["mlflow.parentRunId"] = parent
            run_id = client.create_run(self._experiment_id, run_name=name, tags=tags).info.run_id
            if params:
                from mlflow.entities import Param

                items = [Param(k, v[:6000]) for k, v in params.items()]
                for i in range(0, len(items), 100):  # MLflow takes 100 params a request
                    client.log_batch(run_id, params=items[i:i + 100])
            self.logged[run_id] = 0
            return run_id

        return self._call(do)

    def epochs(self, run_id: Optional[str], rows: list[dict]) -> None:
        """Each row of ``metrics.csv`` (or a trial's report) the run lacks: its metrics at step ``epoch``."""
        from lfa_ray.runlog import SCALARS

        new = [r for r in rows if int(r["epoch"]) > self.logged.get(run_id, 0)] if run_id else []
        if not new:
            return

        def do(client) -> None:
            from mlflow.entities import Metric

            for r in new:
                e = int(r["epoch"])
                ms = int(float(r.get("time") or time.time()) * 1000)
                client.log_batch(run_id, metrics=[Metric(k, float(r[k]), ms, e) for k in ("epoch", *SCALARS)
                                                  if r.get(k) is not None])
                self.logged[run_id] = e

        self._call(do)

    def scores(self, run_id: Optional[str], values: dict, tags: Optional[dict] = None) -> None:
        """End-of-run figures (test scores, a sweep's best) and tags."""
        def do(client) -> None:
            from mlflow.entities import Metric, RunTag

            client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()],
                             tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

        if run_id:
            self._call(do)

    def artifact(self, run_id: Optional[str], file: Location) -> None:
        def do(client) -> None:
            if file.is_local:
                client.log_artifact(run_id, str(file.local))
                return
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / file.name
                local.write_bytes(file.read_bytes())
                client.log_artifact(run_id, str(local))

        if run_id and file.is_file():
            self._call(do)

    def close(self, run_id: Optional[str], status: str = "FINISHED") -> None:
        """End the run: FINISHED (or FAILED, KILLED), and complete where it ended normally."""
        def do(client) -> None:
            if status == "FINISHED":
                client.set_tag(run_id, COMPLETE_TAG, "true")
            client.set_terminated(run_id, status)

        if run_id:
            self._call(do)

    def find(self, folder: Location) -> Optional[str]:
        """The id of the run recording ``folder`` (None: none, or the server is lost)."""
        def do(client) -> Optional[str]:
            found = client.search_runs([self._experiment_id], _tagged(folder), max_results=1)
            return found[0].info.run_id if found else None

        return self._call(do)


def _tagged(folder: Location, parent: Optional[str] = None) -> str:
    """MLflow's search filter for the run recording ``folder`` (under ``parent``)."""
    key = folder.uri.replace("\\", "\\\\").replace("'", "\\'")
    return f"tags.`{RUN_TAG}` = '{key}'" + (f" and tags.`mlflow.parentRunId` = '{parent}'" if parent else "")


def log_export(model: Location, exported: Path) -> None:
    """Attach a file exported from ``model`` (a run's or a sweep's final ``model.pt``) to the MLflow run
    that trained it, where that run's profile tracks to MLflow (``lfa_ray.export``)."""
    from lfa_ray.checkpoint import FINAL, MODEL_FILE
    from lfa_ray.config import load_config
    from lfa_ray.storage import locate

    folder = model.parent
    if model.name != MODEL_FILE or not (folder / "config.yaml").is_file():
        return
    cfg = load_config(folder / "config.yaml")
    if not (uri := mlflow_uri(cfg)):
        return
    top = folder.parent if folder.name == FINAL and (folder.parent / "config.yaml").is_file() else folder
    runs = MLflowRuns(uri, experiment(cfg, top))
    if run_id := runs.find(folder):
        runs.artifact(run_id, locate(exported.resolve()))
        if not runs.lost:
            print(f"logged {exported.name} to the MLflow run of {folder} ({uri})")


class MLflowTrials(Callback):
    """A sweep's trials as child runs of its parent run (found by its tag ``lfa_ray.run``, the
    sweep's folder). Picklable: Tune keeps it with the sweep and calls the copy it restores, which
    finds the runs again by their tags."""

    def __init__(self, uri: str, experiment: str, exp_dir: Location):
        self.uri, self.experiment_name, self.exp_dir = uri, experiment, exp_dir
        self.runs: Optional[MLflowRuns] = None
        self.parent: Optional[str] = None
        self.ids: dict[str, Optional[str]] = {}

    def __getstate__(self) -> dict:  # no client or ids in the pickled sweep
        return {**self.__dict__, "runs": None, "parent": None, "ids": {}}

    def setup(self, **info) -> None:
        self.runs = MLflowRuns(self.uri, self.experiment_name)
        self.parent = self.runs.find(self.exp_dir)  # opened by the driver (Tracking.sweep) before Tune starts

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        name = trial.path.rstrip("/").rsplit("/", 1)[-1]  # its folder: lfa_ray.tune.trial_name's
        params = {k: str(v) for k, v in (trial.config or {}).items()}
        self.ids[trial.trial_id] = self.runs.open(self.exp_dir / name, name, kind="trial", parent=self.parent,
                                                  params=params)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if "epoch" in result:
            self.runs.epochs(self.ids.get(trial.trial_id), [result])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self.ids.pop(trial.trial_id, None)
        last = trial.last_result or {}
        self.runs.scores(run_id, {}, {"stopped_early": bool("epoch" in last and not last.get("run_finished"))})
        self.runs.close(run_id)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        from lfa_ray.report import error_line

        run_id = self.ids.pop(trial.trial_id, None)
        self.runs.scores(run_id, {}, {"error": error_line(trial.get_error())[:5000]})
        self.runs.close(run_id, "FAILED")


class WandbTrials(WandbLoggerCallback):
    """Ray's W&B callback, which also ends the W&B runs of the trials a stopped sweep leaves running
    (:func:`lfa_ray.ray_internals.end_wandb_runs`) before it waits for them."""

    def on_experiment_end(self, trials: list, **info) -> None:
        from lfa_ray.ray_internals import end_wandb_runs

        end_wandb_runs(self)
        super().on_experiment_end(trials, **info)


def _wandb_id(folder: Location, new: Optional[float]) -> str:
    """The W&B run id of the run recording ``folder`` (``new``: a time, for a new run of that folder)."""
    return hashlib.sha1(f"{folder.uri} {new or ''}".encode()).hexdigest()[:16]


class Tracking:
    """A command's tracking, on the driver: nothing, MLflow, W&B, or both (``tracking.*``)."""

    def __init__(self, cfg: Config, top: Location):
        """``top``: the sweep's or the train run's folder (its name: the default experiment)."""
        self.cfg, self.top = cfg, top
        self.uri = mlflow_uri(cfg)
        self.experiment = experiment(cfg, top)
        self.mlflow = MLflowRuns(self.uri, self.experiment) if self.uri else None
        # W&B's files (offline: the runs to sync) go to <top>/wandb/ on local storage, else to W&B's default
        self.wandb_dir = str(top.local) if top.is_local else None

    def tune_callbacks(self) -> list:
        callbacks: list = []
        if self.mlflow:
            callbacks.append(MLflowTrials(self.uri, self.experiment, self.top))
        if self.cfg.tracking.wandb:
            # W&B writes into the sweep's own folder, not Tune's staging copy of a trial's (which is
            # copied at the trial's end, before W&B has finished writing)
            callbacks.append(WandbTrials(project=self.experiment, group=self.top.name, resume="allow",
                                         dir=self.wandb_dir))
        return callbacks

    @contextmanager
    def sweep(self, resume: bool) -> Iterator[Optional[str]]:
        """The sweep's MLflow parent run (``resume``: found again; None without MLflow), closed
        KILLED or FAILED where the block raises; :meth:`close_sweep` ends it otherwise."""
        parent = (self.mlflow.open(self.top, self.top.name, kind="sweep", params=_params(self.cfg), resume=resume)
                  if self.mlflow else None)
        try:
            yield parent
        except BaseException as exc:
            if self.mlflow:
                self.mlflow.close(parent, _status(exc))
            raise

    def close_sweep(self, parent: Optional[str], scores: dict, *files: Location) -> None:
        if self.mlflow:
            self.mlflow.scores(parent, scores)
            for f in files:
                self.mlflow.artifact(parent, f)
            self.mlflow.close(parent)

    @contextmanager
    def run(self, folder: Location, cfg: Config, *, kind: str, parent: Optional[str] = None,
            resume: bool = True) -> Iterator["Run"]:
        """A training run (``train``, a sweep's final retrain) on every tracker, FINISHED when the
        block ends, else KILLED (stopped) or FAILED; ``resume``: as :meth:`MLflowRuns.open`."""
        name = folder.name if kind == "train" else f"{self.top.name}/{folder.name}"
        run = Run(self, folder, cfg, kind=kind, parent=parent, name=name, resume=resume)
        try:
            yield run
        except BaseException as exc:
            run.close(_status(exc))
            raise
        run.close("FINISHED")


def _status(exc: BaseException) -> str:
    return "KILLED" if isinstance(exc, (Stopped, KeyboardInterrupt)) else "FAILED"


class Run:
    """One training run on the trackers: fed every epoch (:meth:`epochs`, from ``metrics.csv``),
    then its scores and files."""

    def __init__(self, tracking: Tracking, folder: Location, cfg: Config, *, kind: str, parent: Optional[str],
                 name: str, resume: bool):
        self.mlflow = tracking.mlflow
        self.id = (self.mlflow.open(folder, name, kind=kind, parent=parent, params=_params(cfg), resume=resume)
                   if self.mlflow else None)
        self.wandb = None
        if cfg.tracking.wandb:
            import wandb

            self.wandb = wandb.init(project=tracking.experiment, group=tracking.top.name, name=name, job_type=kind,
                                    id=_wandb_id(folder, None if resume else time.time()), resume="allow",
                                    config=_params(cfg),
                                    dir=tracking.wandb_dir, reinit="create_new")
        self.wandb_epoch = 0

    def epochs(self, rows: list[dict]) -> None:
        from lfa_ray.runlog import SCALARS

        if self.mlflow:
            self.mlflow.epochs(self.id, rows)
        for r in rows:
            if self.wandb is not None and int(r["epoch"]) > self.wandb_epoch:
                self.wandb_epoch = int(r["epoch"])
                self.wandb.log({k: float(r[k]) for k in SCALARS if r.get(k) is not None}, step=self.wandb_epoch)

    def finish(self, folder: Location, model: Location, test: Optional[dict], *files: Location) -> None:
        """The run's every epoch (``folder/metrics.csv``: those a resumed command did not train too),
        its test scores, its model and ``files``."""
        from lfa_ray.runlog import read_metrics

        self.epochs(read_metrics(folder / "metrics.csv"))
        scores = test_scores(test)
        if self.mlflow:
            self.mlflow.scores(self.id, scores)
            for f in (model, *files):
                self.mlflow.artifact(self.id, f)
        if self.wandb is not None:
            self.wandb.summary.update(scores)

    def close(self, status: str) -> None:
        if self.mlflow:
            self.mlflow.close(self.id, status)
        if self.wandb is not None:
            self.wandb.finish(exit_code=0 if status == "FINISHED" else 1)
