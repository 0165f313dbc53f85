from pathlib import Path

import pytest
import yaml

from lfa_ray import cli
from lfa_ray.config import Config, dump_config, load_config, parse_overrides
from lfa_ray.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_default_profile_lists_every_key_with_the_built_in_defaults():
    """An install without tune_configs/ (a wheel) runs the very sweep the default profile describes."""
    raw = yaml.safe_load((REPO / "tune_configs" / "default.yaml").read_text())
    defaults = Config().to_dict()
    assert set(raw) == set(defaults)
    for section in raw:
        assert set(raw[section]) == set(defaults[section]), section
    assert load_config(REPO / "tune_configs" / "default.yaml") == Config()
    assert load_config(raw={}, where="built-in defaults") == Config()


@pytest.mark.parametrize("profile", sorted((REPO / "tune_configs").glob("*.yaml")))
def test_every_shipped_profile_loads(profile):
    """... and passes what a sweep checks before Ray starts: its search space, the reference point,
    and the final retrain's profile."""
    from lfa_ray.search import reference_point, validate_space
    from lfa_ray.tune import final_config, trial_config

    cfg = load_config(profile)
    validate_space(cfg)
    trial_config(cfg)
    final_config(cfg, reference_point(cfg) or {})


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
    ("scaling.use_gpu=maybe", "scaling.use_gpu must be true, false or auto"),
    ("model.features=[]", "model.features must be a non-empty list"),
    ("train.amp=fp8", "train.amp must be auto, bf16, fp16 or off, got 'fp8'"),
    ("train.epochs=0", "train.epochs must be at least 1"),
    ("data.val_fraction=1.5", "data.val_fraction must be in (0, 1)"),
    ("data.test_fraction=0.8", "data.test_fraction (0.8) and data.val_fraction (0.2) leave no training images"),
    ("data.test_fraction=-0.1", "data.test_fraction must be in [0, 1)"),
    ("train.aug_strength=2", "train.aug_strength must be in [0, 1]"),
    ("train.lr", "expected KEY=VALUE"),
    ("scaling.gpus_per_worker=1.5", "scaling.gpus_per_worker must be a fraction in (0, 1] (0.25"),
    ("scaling.gpus_per_worker=0", "scaling.gpus_per_worker must be a fraction in (0, 1]"),
    ("scaling.gpus_per_worker=-1", "scaling.gpus_per_worker must be a fraction in (0, 1]"),
    ("scaling.gpus_per_worker=lots", "scaling.gpus_per_worker must be a number"),
    ("data.loader_workers=-1", "data.loader_workers must be 0 or more, or auto"),
    ("data.loader_workers=many", "data.loader_workers must be 0 or more, or auto"),
    ("train.compile=maybe", "train.compile must be true or false"),
    ("train=3", "train must be a mapping"),
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.lr=50", "train.lr must be in (0, 1]"),
    ("train.weight_decay=-1", "train.weight_decay must be 0 or more"),
    ("train.grad_clip=.inf", "train.grad_clip must be a finite number"),
    ("tune.num_samples=0", "tune.num_samples must be at least 1, got 0"),
    ("tune.max_concurrent_trials=0", "tune.max_concurrent_trials must be at least 1"),
    ("tune.scheduler.reduction_factor=1", "tune.scheduler.reduction_factor must be 2 or more"),
    ("tune.scheduler.grace_period=5", "tune.scheduler.grace_period (5) is above max_t (4)"),
    ("tune.metric=val_f1", "tune.metric must be train_loss, val_loss, val_accuracy, val_dice or val_iou"),
    ("train.lr_factor=1", "train.lr_factor must be in (0, 1)"),
    ("scaling.max_failures=-2", "scaling.max_failures must be -1 or more, got -2 (-1: no limit)"),
    ("model.features=[8, 0]", "model.features must be at least 1, got 0"),
    ("train.grad_clip=0", "train.grad_clip must be positive or null"),
    ("tune.time_budget_s=0", "tune.time_budget_s must be positive or null, got 0"),
    ("data.image_size=7", "data.image_size=7 is too small for 5 model levels (model.features); use at least 32"),
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


def test_gpu_keys_take_fractions_whole_gpus_and_auto():
    cfg = load_config(REPO / "tune_configs" / "default.yaml")
    assert cfg.scaling.use_gpu == "auto" and cfg.scaling.gpus_per_worker is None and cfg.data.loader_workers == "auto"
    cfg = load_config(None, ["scaling.gpus_per_worker=0.25", "data.loader_workers=3", "scaling.use_gpu=true"])
    assert cfg.scaling.gpus_per_worker == 0.25 and cfg.data.loader_workers == 3 and cfg.scaling.use_gpu is True
    assert load_config(None, ["scaling.gpus_per_worker=2", "scaling.num_workers=2"]).scaling.gpus_per_worker == 2.0


@pytest.mark.parametrize("items, fragment", [
    (["scaling.use_gpu=false", "scaling.gpus_per_worker=0.5"],
     "scaling.gpus_per_worker=0.5 but scaling.use_gpu is false; set scaling.use_gpu to true or auto"),
    (["scaling.gpus_per_worker=0.5", "scaling.num_workers=2"],
     "scaling.gpus_per_worker=0.5 with scaling.num_workers=2: NCCL needs a whole GPU per worker"),
])
def test_gpu_settings_that_cannot_work_are_refused(items, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, items)
    assert fragment in str(info.value)


def test_reference_point_covers_every_searched_key_or_none():
    """Optuna evaluates a first point only if it names every searched key (cloud.yaml searches weight_decay)."""
    from lfa_ray.search import reference_point

    cloud = load_config(REPO / "tune_configs" / "cloud.yaml")
    assert reference_point(cloud) == {"train.lr": 1e-4, "train.batch_size": 8, "train.aug_strength": 1.0,
                                 "train.weight_decay": 1e-6}
    # a key the original did not set takes the profile's value
    cfg = load_config(None, ["tune.search_space={train.lr: {loguniform: [1.0e-5, 1.0e-2]}, "
                             "model.features: {choice: [[8, 16], [16, 32, 48, 64, 96]]}}"])
    assert reference_point(cfg) == {"train.lr": 1e-4, "model.features": [16, 32, 48, 64, 96]}
    cfg = load_config(None, ["tune.search_space={train.lr: {loguniform: [1.0e-3, 1.0e-2]}}"])
    assert reference_point(cfg) is None  # the original's lr 1e-4 lies outside


def test_print_config_and_version_on_the_commands(capsys):
    assert cli.train(["--print-config", "--set", "train.lr=0.003", "--data", "/some/where"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.003 and printed["data"]["path"] == "/some/where"
    assert load_config(raw=printed, where="printed") == load_config(None, ["train.lr=0.003", "data.path=/some/where"])
    assert cli.tune(["--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == Config().to_dict()
    for main in (cli.train, cli.tune, cli.predict, cli.evaluate, cli.export, cli.data):
        with pytest.raises(SystemExit) as done:
            main(["--version"])
        assert done.value.code == 0 and "lfa_ray " in capsys.readouterr().out
