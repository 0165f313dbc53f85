"""The one profile schema shared by train, tune and the final retrain.

A profile is a YAML file (``tune_configs/*.yaml``) with the sections below.
Every key has a default, so a profile only names what it changes. Unknown
keys and wrong types are refused with a message that names the key.
``--set section.key=value`` overrides apply on top with the same checks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from lfa_ray.errors import UserError


def key(default: Any, *, choices: tuple = (), minimum: float | None = None, interval: str | None = None,
        rule: Optional[Callable[[Any], Optional[str]]] = None, hint: str = "") -> Any:
    """A profile key: its default and its rules, declared beside the field.

    ``choices``: the allowed values (for a key that also takes a number: the allowed words);
    ``minimum``: the smallest number allowed; ``interval``: e.g. ``"(0, 1]"``; ``rule``: a check
    returning what is wrong with a value (or None); ``hint``: added to the refusal. ``None`` always
    passes for an ``Optional`` key. Rules that relate two keys live in :func:`check_relations`.
    """
    meta = {"choices": choices, "minimum": minimum, "interval": interval, "rule": rule, "hint": hint}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _fraction_or_whole(g: float) -> Optional[str]:
    if 0 < g <= 1 or (g > 1 and float(g).is_integer()):
        return None
    return "must be a fraction in (0, 1] (0.25: four trials share a GPU) or a whole number of GPUs"


# The defaults are the default profile (tune_configs/default.yaml lists them with the reasons; a test
# keeps the two equal), so an install without tune_configs/ runs the same sweep.
@dataclass
class DataConfig:
    path: Optional[str] = key(None)  # null: synthetic cassettes, generated once into a cache
    image_size: int = key(96, minimum=1)
    val_fraction: float = key(0.2, interval="(0, 1)")
    test_fraction: float = key(0.1, interval="[0, 1)")  # held out, never used for selection; scored once
    split_seed: int = key(42)
    target: str = key("window", choices=("window", "lines"))  # the read window (the original's ROI) | lines
    synthetic_n: int = key(1200, minimum=1)  # how many synthetic cassettes when path is null
    # DataLoader processes per training worker; auto: 0 on CPU workers (the cores train the model),
    # scaling.cpus_per_worker on GPU workers (the training process mostly waits on the GPU)
    loader_workers: Union[int, str] = key("auto", choices=("auto",), minimum=0)
    # stream the photos to the workers with Ray Data instead of decoding them all on the driver into Ray's
    # object store; auto: when the decoded set is over a quarter of a node's object store (docs/data.md)
    stream: Union[bool, str] = key("auto", choices=(True, False, "auto"))


@dataclass
class ModelConfig:
    features: list[int] = key([16, 32, 48, 64, 96], minimum=1)  # widths per level, positive; need not double


@dataclass
class TrainConfig:
    epochs: int = key(15, minimum=1)
    batch_size: int = key(8, minimum=1)
    lr: float = key(1.0e-3, interval="(0, 1]", hint="Adam diverges far below 1")
    weight_decay: float = key(1.0e-6, minimum=0)
    aug_strength: float = key(1.0, interval="[0, 1]")
    # auto: fp16+GradScaler on CUDA; bf16 on a CPU with native bf16 (AVX-512 BF16, AMX), else full precision
    amp: str = key("auto", choices=("auto", "bf16", "fp16", "off"))
    loss: str = key("bce+dice", choices=("bce", "bce+dice"))  # bce: the original project's
    grad_clip: Optional[float] = key(None, rule=lambda v: None if v > 0 else f"must be positive or null, got {v}")
    # the weights validated and saved: a moving average over about this many recent epochs (EMA, BatchNorm
    # statistics included; early in a run over about the last tenth of its steps); null: the last step's weights
    ema_epochs: Optional[float] = key(2.0, rule=lambda v: None if v > 0 else f"must be positive or null, got {v}")
    lr_patience: int = key(3, minimum=0)
    lr_factor: float = key(0.1, interval="(0, 1)")
    early_stopping_patience: int = key(10, minimum=1)
    checkpoint_every: int = key(10, minimum=1)
    keep_checkpoints: int = key(3, minimum=1)
    seed: int = key(0)
    compile: bool = key(False)  # torch.compile the model (pays a compile at the start of every run)
    init_from: Optional[str] = key(None)  # a model.pt / checkpoint / run / sweep (path or URI): its weights


@dataclass
class ScalingConfig:
    num_workers: int = key(1, minimum=1)
    use_gpu: Union[bool, str] = key("auto", choices=(True, False, "auto"))  # auto: GPUs when the cluster has them
    # null: 1 when GPUs are used; 0.25: four trials share a GPU
    gpus_per_worker: Optional[float] = key(None, rule=_fraction_or_whole)
    cpus_per_worker: int = key(1, minimum=1)
    # restarts of a run's workers from its latest checkpoint after a worker/node dies
    max_failures: int = key(0, minimum=-1, hint="-1: no limit")


@dataclass
class SchedulerConfig:
    max_t: int = key(4, minimum=1)
    grace_period: int = key(1, minimum=1)
    reduction_factor: int = key(3, minimum=2)


# What a run measures every epoch (lfa_ray.loop), in metrics.csv and TensorBoard order; tune.metric is one.
METRICS = ("train_loss", "val_loss", "val_accuracy", "val_dice", "val_iou")


@dataclass
class TuneConfig:
    num_samples: int = key(8, minimum=1)
    max_concurrent_trials: Optional[int] = key(None, minimum=1)
    metric: str = key("val_dice", choices=METRICS)
    mode: str = key("max", choices=("max", "min"))
    # the sweep ends after this many seconds (running trials are stopped) or once a trial's tune.metric
    # reaches stop_at (at least it for mode max, at most for min); null: all num_samples trials run
    time_budget_s: Optional[float] = key(None, rule=lambda v: None if v > 0 else f"must be positive or null, got {v}")
    stop_at: Optional[float] = key(None)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search_space: dict = key({
        "train.lr": {"loguniform": [1.0e-5, 1.0e-2]},
        "train.batch_size": {"choice": [4, 8, 16]},
        "train.aug_strength": {"uniform": [0.0, 1.0]},
    })  # checked by lfa_ray.search.validate_space


@dataclass
class FinalConfig:
    epochs: int = key(23, minimum=1)


@dataclass
class RefineConfig:
    """The refining model a run trains after its window model (``lfa_ray.refine``): the same UNET on
    crops around each photo's window, with the run's train settings; ``predict`` uses it."""
    image_size: Optional[int] = key(96, minimum=8)  # its input side; null: the run trains no refining model
    epochs: int = key(10, minimum=1)
    per_photo: int = key(2, minimum=1)  # crops of each photo (its split kept), each framed anew


@dataclass
class ReadoutConfig:
    """Where the lines are and when they count (``lfa_ray.readout``; ``predict --readout``, ``evaluate``)."""
    control_at: float = key(0.72, interval="(0, 1)")  # share of the window's length from its sample-well end
    test_at: float = key(0.38, interval="(0, 1)")  # either order: the control line may come first
    tolerance: float = key(0.07, interval="(0, 0.25)")  # how far (share of the length) a line may sit from its place
    control_min: float = key(0.05, interval="(0, 1)")  # control line intensity below this: invalid
    test_min: float = key(0.02, interval="(0, 1)")  # test line intensity from this on: positive
    # a three-line test's second test line (IgG/IgM, Pf/Pv, flu A/B): its place, as control_at; null: none.
    # Positive when either test line reaches test_min
    test2_at: Optional[float] = key(None, interval="(0, 1)")


@dataclass
class StorageConfig:
    path: str = key("results")


@dataclass
class TrackingConfig:
    """Where a sweep's and a run's records also go (``lfa_ray.tracking``): an MLflow server, W&B."""
    mlflow_uri: Optional[str] = key(None)  # an MLflow tracking server; null: MLFLOW_TRACKING_URI if set, else none
    experiment: Optional[str] = key(None)  # the MLflow experiment and W&B project; null: the sweep's or run's name
    wandb: bool = key(False)  # W&B through Ray's integration (WANDB_MODE=offline: no account, files only)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def _yaml_word(v: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(v, str(v)) if isinstance(v, (bool, type(None))) else str(v)


def _inside(value: float, interval: str) -> bool:
    lo_text, hi_text = interval[1:-1].split(",")
    lo, hi = float(lo_text), float(hi_text)
    above = value >= lo if interval[0] == "[" else value > lo
    below = value <= hi if interval[-1] == "]" else value < hi
    return above and below


def _problem(value: Any, meta: dict) -> Optional[str]:
    """What is wrong with one key's value by its own rules (None: nothing)."""
    if value is None:
        return None
    if isinstance(value, list):
        return next((p for p in (_problem(v, meta) for v in value) if p), None)
    choices, minimum, interval, rule = meta["choices"], meta["minimum"], meta["interval"], meta["rule"]
    words = " or ".join(", ".join(_yaml_word(c) for c in choices).rsplit(", ", 1))
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if isinstance(value, (bool, str)) or (choices and minimum is None):
        if choices and value not in choices:
            return (f"must be {words}, got {value!r}" if minimum is None
                    else f"must be {minimum:g} or more, or {words}, got {value!r}")
        return None
    if minimum is not None and value < minimum:
        need = "at least 1" if minimum == 1 else f"{minimum:g} or more"
        return f"must be {need}" + (f", or {words}" if choices else "") + f", got {value!r}"
    if interval and not _inside(value, interval):
        return f"must be in {interval}, got {value!r}"
    return rule(value) if rule else None


