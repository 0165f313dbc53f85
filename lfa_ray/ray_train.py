"""Ray Train wiring: the per-worker function and the TorchTrainer that runs it.

The loop itself lives in :mod:`lfa_ray.loop`; the Ray touches are marked [1]..[5].
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from lfa_ray.checkpoint import checkpoint_dir_name, load_state, save_state
from lfa_ray.config import Config, config_from_dict
from lfa_ray.console import VERBOSE, verbose
from lfa_ray.data import DecodedDataset, build_datasets, load_for
from lfa_ray.errors import UserError, stop_on_sigterm
from lfa_ray.loop import EpochResult, build, evaluated, fit, format_metrics, loader_workers, log, make_loaders, unwrap
from lfa_ray.runlog import RunLog, read_metrics
from lfa_ray.storage import Location

# Ray Train's controller collects each report on its poll interval (2 s by default),
# and ray.train.report blocks until then: with short epochs that is most of an epoch.
# 0.1 s keeps a report at a few ms (docs/PERFORMANCE.md). Propagated to the controller.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
SETUP_WORKER = "lfa_ray.console.setup_worker"  # Ray's logging set up in every worker process of the job


@dataclass(frozen=True)
class SharedData:
    """A loaded dataset put in Ray's object store once, for every worker of every run to map."""
    ref: ray.ObjectRef
    root: str
    size: int


def share(data: DecodedDataset) -> SharedData:
    return SharedData(ray.put(data), data.root, data.size)


def read_init(cfg: Config) -> Optional[dict]:
    """The weights of ``train.init_from`` (checked against ``model.features``), or None; read by the
    driver before Ray starts, then shared through the object store, so workers need no access to the file."""
    from lfa_ray.predict import init_weights

    return init_weights(cfg.train.init_from, cfg.model.features) if cfg.train.init_from else None


def data_for(cfg: Config, shared: SharedData) -> SharedData:
    """``shared``, or, for a config with another ``data.image_size`` (a searched one), its own load."""
    return shared if cfg.data.image_size == shared.size else share(load_for(cfg, shared.root))


def train_func_per_worker(config: dict) -> None:
    """Run :func:`lfa_ray.loop.fit` on one Ray Train worker.

    ``config``: ``cfg`` (Config.to_dict()), ``data`` (an object-store reference to the
    :class:`lfa_ray.data.DecodedDataset` the driver loaded), optional ``run_dir``
    (rank 0 writes metrics.csv and TensorBoard there) and ``resume_from`` (a
    checkpoint directory used when Ray has no checkpoint of this run yet).
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # Ray sets OMP_NUM_THREADS from the CPUs an actor holds only where it was unset: say it outright.
    torch.set_num_threads(cfg.scaling.cpus_per_worker)

    # [1] Data: decoded once by the driver; each worker maps it from the object store and reads its shard.
    train_ds, val_ds = build_datasets(cfg, ray.get(config["data"]), rank)
    workers = loader_workers(cfg.data.loader_workers, device, cfg.scaling.cpus_per_worker)
    train_loader, val_loader = make_loaders(train_ds, val_ds, batch_size=cfg.train.batch_size,
                                            seed=cfg.train.seed, rank=rank, world=world,
                                            loader_workers=workers, pin_memory=device.type == "cuda")
    # On a GPU, Ray copies each batch to the device on a side CUDA stream (from pinned memory).
    train_loader = ray.train.torch.prepare_data_loader(train_loader, add_dist_sampler=False)
    val_loader = ray.train.torch.prepare_data_loader(val_loader, add_dist_sampler=False)

    # [2] Model: DistributedDataParallel when there is more than one worker (then torch.compile, if asked).
    parts = build(cfg, device, wrap=ray.train.torch.prepare_model)

    # [3] Resume: Ray's own checkpoint of this run first (restarts), else --resume-from.
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(d, device)
    elif config.get("resume_from"):
        state = load_state(config["resume_from"], device)
    elif config.get("init") is not None:  # train.init_from: a new run starting from another model's weights
        unwrap(parts.model).load_state_dict(ray.get(config["init"]))
        if rank == 0:
            log.info("starting from the weights of %s", cfg.train.init_from)

    run_log = None
    if rank == 0 and config.get("run_dir"):
        run_log = RunLog(config["run_dir"], start_epoch=state["progress"]["epoch"] if state else 0)

    def on_epoch(result: EpochResult) -> None:
        m = result.metrics
        if run_log is not None:
            run_log.log(m)
            if result.checkpoint is not None and (result.last or m["epoch"] % cfg.train.checkpoint_every == 0):
                run_log.log_overlays(evaluated(parts), val_ds, m["epoch"], device)
        if rank == 0 and config.get("echo", False):  # --verbose; the driver prints its own line (EpochLines)
            log.info(format_metrics(m, cfg.train.epochs))
        # [4] Report every epoch (ASHA counts epochs); rank 0 attaches the checkpoint when due.
        if result.checkpoint is None:
            ray.train.report(m)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_state(result.checkpoint, tmp)
            ray.train.report(m, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None,
                             checkpoint_dir_name=checkpoint_dir_name(m["epoch"]))

    try:
        fit(cfg, parts, train_loader, val_loader, device, on_epoch=on_epoch, state=state)
    finally:
        if run_log is not None:
            run_log.close()


def cluster_address() -> Optional[str]:
    """The Ray cluster this process joins: RAY_ADDRESS, else the one ``ray start`` recorded on this
    machine (e.g. the head of cluster.yaml, for commands run there); None: start a local one
    (also with ``RAY_ADDRESS=local``)."""
    from ray._common.utils import get_ray_address_file

    env = os.environ.get("RAY_ADDRESS")
    if env:
        return None if env == "local" else env
    try:
        return Path(get_ray_address_file(None)).read_text().strip() or None
    except OSError:
        return None


def _check_answers(address: str) -> None:
    """Refuse, within seconds, a cluster address nothing listens on (Ray itself retries forever)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError:
        if os.environ.get("RAY_ADDRESS"):
            raise UserError(f"RAY_ADDRESS={address}: no Ray cluster answers there; start it (ray start, ray up), "
                            f"fix RAY_ADDRESS, or unset it to run on a fresh local cluster") from None
        raise UserError(f"the Ray cluster recorded at {address} by an earlier `ray start` does not answer; clear "
                        f"the record with `ray stop --force`, or run on a fresh local cluster with "
                        f"RAY_ADDRESS=local") from None


