"""Ray Train wiring: the per-worker function and the TorchTrainer that runs it.

The loop itself lives in :mod:`lfa_ray.loop`; the Ray touches are marked [1]..[5].
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from lfa_ray import ray_internals
from lfa_ray.checkpoint import checkpoint_dir_name, load_state, save_state
from lfa_ray.config import Config, config_from_dict
from lfa_ray.console import VERBOSE, verbose
from lfa_ray.data import DecodedDataset, build_datasets, load_for
from lfa_ray.errors import UserError, stop_on_sigterm
from lfa_ray.loop import EpochResult, build, evaluated, fit, format_metrics, loader_workers, log, make_loaders, unwrap
from lfa_ray.runlog import RunLog
from lfa_ray.storage import Location
from lfa_ray.stream import Loader, Streamed, datasets, ingest_options

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
    from lfa_ray.checkpoint import init_weights

    return init_weights(cfg.train.init_from, cfg.model.features) if cfg.train.init_from else None


def data_for(cfg: Config, shared: SharedData | Streamed) -> SharedData | Streamed:
    """``shared``, or, for a config with another ``data.image_size`` (a searched one), its own load
    (or its own stream)."""
    if cfg.data.image_size == shared.size:
        return shared
    if isinstance(shared, Streamed):
        return shared.resized(cfg.data.image_size)
    return share(load_for(cfg, shared.root))


def train_func_per_worker(config: dict) -> None:
    """Run :func:`lfa_ray.loop.fit` on one Ray Train worker.

    ``config``: ``cfg`` (Config.to_dict()), ``data`` (an object-store reference to the
    :class:`lfa_ray.data.DecodedDataset` the driver loaded; None: the photos stream as the Ray
    Datasets ``train`` and ``val``, :mod:`lfa_ray.stream`), ``photos`` (streamed: the training and
    validation photos), optional ``run_dir``
    (rank 0 writes metrics.csv and TensorBoard there) and ``resume_from`` (a
    checkpoint directory used when Ray has no checkpoint of this run yet).
    """
    entered = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # Ray sets OMP_NUM_THREADS from the CPUs an actor holds only where it was unset: say it outright.
    torch.set_num_threads(cfg.scaling.cpus_per_worker)

    if config["data"] is None:  # [1] Data streamed by Ray Data: this worker's shard, and all of validation
        train_loader, val_loader = stream_loaders(cfg, config["photos"], rank, world)
    else:  # [1] Data: decoded once by the driver; each worker maps it from the object store and reads its shard.
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
    # lfa_ray's own share of a run's start (data mapped or streamed, loaders, model, resume); the rest of
    # the time from fit() to the first epoch is Ray's (controller, worker group, process group)
    setup_seconds = time.perf_counter() - entered

    def on_epoch(result: EpochResult) -> None:
        m = {**result.metrics, "setup_seconds": setup_seconds}
        if run_log is not None:
            run_log.log(m)
            if result.checkpoint is not None and (result.last or m["epoch"] % cfg.train.checkpoint_every == 0):
                shown = val_loader.shown() if config["data"] is None else val_ds
                run_log.log_overlays(evaluated(parts), shown, m["epoch"], device)
        if rank == 0 and config.get("echo", False):  # --verbose; the driver prints its own line (runs.EpochLines)
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


def stream_loaders(cfg: Config, photos: tuple[int, int], rank: int, world: int) -> tuple[Loader, Loader]:
    """A worker's loaders of streamed data: its split of the training stream, augmented here, and
    every ``world``-th photo of validation (``photos``: how many each stream has)."""
    from lfa_ray.augment import train_transform, val_transform

    common = dict(size=cfg.data.image_size, batch_size=cfg.train.batch_size, seed=cfg.train.seed * 1000)
    val = Loader(ray.train.get_dataset_shard("val"), val_transform(), photos=len(range(rank, photos[1], world)),
                 shuffle=False, keep=(rank, world), **common)
    train = Loader(ray.train.get_dataset_shard("train"), train_transform(cfg.train.aug_strength),
                   photos=photos[0] // world, shuffle=True, then=val, epochs=cfg.train.epochs, **common)
    return train, val


def cluster_address() -> Optional[str]:
    """The Ray cluster this process joins: RAY_ADDRESS, else the one ``ray start`` recorded on this
    machine (e.g. the head of cluster.yaml, for commands run there); None: start a local one
    (also with ``RAY_ADDRESS=local``)."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return None if env == "local" else env
    return ray_internals.recorded_address()


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
        ray_internals.quiet_driver()
        ray_internals.quiet_worker_start_warning()
        env["env_vars"].update(ray_internals.quiet_data_env())
    address = cluster_address()
    if address:
        _check_answers(address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=env)
        stop_on_sigterm()
        source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "recorded by ray start"
        print(f"cluster: joined the Ray cluster at {address} ({source})")
        return
    # a known dashboard port, told to every process of the job (ray_internals.API_SERVER says why)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env["env_vars"].update(ray_internals.local_cluster_env(f"http://127.0.0.1:{port}"))
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, dashboard_port=port,
             logging_level=logging.WARNING, log_to_driver=True, runtime_env=env)
    stop_on_sigterm()