def _check_keys(obj: Any, prefix: str, where: str) -> None:
    for f in dataclasses.fields(obj):
        value, full = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_keys(value, full + ".", where)
        elif f.metadata and (problem := _problem(value, f.metadata)):
            hint = f" ({f.metadata['hint']})" if f.metadata["hint"] else ""
            raise UserError(f"{where}: {full} {problem}{hint}")


def check_values(cfg: Config, where: str) -> None:
    """Every key by the rules declared beside it, then the rules that relate keys."""
    _check_keys(cfg, "", where)
    check_relations(cfg, where)


def check_relations(cfg: Config, where: str) -> None:
    d, s, sched = cfg.data, cfg.scaling, cfg.tune.scheduler
    if d.val_fraction + d.test_fraction >= 1.0:
        raise UserError(f"{where}: data.test_fraction ({d.test_fraction}) and data.val_fraction ({d.val_fraction}) "
                        f"leave no training images; lower them")
    smallest = 2 ** len(cfg.model.features)  # the UNET halves the image once per level down to its bottleneck
    if d.image_size < smallest:
        raise UserError(f"{where}: data.image_size={d.image_size} is too small for {len(cfg.model.features)} "
                        f"model levels (model.features); use at least {smallest}, e.g. --set data.image_size=64")
    if cfg.refine.image_size is not None and cfg.refine.image_size < smallest:
        raise UserError(f"{where}: refine.image_size={cfg.refine.image_size} is too small for "
                        f"{len(cfg.model.features)} model levels (model.features); use at least {smallest}")
    if sched.grace_period > sched.max_t:
        raise UserError(f"{where}: tune.scheduler.grace_period ({sched.grace_period}) is above max_t "
                        f"({sched.max_t}); lower it")
    g = s.gpus_per_worker
    if g is not None and s.use_gpu is False:
        raise UserError(f"{where}: scaling.gpus_per_worker={g:g} but scaling.use_gpu is false; set "
                        f"scaling.use_gpu to true or auto, or remove scaling.gpus_per_worker")
    if g is not None and g < 1 and s.num_workers > 1:
        raise UserError(f"{where}: scaling.gpus_per_worker={g:g} with scaling.num_workers={s.num_workers}: NCCL "
                        f"needs a whole GPU per worker of one run; use fractions for trials sharing a GPU "
                        f"(num_workers: 1) or set scaling.gpus_per_worker=1")
    r = cfg.readout
    if r.test2_at is not None and abs(r.test2_at - r.test_at) <= r.tolerance:
        raise UserError(f"{where}: readout.test2_at ({r.test2_at}) is within readout.tolerance ({r.tolerance}) of "
                        f"readout.test_at ({r.test_at}), so the two test lines cannot be told apart; fix the places")
    others = [(r.test_at, "the test line's"), (1 - r.test_at, "the test line's, seen from the other end,")]
    if r.test2_at is not None:
        others += [(r.test2_at, "the second test line's"), (1 - r.test2_at, "the second test line's, seen from the "
                                                                          "other end,")]
    for other, seen in others:
        if abs(r.control_at - other) <= r.tolerance:
            raise UserError(f"{where}: readout.control_at ({r.control_at}) is within readout.tolerance "
                            f"({r.tolerance}) of {seen} place ({other:.3g}), so the lines cannot be told apart; "
                            f"lower readout.tolerance or fix the places")