def init_ray(num_cpus: Optional[int] = None, num_gpus: Optional[float] = None) -> None:
    """Join the cluster of :func:`cluster_address`, or start a local one (with all of this machine's
    CPUs and GPUs unless told otherwise)."""
    if ray.is_initialized():
        return
    env = {"env_vars": {VERBOSE: "1" if verbose() else "0"}, "worker_process_setup_hook": SETUP_WORKER}
    if not verbose():
        # a default Ray states at every start, not a problem: lfa_ray keeps token auth on
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # Tune's newer console prints its experiment table, a TensorBoard hint (naming a staging folder,
        # not the experiment) and trial errors even when silenced; the classic one at verbose 0 prints
        # nothing, and lfa_ray.progress says what happens. Trial errors are still logged in full.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    address = cluster_address()
    if address:
        _check_answers(address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=env)
        stop_on_sigterm()
        source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "recorded by ray start"
        print(f"cluster: joined the Ray cluster at {address} ({source})")
        return
    # Train V2's placement-group cleaner finds the dashboard by auto-detection, which fails
    # ("Found multiple active Ray instances") when another Ray runs on this machine; the
    # placement groups of trials ASHA stops are then never freed and later trials wait forever.
    # So the local cluster gets a known dashboard port and every process of this job is told it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    os.environ["RAY_API_SERVER_ADDRESS"] = url
    # No node of a cluster on this machine is preempted: Train's preemption watcher (an actor per run,
    # for spot nodes of a cloud cluster) would only log Ray's warning about its restart arguments.
    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    env["env_vars"].update(RAY_API_SERVER_ADDRESS=url, RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0")
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, dashboard_port=port,
             logging_level=logging.WARNING, log_to_driver=True, runtime_env=env)
    stop_on_sigterm()


def _gpu_word(n: float) -> str:
    return f"{n:g} GPU" + ("" if n == 1 else "s")


