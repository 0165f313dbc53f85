"""The plain PyTorch loop, without Ray: learning, exact resume, AMP modes, policies, metric values."""

import logging
import math
from pathlib import Path

import pytest
import torch

from lfa_ray import loop
from lfa_ray.checkpoint import load_state, save_state
from lfa_ray.data import build_datasets, load_for

from helpers import tiny_config

CPU = torch.device("cpu")


def _run(cfg, data_dir, state=None):
    torch.manual_seed(0)
    tr, va = build_datasets(cfg, load_for(cfg, data_dir))
    parts = loop.build(cfg, CPU)
    tl, vl = loop.make_loaders(tr, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    results = []
    loop.fit(cfg, parts, tl, vl, CPU, on_epoch=results.append, state=state)
    return parts, results


@pytest.mark.slow
def test_loop_learns_the_read_window(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, **{"data.image_size": 64, "model.features": "[16,32,64,128]",
                                              "train.epochs": 30, "train.batch_size": 8, "train.loss": "bce+dice"})
    _, results = _run(cfg, synth_dir)
    dice = [r.metrics["val_dice"] for r in results]
    # 96 varied photos (far shots to close-ups, any style) are a hard set: 0.21 -> 0.55 here
    assert dice[0] < 0.3  # it starts knowing nothing ...
    assert max(dice[-3:]) > 0.45, dice  # ... and learns the window
    assert results[-1].metrics["train_loss"] < 0.6 * results[0].metrics["train_loss"]
    m = results[-1].metrics
    assert set(m) >= {"train_loss", "val_loss", "val_accuracy", "val_dice", "val_iou", "lr", "epoch",
                      "epoch_seconds", "images_per_second"}
    assert 0.0 <= m["val_iou"] <= m["val_dice"] <= 1.0 and m["val_accuracy"] > 0.9


def test_a_run_written_before_a_column_existed_continues_its_metrics(tmp_path):
    """metrics.csv rows of earlier epochs without a column added since (train_images) are kept as they
    were, the new column empty there, and read back without it."""
    from lfa_ray import runlog

    old = [c for c in runlog.COLUMNS if c not in ("train_images", "setup_seconds")]
    first = ",".join("1" if c == "epoch" else "0.5" for c in old)
    (tmp_path / "metrics.csv").write_text(",".join(old) + "\n" + first + "\n")
    log = runlog.RunLog(tmp_path, start_epoch=1)
    log.log({k: 0.25 for k in runlog.COLUMNS} | {"epoch": 2, "train_images": 17})
    log.close()
    rows = runlog.read_metrics(tmp_path / "metrics.csv")
    assert rows[0] == {c: (1.0 if c == "epoch" else 0.5) for c in old}
    assert rows[1]["epoch"] == 2 and rows[1]["train_images"] == 17 and rows[1]["val_dice"] == 0.25


def test_resume_repeats_the_uninterrupted_run_exactly(small_dir, tmp_path):
    cfg = tiny_config(small_dir, tmp_path, **{"train.epochs": 4})
    full, full_results = _run(cfg, small_dir)
    cfg.train.epochs = 2
    _, first = _run(cfg, small_dir)
    state = first[-1].checkpoint
    assert state["progress"]["epoch"] == 2
    save_state(state, tmp_path / "ckpt")  # through the file, as a real resume does
    state = load_state(tmp_path / "ckpt")
    cfg.train.epochs = 4
    resumed, rest = _run(cfg, small_dir, state=state)
    assert [r.metrics["epoch"] for r in rest] == [3, 4]
    assert rest[-1].metrics["train_loss"] == pytest.approx(full_results[-1].metrics["train_loss"], rel=1e-6)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(full.average.state_dict().values(), resumed.average.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the weight average too (n_averaged included)
    opt_a, opt_b = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        assert torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"])
        assert torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"])


def test_weight_average_spans_a_tenth_of_the_steps_so_far_up_to_its_horizon():
    bn = torch.nn.BatchNorm1d(1)  # a weight, a bias, running statistics and a batch counter
    average = loop.WeightAverage(bn, horizon=20)
    values = [float(v) for v in range(1, 401)]
    seen = []
    for step, v in enumerate(values, start=1):
        with torch.no_grad():
            bn.weight.fill_(v)
            bn.running_mean.fill_(-v)
            bn.num_batches_tracked.fill_(step)
        average.update_parameters(bn)
        seen.append((average.module.weight.item(), average.module.running_mean.item(),
                     average.module.num_batches_tracked.item()))
    expected = [values[0]]  # the first step is copied; the (n+1)-th blends in with max(9 / (10 + n), 1 / 20)
    for n, v in enumerate(values[1:], start=1):
        expected.append(expected[-1] + max(9 / (10 + n), 1 / 20) * (v - expected[-1]))
    assert [w for w, _, _ in seen] == pytest.approx(expected, rel=1e-5)
    assert [m for _, m, _ in seen] == pytest.approx([-e for e in expected], rel=1e-5)
    assert [c for _, _, c in seen] == list(range(1, 401))
    # on a steady climb an EMA lags by about its span: a tenth of the steps early on, 19 steps at the horizon
    assert values[99] - seen[99][0] == pytest.approx(10, abs=1.5)
    assert values[-1] - seen[-1][0] == pytest.approx(19, abs=0.5)


def test_the_weight_average_is_what_is_validated_and_saved(small_dir, tmp_path):
    from lfa_ray.model import UNet

    cfg = tiny_config(small_dir, tmp_path, **{"train.epochs": 2, "train.ema_epochs": 0.5})
    parts, results = _run(cfg, small_dir)
    tr, va = build_datasets(cfg, load_for(cfg, small_dir))
    tl, vl = loop.make_loaders(tr, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    assert parts.average.horizon == 0.5 * len(tl) and int(parts.average.n_averaged) == 2 * len(tl)
    state = results[-1].checkpoint
    assert state["averaged_steps"] == 2 * len(tl)
    for k, v in parts.average.module.state_dict().items():
        assert torch.equal(state["model"][k], v)  # "model" (predict, export, warm starts) is the average ...
    for k, v in parts.model.state_dict().items():
        assert torch.equal(state["trained"][k], v)  # ... "trained" the weights training goes on from
    assert any(not torch.equal(state["model"][k], state["trained"][k]) for k in state["model"])
    # the reported val metrics are those of the saved weights, loaded into a bare UNET
    bare = loop.TrainingSetup(UNet(features=cfg.model.features), None, None, None, parts.dtype)
    bare.model.load_state_dict(state["model"])
    assert loop.validate(bare, vl, CPU, loss=cfg.train.loss)["val_loss"] == pytest.approx(
        results[-1].metrics["val_loss"], rel=1e-5)

    # a checkpoint without an average (train.ema_epochs null) starts one from its weights
    cfg.train.ema_epochs = None
    plain_parts, plain = _run(cfg, small_dir)
    assert plain_parts.average is None and "trained" not in plain[-1].checkpoint
    cfg.train.ema_epochs, cfg.train.epochs = 0.5, 3
    resumed = loop.build(cfg, CPU)
    loop.fit(cfg, resumed, tl, vl, CPU, on_epoch=lambda r: None, state=plain[-1].checkpoint)
    assert int(resumed.average.n_averaged) == 1 + len(tl)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it():
    """bf16 autocast on a CPU without AVX-512 BF16 or AMX is emulated, ~10x slower than fp32."""
    native = _native_bf16()
    assert loop.cpu_has_bf16() == native
    assert loop.amp_dtype("auto", CPU) == (torch.bfloat16 if native else None)


def _native_bf16() -> bool | None:
    """Whether Linux lists a bf16 unit among this CPU's flags (None: no /proc/cpuinfo to ask)."""
    cpuinfo = Path("/proc/cpuinfo")
    return bool(set(cpuinfo.read_text().split()) & {"avx512_bf16", "amx_bf16"}) if cpuinfo.exists() else None


@pytest.mark.parametrize("mode, dtype", [("auto", "native"), ("bf16", torch.bfloat16), ("fp16", torch.float16),
                                         ("off", None)])
def test_amp_modes_run_on_cpu(small_dir, tmp_path, mode, dtype):
    if dtype == "native":  # auto: bf16 where the CPU's flags (not lfa_ray's own check) say it computes it
        if _native_bf16() is None:
            pytest.skip("reads the CPU's flags from Linux's /proc/cpuinfo")
        dtype = torch.bfloat16 if _native_bf16() else None
    cfg = tiny_config(small_dir, tmp_path, **{"train.amp": mode, "train.epochs": 1})
    assert loop.amp_dtype(mode, CPU) == dtype
    parts, results = _run(cfg, small_dir)
    assert parts.dtype == dtype
    assert not parts.scaler.is_enabled()  # loss scaling is for fp16 on CUDA only
    assert torch.isfinite(torch.tensor(results[0].metrics["train_loss"]))



def test_checkpoint_policy_early_stopping_and_lr_plateau(small_dir, tmp_path, caplog):
    # lr so high that val_loss stops improving: the plateau cuts the lr, then early stopping ends the run.
    cfg = tiny_config(small_dir, tmp_path, **{"train.epochs": 30, "train.checkpoint_every": 2,
                                              "train.lr": 1.0, "train.lr_patience": 1,
                                              "train.early_stopping_patience": 3})
    with caplog.at_level(logging.INFO, logger="lfa_ray"):
        _, results = _run(cfg, small_dir)
    epochs = [r.metrics["epoch"] for r in results]
    assert epochs == list(range(1, len(results) + 1)) and len(results) < 30
    assert "early stopping" in caplog.text and "learning rate 1 -> 0.1" in caplog.text
    # the policy worked out from the metrics alone: a checkpoint at each new best val Dice, every 2nd
    # epoch and the last; the run ends at the first epoch whose val_loss is 3 epochs past its best
    dice = [r.metrics["val_dice"] for r in results]
    loss = [r.metrics["val_loss"] for r in results]
    new_best = {e for e, d in zip(epochs, dice, strict=True) if e == 1 or d > max(dice[:e - 1])}
    since_best = [e - 1 - min(range(e), key=lambda i: (loss[i], i)) for e in epochs]
    assert since_best.index(3) + 1 == epochs[-1]  # stopped where it should, not earlier or later
    assert [r.last for r in results] == [False] * (len(results) - 1) + [True]
    due = {r.metrics["epoch"] for r in results if r.checkpoint is not None}
    assert due == new_best | {e for e in epochs if e % 2 == 0} | {epochs[-1]}
    assert due - new_best - {epochs[-1]}  # each of the three rules was needed here
    assert {r.metrics["epoch"] for r in results if r.improved} == new_best


def test_a_non_finite_loss_stops_the_run_at_that_epoch_and_saves_nothing(small_dir, tmp_path):
    cfg = tiny_config(small_dir, tmp_path, **{"train.epochs": 3})
    tr, va = build_datasets(cfg, load_for(cfg, small_dir))
    parts = loop.build(cfg, CPU)
    with torch.no_grad():
        next(parts.model.parameters()).fill_(float("nan"))  # what an exploding step leaves behind
    tl, vl = loop.make_loaders(tr, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    results = []
    with pytest.raises(loop.Diverged, match=r"training diverged at epoch 1: train_loss is nan \(learning rate"):
        loop.fit(cfg, parts, tl, vl, CPU, on_epoch=results.append)
    assert results == []  # no epoch reported, no checkpoint of it


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_dice_iou_and_accuracy_exact_values():
    truth = torch.cat([_mask([[1, 0], [0, 0]]), _mask([[0, 0], [0, 0]]), _mask([[1, 1], [0, 0]]),
                       _mask([[0, 0], [0, 0]])])
    pred = torch.cat([_mask([[1, 1], [0, 0]]), _mask([[0, 0], [0, 0]]), _mask([[0, 0], [0, 0]]),
                      _mask([[0, 0], [0, 1]])])
    dice, iou = loop.overlap(pred, truth)
    # 1 of 3 marked pixels shared; both empty (a photo without the target, rightly empty); all missed;
    # something predicted where nothing is
    assert dice.tolist() == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert iou.tolist() == pytest.approx([1 / 2, 1.0, 0.0, 0.0])

    class Fixed(torch.nn.Module):  # "predicts" pred: logits +-10
        def forward(self, images):
            return (pred[: len(images)] * 20 - 10).to(images.dtype)

    parts = loop.TrainingSetup(Fixed(), None, None, None, None)
    # the loader's masks are coverage (0-255); a pixel at least half inside counts as inside
    coverage = (truth * 255).to(torch.uint8)
    coverage[2, 0, 1, 0], coverage[2, 0, 1, 1] = 127, 128  # the third image gains one pixel inside
    batches = [(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), coverage)]
    va = loop.validate(parts, batches, CPU, loss="bce")
    assert va["val_dice"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
    assert va["val_iou"] == pytest.approx((1 / 2 + 1 + 0 + 0) / 4)
    assert va["val_accuracy"] == pytest.approx(11 / 16)  # 5 of 16 pixels wrong


def test_losses_exact_values():
    logits, target = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    bce = math.log(2)  # sigmoid(0) = 0.5 for every pixel of a full mask
    assert loop.loss_fn(logits, target, "bce").item() == pytest.approx(bce)
    # soft Dice with +1 smoothing: (2 * 2 + 1) / (2 + 4 + 1)
    assert loop.loss_fn(logits, target, "bce+dice").item() == pytest.approx(bce + 1 - 5 / 7)


def test_the_configured_loss_is_the_one_trained_and_reported(small_dir, tmp_path):
    cfg = tiny_config(small_dir, tmp_path, **{"train.loss": "bce+dice", "train.epochs": 1})
    parts, results = _run(cfg, small_dir)
    _, va = build_datasets(cfg, load_for(cfg, small_dir))
    _, vl = loop.make_loaders(va, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
    reported = results[0].metrics["val_loss"]
    assert reported == pytest.approx(loop.validate(parts, vl, CPU, loss="bce+dice")["val_loss"], rel=1e-4)
    assert abs(reported - loop.validate(parts, vl, CPU, loss="bce")["val_loss"]) > 0.05


def test_grad_clip_bounds_every_step(small_dir, tmp_path):
    def norms_of(cfg):
        tr, va = build_datasets(cfg, load_for(cfg, small_dir))
        parts = loop.build(cfg, CPU)
        seen = []
        parts.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in parts.model.parameters() if p.grad is not None])))))
        tl, vl = loop.make_loaders(tr, va, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
        loop.fit(cfg, parts, tl, vl, CPU, on_epoch=lambda result: None)
        return seen

    free = norms_of(tiny_config(small_dir, tmp_path, **{"train.epochs": 1}))
    clipped = norms_of(tiny_config(small_dir, tmp_path, **{"train.epochs": 1, "train.grad_clip": 0.01}))
    assert max(free) > 0.05  # unclipped steps exceed the bound, so the bound below is the setting at work
    assert len(clipped) == len(free) and max(clipped) <= 0.01 * (1 + 1e-5)


def test_the_loop_runs_without_ray_or_pyarrow():
    """The loop imports neither Ray nor pyarrow: it runs and is unit-tested without them."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['ray'] = sys.modules['pyarrow'] = None\n"
            "from lfa_ray import loop\nfrom lfa_ray.config import load_config\n"
            "loop.build(load_config(None, ['model.features=[4,8]']), __import__('torch').device('cpu'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_compiled_model_trains_like_the_eager_one_and_saves_plain_weights(small_dir, tmp_path):
    """train.compile on CPU (inductor): same losses as eager, and checkpoints load into a bare UNet."""
    from lfa_ray.model import UNet

    cfg = tiny_config(small_dir, tmp_path, **{"train.amp": "off"})
    eager_parts, eager = _run(cfg, small_dir)
    cfg.train.compile = True
    parts, compiled = _run(cfg, small_dir)
    assert hasattr(parts.model, "_orig_mod")  # it really ran compiled
    for a, b in zip(eager, compiled, strict=True):
        assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-3)
        assert b.metrics["val_loss"] == pytest.approx(a.metrics["val_loss"], rel=1e-3)
    state = compiled[-1].checkpoint["model"]
    assert list(state) == list(eager_parts.model.state_dict())  # no _orig_mod. prefix
    UNet(features=cfg.model.features).load_state_dict(state)


def test_loader_workers_auto_and_pinned_memory(small_dir, tmp_path):
    cuda = torch.device("cuda")  # a device object needs no GPU
    assert loop.loader_workers("auto", CPU, cpus=4) == 0  # CPU workers: the cores train the model
    assert loop.loader_workers("auto", cuda, cpus=4) == 4  # GPU workers: augmentation moves out of the way
    assert loop.loader_workers(2, cuda, cpus=4) == loop.loader_workers(2, CPU, cpus=4) == 2
    cfg = tiny_config(small_dir, tmp_path)
    tr, va = build_datasets(cfg, load_for(cfg, small_dir))
    tl, vl = loop.make_loaders(tr, va, batch_size=4, seed=0, loader_workers=2, pin_memory=True)
    assert tl.num_workers == vl.num_workers == 2 and tl.pin_memory and vl.pin_memory
    images, masks = next(iter(tl))  # two worker processes really produce augmented batches
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 1, 32, 32)


def test_loader_processes_draw_each_epochs_augmentation_as_the_loop_itself_would(small_dir, tmp_path):
    """Persistent loader processes hold their own copy of the dataset: each item's augmentation
    must still follow (seed, epoch, index), not a stream every process starts alike (two processes
    drew identical augmentations, and later epochs went on from the first epoch's seed)."""
    cfg = tiny_config(small_dir, tmp_path)
    tr, va = build_datasets(cfg, load_for(cfg, small_dir))
    epochs = {}
    for workers in (0, 2):
        tl, _ = loop.make_loaders(tr, va, batch_size=2, seed=0, loader_workers=workers)
        epochs[workers] = []
        for epoch in (1, 2):
            tl.sampler.set_epoch(epoch)  # as fit() does
            epochs[workers].append(torch.cat([masks for _, masks in tl]))
    for a, b in zip(epochs[0], epochs[2], strict=True):
        assert torch.equal(a, b)
    first = epochs[2][0]
    assert not torch.equal(first[0::2], first[1::2])  # the two processes' items differ
    assert not torch.equal(epochs[2][0], epochs[2][1])
