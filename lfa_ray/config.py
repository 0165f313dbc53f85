"""The one profile schema shared by train, tune and the final retrain.

A profile is a YAML file (``tune_configs/*.yaml``) with the sections below.
Every key has a default, so a profile only names what it changes. Unknown
keys and wrong types are refused with a message that names the key.
``--set section.key=value`` overrides apply on top with the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from lfa_ray.errors import UserError


@dataclass
class DataConfig:
    path: Optional[str] = None  # null: synthetic cassettes, generated once into a cache
    image_size: int = 64
    val_fraction: float = 0.2
    test_fraction: float = 0.1  # held out, never used for selection; the final model is scored on it once
    split_seed: int = 42
    target: str = "window"  # window (the read window, the seed's ROI) | lines
    synthetic_n: int = 300  # how many synthetic cassettes when path is null
    # DataLoader processes per training worker; auto: 0 on CPU workers (the cores train the model),
    # scaling.cpus_per_worker on GPU workers (the training process mostly waits on the GPU)
    loader_workers: Union[int, str] = "auto"


@dataclass
class ModelConfig:
    features: list[int] = field(default_factory=lambda: [16, 32, 64, 128])


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1.0e-4
    weight_decay: float = 1.0e-6
    aug_strength: float = 1.0
    amp: str = "auto"  # auto (fp16+GradScaler on CUDA, bf16 on CPU) | bf16 | fp16 | off
    loss: str = "bce"  # bce (the seed's) | bce+dice
    grad_clip: Optional[float] = None
    lr_patience: int = 3
    lr_factor: float = 0.1
    early_stopping_patience: int = 10
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    compile: bool = False  # torch.compile the model (pays a compile at the start of every run)
    init_from: Optional[str] = None  # a model.pt / checkpoint / run / sweep (path or URI): start from its weights


@dataclass
class ScalingConfig:
    num_workers: int = 1
    use_gpu: Union[bool, str] = "auto"  # auto: GPUs when the Ray cluster has them, else CPU
    gpus_per_worker: Optional[float] = None  # null: 1 when GPUs are used; 0.25: four trials share a GPU
    cpus_per_worker: int = 1
    max_failures: int = 0  # restarts of a run's workers from its latest checkpoint after a worker/node dies


@dataclass
class SchedulerConfig:
    max_t: int = 12
    grace_period: int = 2
    reduction_factor: int = 3


@dataclass
class TuneConfig:
    num_samples: int = 12
    max_concurrent_trials: Optional[int] = None
    metric: str = "val_dice"
    mode: str = "max"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search_space: dict = field(
        default_factory=lambda: {
            "train.lr": {"loguniform": [1.0e-5, 1.0e-2]},
            "train.batch_size": {"choice": [4, 8, 16]},
            "train.aug_strength": {"uniform": [0.0, 1.0]},
        }
    )


@dataclass
class FinalConfig:
    epochs: int = 40


@dataclass
class StorageConfig:
    path: str = "results"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.target": ("window", "lines"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.loss": ("bce", "bce+dice"),
    "tune.mode": ("max", "min"),
}
POSITIVE = {
    "data.image_size", "data.synthetic_n", "train.epochs", "train.batch_size",
    "train.checkpoint_every", "train.keep_checkpoints", "train.early_stopping_patience",
    "scaling.num_workers", "scaling.cpus_per_worker", "final.epochs",
    "tune.scheduler.max_t", "tune.scheduler.grace_period",
}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a mapping"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked against the annotation ``tp``; raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for arg in args:
            try:
                return _coerce(key, value, arg, where)
            except UserError:
                continue
        raise UserError(f"{where}: {key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: {key} must be a non-empty list of {_type_name(item)}s, got {value!r}")
        return [_coerce(key, v, item, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted off/on as false/true (train.amp: off)
            return "on" if value else "off"
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise UserError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: {prefix or 'the profile'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            full = f"{prefix}.{key}" if prefix else key
            raise UserError(f"{where}: unknown key '{full}'; known keys here: {', '.join(sorted(known))}")
    kwargs = {}
    for name in known:
        if name not in raw:
            continue
        full = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], full, where)
        else:
            kwargs[name] = _coerce(full, raw[name], tp, where)
    return cls(**kwargs)


def check_values(cfg: Config, where: str) -> None:
    flat = _flatten(cfg.to_dict())
    for key, value in flat.items():  # nan and inf pass every comparison below, or fail one confusingly
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}: {key} must be a finite number, got {value}")
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise UserError(f"{where}: {key} must be one of {', '.join(allowed)}, got {flat[key]!r}")
    for key in POSITIVE:
        if flat[key] < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {flat[key]!r}")
    if cfg.data.loader_workers != "auto" and (isinstance(cfg.data.loader_workers, str) or cfg.data.loader_workers < 0):
        raise UserError(f"{where}: data.loader_workers must be 0 or more, or auto, got {cfg.data.loader_workers!r}")
    _check_gpus(cfg.scaling, where)
    if cfg.scaling.max_failures < -1:
        raise UserError(f"{where}: scaling.max_failures must be 0 or more (-1: no limit), "
                        f"got {cfg.scaling.max_failures}")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise UserError(f"{where}: data.val_fraction must be between 0 and 1, got {cfg.data.val_fraction}")
    if not 0.0 <= cfg.data.test_fraction < 1.0 or cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise UserError(f"{where}: data.test_fraction must be in [0, 1) and leave training images beside "
                        f"data.val_fraction ({cfg.data.val_fraction}), got {cfg.data.test_fraction}")
    if not 0.0 <= cfg.train.aug_strength <= 1.0:
        raise UserError(f"{where}: train.aug_strength must be in [0, 1], got {cfg.train.aug_strength}")
    if not 0 < cfg.train.lr <= 1:
        raise UserError(f"{where}: train.lr must be in (0, 1] (Adam diverges far below 1), got {cfg.train.lr}")
    if cfg.train.weight_decay < 0:
        raise UserError(f"{where}: train.weight_decay must be 0 or more, got {cfg.train.weight_decay}")
    if cfg.train.grad_clip is not None and cfg.train.grad_clip <= 0:
        raise UserError(f"{where}: train.grad_clip must be positive or null, got {cfg.train.grad_clip}")
    if not 0.0 < cfg.train.lr_factor < 1.0:
        raise UserError(f"{where}: train.lr_factor must be between 0 and 1, got {cfg.train.lr_factor}")
    if any(f < 1 for f in cfg.model.features):
        raise UserError(f"{where}: model.features must be positive widths, got {cfg.model.features}")
    smallest = 2 ** len(cfg.model.features)  # the UNET halves the image once per level down to its bottleneck
    if cfg.data.image_size < smallest:
        raise UserError(f"{where}: data.image_size={cfg.data.image_size} is too small for {len(cfg.model.features)} "
                        f"model levels (model.features); use at least {smallest}, e.g. --set data.image_size=64")


def _check_gpus(s: "ScalingConfig", where: str) -> None:
    if s.use_gpu not in (True, False, "auto"):
        raise UserError(f"{where}: scaling.use_gpu must be true, false or auto, got {s.use_gpu!r}")
    g = s.gpus_per_worker
    if g is None:
        return
    if not (0 < g <= 1 or (g > 1 and float(g).is_integer())):
        raise UserError(f"{where}: scaling.gpus_per_worker must be a fraction in (0, 1] (0.25: four trials "
                        f"share a GPU) or a whole number of GPUs, got {g}")
    if s.use_gpu is False:
        raise UserError(f"{where}: scaling.gpus_per_worker={g:g} but scaling.use_gpu is false; set "
                        f"scaling.use_gpu to true or auto, or remove scaling.gpus_per_worker")
    if g < 1 and s.num_workers > 1:
        raise UserError(f"{where}: scaling.gpus_per_worker={g:g} with scaling.num_workers={s.num_workers}: NCCL "
                        f"needs a whole GPU per worker of one run; use fractions for trials sharing a GPU "
                        f"(num_workers: 1) or set scaling.gpus_per_worker=1")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "search_space":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_overrides(items: list[str]) -> dict:
    """Turn ``["train.lr=1e-3", ...]`` into a nested dict; values are parsed as YAML."""
    nested: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {key}: cannot parse value {text!r}; write it as in YAML") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: conflicts with another --set of {part}")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "search_space":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path) -> dict:
    """A profile from a local path or a URI."""
    if "://" in str(path):
        from lfa_ray.storage import locate  # pyarrow only for URIs: the loop runs without it

        source = locate(path)
    else:
        source = Path(str(path)).expanduser()  # a local Location too
    if not source.is_file():
        raise UserError(f"{path}: profile not found; pass an existing file to --config (see tune_configs/)")
    try:
        text = source.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read profile ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{at}; fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a profile must be a mapping of sections (data:, train:, ...)")
    return raw


def default_profile() -> Path | None:
    """``tune_configs/default.yaml`` from the working directory, else the one beside the package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root / "tune_configs" / "default.yaml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                raw: dict | None = None, where: str = "") -> Config:
    """Load a profile (``None``: the default profile) or take ``raw``, apply ``--set`` overrides, validate."""
    if raw is None:
        if path is None:
            path = default_profile()
        raw = read_yaml(path) if path is not None else {}
        where = str(path) if path is not None else "built-in defaults"
    cfg = _build(Config, raw, "", where)
    check_values(cfg, where)
    if overrides:
        cfg = _build(Config, _merge(cfg.to_dict(), parse_overrides(overrides)), "", "--set")
        check_values(cfg, "--set")
    return cfg


def config_from_dict(raw: dict) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. inside a Ray worker)."""
    return _build(Config, raw, "", "config")


def dump_config(cfg: Config, path) -> None:
    from lfa_ray.storage import locate

    locate(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