def check_resources(cfg: Config) -> float:
    """Decide where the training workers run and refuse what the cluster can never satisfy
    (Ray would wait forever); returns the GPUs each worker holds (0: CPU) and prints one line saying which.

    ``scaling.use_gpu: auto`` uses GPUs when the cluster has them. A cluster lfa_ray started itself
    is all there is; a cluster it joined (:func:`cluster_address`, e.g. one from cluster.yaml) may have an
    autoscaler that adds nodes on demand, so there a shortfall is only reported.
    """
    s = cfg.scaling
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    biggest = max((n.get("CPU", 0) for n in alive), default=0)
    biggest_gpu = max((n.get("GPU", 0) for n in alive), default=0)
    wants_gpu = s.use_gpu is True or s.gpus_per_worker is not None or (s.use_gpu == "auto" and gpus > 0)
    per_worker = (s.gpus_per_worker or 1.0) if wants_gpu else 0.0
    need_cpus = s.num_workers * s.cpus_per_worker
    need_gpus = s.num_workers * per_worker
    asked = ("scaling.use_gpu: true" if s.use_gpu is True else f"scaling.gpus_per_worker={s.gpus_per_worker:g}"
             if s.gpus_per_worker is not None else "scaling.use_gpu: auto")
    problem = None
    if need_cpus > cpus:
        problem = (f"scaling.num_workers={s.num_workers} x scaling.cpus_per_worker={s.cpus_per_worker} needs "
                   f"{need_cpus} CPUs but the Ray cluster has {cpus:g}; lower them, e.g. "
                   f"--set scaling.num_workers={max(1, int(cpus // s.cpus_per_worker)) or 1} "
                   f"--set scaling.cpus_per_worker={max(1, min(s.cpus_per_worker, int(cpus)))}")
    elif wants_gpu and gpus == 0:
        fix = ("--set scaling.use_gpu=auto (CPU when there is no GPU)" if s.use_gpu is True
               else "--set scaling.gpus_per_worker=null to train on CPU")
        problem = f"{asked} needs GPUs but the Ray cluster has 0; use {fix}"
    elif need_gpus > gpus + 1e-9:
        problem = (f"scaling.num_workers={s.num_workers} x {_gpu_word(per_worker)} per worker needs "
                   f"{_gpu_word(need_gpus)} but the Ray cluster has {gpus:g}; "
                   f"use --set scaling.num_workers={max(1, int(gpus // per_worker))}")
    elif s.cpus_per_worker > biggest:
        problem = (f"scaling.cpus_per_worker={s.cpus_per_worker} is more than any node has ({biggest:g}); "
                   f"use --set scaling.cpus_per_worker={int(biggest)}")
    elif per_worker > biggest_gpu:
        problem = (f"scaling.gpus_per_worker={per_worker:g} is more than any node has ({biggest_gpu:g}); "
                   f"use --set scaling.gpus_per_worker={biggest_gpu:g}")
    if problem and cluster_address():
        print(f"note: {problem.split('; ')[0]} right now; training waits for the cluster's autoscaler "
              f"to add nodes (and waits forever if its node types cannot provide them)")
    elif problem:
        raise UserError(problem)
    if per_worker:
        print(f"devices: GPU, {_gpu_word(per_worker)} per training worker ({asked}; the Ray cluster has {gpus:g})")
    else:
        why = "scaling.use_gpu: false" if s.use_gpu is False else "no GPU in the Ray cluster"
        print(f"devices: CPU, {s.cpus_per_worker} per training worker ({why})")
    return per_worker


