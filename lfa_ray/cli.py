"""What lfa_ray's commands share on the command line: the profile arguments (``--config``,
``--data``, ``--name``, ``--set``), profile resolution, ``--version``, ``--print-config`` and
``--verbose``. Library modules take a :class:`~lfa_ray.config.Config`; only commands parse."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import yaml

from lfa_ray.config import Config, default_profile, load_config
from lfa_ray.console import VERBOSE
from lfa_ray.storage import Location


def package_version() -> str:
    try:
        return version("lfa_ray")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser, with ``--version``."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--version", action="version", version=f"%(prog)s (lfa_ray {package_version()})")
    return p


def add_print_config(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--print-config", action="store_true", help=f"print {what} as YAML and exit")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The profile arguments of ``train`` and ``tune``."""
    p.add_argument("--config", help="profile YAML (default: tune_configs/default.yaml, else the built-in defaults)")
    p.add_argument("--data", help="dataset folder (overrides data.path; default: synthetic cassettes)")
    p.add_argument("--name", help="run name under storage.path (default: derived from the profile)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own console output")
    add_print_config(p, "the resolved profile (after --config, --set and --data)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model arguments of ``predict`` and ``evaluate``."""
    p.add_argument("--checkpoint", required=True, help="sweep folder, run folder, model.pt or checkpoint folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    add_print_config(p, "the profile the model was trained with")


def print_model_config(args: argparse.Namespace) -> bool:
    """With ``--print-config``: print the profile ``--checkpoint``'s model was trained with; True if so."""
    if not args.print_config:
        return False
    import torch

    from lfa_ray.predict import load_model

    print_config(load_model(args.checkpoint, torch.device("cpu"))[2])
    return True


def show_ray_output(args: argparse.Namespace) -> None:
    if args.verbose:
        os.environ[VERBOSE] = "1"  # read by every process of the job


def print_config(cfg: Config | dict) -> None:
    raw = cfg.to_dict() if isinstance(cfg, Config) else cfg
    sys.stdout.write(yaml.safe_dump(raw, sort_keys=False))


def resolve_config(args: argparse.Namespace, base: Optional[Location] = None, base_raw: Optional[dict] = None,
                   where: str = "") -> Config:
    """The profile of ``--config`` (else ``base``, else the default), or ``base_raw``, with ``--set``/``--data``."""
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if base_raw is not None and not args.config:
        return load_config(None, overrides, raw=base_raw, where=where)
    return load_config(args.config or base, overrides)


def profile_stem(args: argparse.Namespace) -> str:
    path = args.config or default_profile()
    return Path(path).stem if path else "default"