def _gpu_word(n: float) -> str:
    return f"{n:g} GPU" + ("" if n == 1 else "s")


def check_resources(cfg: Config, streams: bool = False) -> float:
    """Decide where the training workers run and refuse what the cluster can never satisfy
    (Ray would wait forever); returns the GPUs each worker holds (0: CPU) and prints one line saying which.

    ``scaling.use_gpu: auto`` uses GPUs when the cluster has them. A cluster lfa_ray started itself
    is all there is; a cluster it joined (:func:`cluster_address`, e.g. one from cluster.yaml) may have an
    autoscaler that adds nodes on demand, so there a shortfall is only reported. ``streams``: Ray
    Data's tasks need a CPU no training worker holds.
    """
    s = cfg.scaling
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    biggest = max((n.get("CPU", 0) for n in alive), default=0)
    biggest_gpu = max((n.get("GPU", 0) for n in alive), default=0)
    wants_gpu = s.use_gpu is True or s.gpus_per_worker is not None or (s.use_gpu == "auto" and gpus > 0)
    per_worker = (s.gpus_per_worker or 1.0) if wants_gpu else 0.0
    need_cpus = s.num_workers * s.cpus_per_worker + streams
    need_gpus = s.num_workers * per_worker
    asked = ("scaling.use_gpu: true" if s.use_gpu is True else f"scaling.gpus_per_worker={s.gpus_per_worker:g}"
             if s.gpus_per_worker is not None else "scaling.use_gpu: auto")
    problem = None
    if need_cpus > cpus:
        problem = (f"scaling.num_workers={s.num_workers} x scaling.cpus_per_worker={s.cpus_per_worker} needs "
                   f"{need_cpus} CPUs" + (" (one for Ray Data's streaming)" if streams else "")
                   + f" but the Ray cluster has {cpus:g}; lower them, e.g. "
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


def alone(cfg: Config, streams: bool = False) -> Config:
    """``cfg`` for a run that has the cluster to itself (``train``, a sweep's final retrain): on a
    cluster lfa_ray started, each worker takes the cluster's CPUs shared by the workers (two torch
    threads train ~1.3x faster than one on a 2-core laptop; the profile's value is what each of the
    trials running side by side gets); on a joined cluster (its autoscaler sizes nodes by the profile)
    the profile's value. ``streams``: one CPU is left to Ray Data's tasks (:mod:`lfa_ray.stream`)."""
    s = cfg.scaling
    cpus = s.cpus_per_worker if cluster_address() else max(
        s.cpus_per_worker, int((ray.cluster_resources().get("CPU", 0) - streams) // s.num_workers))
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
    per epoch only with ``--verbose``: the driver prints one (:class:`lfa_ray.runs.EpochLines`; in a sweep
    :class:`lfa_ray.progress.Progress`)."""
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    ray_internals.fast_reports()
    data = data_for(cfg, data)
    streamed = isinstance(data, Streamed)
    return TorchTrainer(
        train_func_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "data": None if streamed else data.ref, "run_dir": run_dir,
                           "resume_from": resume_from, "init": init, "echo": verbose(),
                           "photos": (len(data.train), len(data.val)) if streamed else None},
        # Streamed: Ray Data reads and decodes; training's stream is split between the workers, validation's is not.
        **({"datasets": datasets(data), "dataset_config": DataConfig(datasets_to_split=["train"],
                                                                     execution_options=ingest_options())}
           if streamed else {}),
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