def alone(cfg: Config) -> Config:
    """``cfg`` for a run that has the cluster to itself (``train``, a sweep's final retrain): on a
    cluster lfa_ray started, each worker takes the cluster's CPUs shared by the workers (two torch
    threads train ~1.3x faster than one on a 2-core laptop; the profile's value is what each of the
    trials running side by side gets); on a joined cluster (its autoscaler sizes nodes by the profile)
    the profile's value."""
    s = cfg.scaling
    cpus = s.cpus_per_worker if cluster_address() else max(
        s.cpus_per_worker, int(ray.cluster_resources().get("CPU", 0) // s.num_workers))
    raw = cfg.to_dict()
    raw["scaling"]["cpus_per_worker"] = cpus
    return config_from_dict(raw)


def make_trainer(cfg: Config, *, data: SharedData, storage: Location, name: str, gpus_per_worker: float = 0.0,
                 run_dir: Optional[str] = None, resume_from: Optional[str] = None,
                 init: Optional[ray.ObjectRef] = None, callbacks: Optional[list] = None, trial: bool = False
                 ) -> TorchTrainer:
    """A TorchTrainer for one training run of ``cfg`` on ``data``, stored at ``storage/name``
    (a local folder or object storage); ``run_dir`` (metrics.csv and TensorBoard) and ``resume_from``
    are paths or URIs.
    ``gpus_per_worker`` is what :func:`check_resources` decided (0: CPU workers); ``init`` the
    weights of ``train.init_from`` in the object store (``ray.put(read_init(cfg))``); ``trial``: a
    sweep's trial (Train's warnings about a run ASHA stopped are off). The workers print their line
    per epoch only with ``--verbose``: the driver prints one (:class:`EpochLines`; in a sweep
    :class:`lfa_ray.progress.Progress`)."""
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    return TorchTrainer(
        train_func_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "data": data_for(cfg, data).ref, "run_dir": run_dir,
                           "resume_from": resume_from, "init": init,
                           "echo": verbose()},
        # [5] Scaling and storage: N workers (gloo on CPU, nccl on GPU); the best K checkpoints by val_dice.
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name, **storage.ray_storage(), callbacks=callbacks,
            # A dead worker or node (a reclaimed spot instance) restarts the workers from the latest checkpoint.
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                               checkpoint_score_attribute="val_dice",
                                               checkpoint_score_order="max"),
            # A trial that ASHA stops ends its Train run abruptly, and Train warns (with a traceback)
            # that the workers' shutdown failed: quiet in a sweep, unless --verbose.
            logging_config=LoggingConfig(log_level="ERROR" if trial and not verbose() else "WARNING"),
        ),
    )


class EpochLines:
    """The driver's line per epoch of a run (``final epoch 3/23: val_dice 0.6120 (best 0.6120), ...``),
    read from the run's ``metrics.csv`` as its rank-0 worker writes it; only the epochs this attempt
    trains (rows written after it started)."""

    def __init__(self, run_dir: Location, epochs: int, label: str = ""):
        self.metrics, self.epochs, self.label = run_dir / "metrics.csv", epochs, label
        self.since = time.time()
        self.every = 1.0 if run_dir.is_local else 5.0  # object storage: a GET per look
        self.looked = 0.0
        self.printed: set[int] = set()

    def poll(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.looked < self.every:
            return
        self.looked = time.monotonic()
        try:
            rows = read_metrics(self.metrics)
        except (OSError, ValueError, KeyError):  # not there yet, or caught mid-write: the next look
            return
        for r in rows:
            e = int(r["epoch"])
            if r.get("time", 0) >= self.since and e not in self.printed:
                self.printed.add(e)
                print(f"{self.label}epoch {e}/{self.epochs}: val_dice {r['val_dice']:.4f} (best "
                      f"{r['best_val_dice']:.4f}), train_loss {r['train_loss']:.4f}, {r['epoch_seconds']:.1f}s, "
                      f"{r['images_per_second']:.0f} img/s", flush=True)


def run_trainer(trainer: TorchTrainer, lines: Optional[EpochLines] = None):
    """``trainer.fit()``, stoppable with Ctrl-C: it runs in a helper thread (so Ray Train's own
    SIGINT handler, which exits without a word, stays out); on Ctrl-C Ray is shut down, which
    stops the workers at once and keeps every checkpoint, and KeyboardInterrupt is raised.
    ``lines``: print each epoch meanwhile."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="lfa_ray-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
            if lines is not None:
                lines.poll()
    except KeyboardInterrupt:
        ray.shutdown()
        raise
    if lines is not None:
        lines.poll(force=True)
    if "error" in box:
        raise box["error"]
    return box["result"]


def user_error(exc: BaseException) -> Optional[UserError]:
    """The UserError a training worker raised (e.g. divergence), if that is why the run failed."""
    return next((e for e in (getattr(exc, "worker_failures", None) or {}).values() if isinstance(e, UserError)), None)


def disk_full(exc: BaseException) -> bool:
    """Whether a run failed for want of disk space (ENOSPC, wherever in the workers or Ray it arose)."""
    texts = [str(exc), *(str(e) for e in (getattr(exc, "worker_failures", None) or {}).values())]
    return any("No space left on device" in t or "[Errno 28]" in t for t in texts)


def failure_line(exc: BaseException) -> str:
    """One line for a failed TorchTrainer run: a worker's own UserError as raised, else the first
    line of what failed (a dead worker, a crash)."""
    if (cause := user_error(exc)) is not None:
        return str(cause)
    failures = list((getattr(exc, "worker_failures", None) or {}).values())
    err = failures[0] if failures else exc
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
