"""The sweep's search space: validation, conversion to Ray Tune domains, and applying a trial's params.

``tune.search_space`` maps profile keys to one distribution each::

    train.lr:           {loguniform: [1.0e-5, 1.0e-2]}
    train.batch_size:   {choice: [4, 8, 16]}
    train.aug_strength: {uniform: [0.0, 1.0]}
    model.features:     {choice: [[8, 16, 32, 64], [16, 32, 64, 128]]}
    train.epochs:       {randint: [5, 20]}      # low inclusive, high exclusive

Any key of the data, model, train and scaling sections may be searched.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ray import tune

from lfa_ray.config import Config, check_values, config_from_dict
from lfa_ray.errors import UserError

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")
SEARCHABLE = ("data", "model", "train", "scaling")
# The original project's hand-picked config: the first point the searcher evaluates.
REFERENCE_POINT = {"train.lr": 1.0e-4, "train.batch_size": 8, "train.aug_strength": 1.0, "train.weight_decay": 1.0e-6}


def _set(d: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def _has_key(d: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


def apply_params(cfg: Config, params: dict) -> Config:
    """A copy of ``cfg`` with ``{"train.lr": ..., ...}`` set and validated."""
    raw = copy.deepcopy(cfg.to_dict())
    for key, value in params.items():
        _set(raw, key, value)
    new = config_from_dict(raw)
    check_values(new, "search point")
    return new


def validate_space(cfg: Config, where: str = "tune.search_space") -> None:
    """Refuse anything Tune or Optuna would choke on later, naming the key and the fix."""
    space = cfg.tune.search_space
    if not space:
        raise UserError(f"{where} is empty; add at least one key, e.g. train.lr: {{loguniform: [1.0e-5, 1.0e-2]}}")
    base = cfg.to_dict()
    for key, spec in space.items():
        at = f"{where}.{key}"
        if key.split(".")[0] not in SEARCHABLE or not _has_key(base, key) or isinstance(
                _get(base, key), dict):
            raise UserError(f"{at}: unknown profile key; search keys of the {', '.join(SEARCHABLE)} sections, "
                            f"e.g. train.lr")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UserError(f"{at}: give exactly one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-2]}}")
        (kind, args), = spec.items()
        if kind not in DISTRIBUTIONS:
            raise UserError(f"{at}: unknown distribution '{kind}'; use one of {', '.join(DISTRIBUTIONS)}")
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise UserError(f"{at}: choice needs a non-empty list of values, e.g. {{choice: [4, 8, 16]}}")
            samples = list(args)
        else:
            if (not isinstance(args, list) or len(args) != 2
                    or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
                raise UserError(f"{at}: {kind} needs [low, high] numbers, got {args!r}")
            low, high = args
            if not all(math.isfinite(a) for a in args):
                raise UserError(f"{at}: {kind} bounds must be finite numbers, got [{low}, {high}]")
            if not low < high:
                raise UserError(f"{at}: {kind} low must be below high, got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise UserError(f"{at}: loguniform bounds must be above 0, got [{low}, {high}]")
            if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
                raise UserError(f"{at}: randint needs integer bounds, got [{low}, {high}]")
            samples = [low, high - 1] if kind == "randint" else [low, high]
        for value in samples:
            try:
                apply_params(cfg, {key: value})
            except UserError as exc:
                raise UserError(f"{at}: value {value!r} is not valid for {key} ({exc})") from None


def _get(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def value_of(cfg: Config, key: str) -> Any:
    """The value of a dotted profile key, e.g. ``train.lr``."""
    return _get(cfg.to_dict(), key)


def to_tune(space: dict) -> dict:
    """Ray Tune domains for a validated space (OptunaSearch converts them for TPE)."""
    out = {}
    for key, spec in space.items():
        (kind, args), = spec.items()
        out[key] = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
                    "randint": lambda a: tune.randint(*a), "choice": tune.choice}[kind](args)
    return out


def reference_point(cfg: Config) -> dict | None:
    """The original's config over the searched keys (the profile's own value for keys the original did not
    set, e.g. model.features), if that point lies inside the space. Optuna needs every searched key."""
    space, base = cfg.tune.search_space, cfg.to_dict()
    point = {}
    for key, spec in space.items():
        value = REFERENCE_POINT.get(key, _get(base, key))
        (kind, args), = spec.items()
        inside = (value in args if kind == "choice"
                  else isinstance(value, (int, float)) and args[0] <= value <= args[1])
        if not inside:
            return None
        point[key] = value
    return point or None
