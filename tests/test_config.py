from pathlib import Path

import pytest
import yaml

from lfa_ray.config import Config, dump_config, load_config, parse_overrides
from lfa_ray.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_default_profile_lists_every_key_with_valid_values():
    raw = yaml.safe_load((REPO / "tune_configs" / "default.yaml").read_text())
    defaults = Config().to_dict()
    assert set(raw) == set(defaults)
    for section in raw:
        assert set(raw[section]) == set(defaults[section]), section
    cfg = load_config(REPO / "tune_configs" / "default.yaml")
    assert cfg.data.path is None and cfg.train.amp == "auto"


@pytest.mark.parametrize("profile", sorted((REPO / "tune_configs").glob("*.yaml")))
def test_every_shipped_profile_loads(profile):
    load_config(profile)


def test_set_overrides_parse_types_and_nesting(tmp_path):
    cfg = load_config(REPO / "tune_configs" / "default.yaml",
                      ["train.lr=3e-4", "train.batch_size=16", "model.features=[8, 16]",
                       "train.grad_clip=1.0", "data.path=/some/where", "scaling.use_gpu=false",
                       "tune.scheduler.max_t=5"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads 3e-4 as a string
    assert cfg.train.batch_size == 16
    assert cfg.model.features == [8, 16]
    assert cfg.train.grad_clip == 1.0
    assert cfg.data.path == "/some/where"
    assert cfg.tune.scheduler.max_t == 5
    # round trip through the resolved config.yaml
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("item, fragment", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("nope.x=1", "unknown key 'nope'"),
    ("train.batch_size=eight", "train.batch_size must be an integer"),
    ("train.batch_size=2.5", "train.batch_size must be an integer"),
    ("train.lr=fast", "train.lr must be a number"),
    ("scaling.use_gpu=maybe", "scaling.use_gpu must be true or false"),
    ("model.features=[]", "model.features must be a non-empty list"),
    ("train.amp=fp8", "train.amp must be one of"),
    ("train.epochs=0", "train.epochs must be at least 1"),
    ("data.val_fraction=1.5", "data.val_fraction must be between 0 and 1"),
    ("train.aug_strength=2", "train.aug_strength must be in [0, 1]"),
    ("train.lr", "expected KEY=VALUE"),
    ("train=3", "train must be a mapping"),
])
def test_bad_overrides_name_the_key(item, fragment):
    with pytest.raises(UserError, match=None) as info:
        load_config(REPO / "tune_configs" / "default.yaml", [item])
    assert fragment in str(info.value)


def test_bad_profile_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_config(bad)
    bad.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"bad.yaml: unknown key 'train.learning_rate'"):
        load_config(bad)
    with pytest.raises(UserError, match="profile not found"):
        load_config(tmp_path / "missing.yaml")


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b=1", "a.c=x", "d=null"]) == {"a": {"b": 1, "c": "x"}, "d": None}