def flat_keys(d: dict, prefix: str = "") -> dict:
    """``{"train.lr": 0.001, ...}`` from a nested profile dict (search_space stays one value)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "search_space":
            out.update(flat_keys(v, key + "."))
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


@dataclass
class ProfileChoice:
    """Which profile a command runs: ``--config`` (None: the default profile), ``--data`` and the
    ``--set KEY=VALUE`` items, applied in that order."""
    config: Optional[str] = None
    data: Optional[str] = None
    overrides: list[str] = field(default_factory=list)


def resolve(choice: ProfileChoice, base=None, base_raw: Optional[dict] = None, where: str = "") -> Config:
    """The profile of ``choice.config`` (else ``base``, else the default), or ``base_raw``, with its
    ``--set`` and ``--data`` applied."""
    overrides = list(choice.overrides)
    if choice.data:
        overrides.append(f"data.path={choice.data}")
    if base_raw is not None and not choice.config:
        return load_config(None, overrides, raw=base_raw, where=where)
    return load_config(choice.config or base, overrides)


def profile_stem(choice: ProfileChoice) -> str:
    """The profile's name, for default run names (``train-default``)."""
    path = choice.config or default_profile()
    return Path(path).stem if path else "default"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                raw: dict | None = None, where: str = "") -> Config:
    """Load a profile (``None``: the default profile) or take ``raw``, apply ``--set`` overrides, validate."""
    if raw is None:
        if path is None:
            path = default_profile()
        raw = read_yaml(path) if path is not None else {}
        where = str(path) if path is not None else "built-in defaults"
    cfg = _build(Config, raw, "", where)
    if not overrides:
        check_values(cfg, where)
        return cfg
    _check_keys(cfg, "", where)  # relations are checked once the --set values are in
    cfg = _build(Config, _merge(cfg.to_dict(), parse_overrides(overrides)), "", "--set")
    _check_keys(cfg, "", "--set")
    check_relations(cfg, f"{where} with --set")
    return cfg


def config_from_dict(raw: dict) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. inside a Ray worker)."""
    return _build(Config, raw, "", "config")


def dump_config(cfg: Config, path) -> None:
    from lfa_ray.storage import locate

    locate(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
