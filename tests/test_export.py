"""Exported models (ONNX through ONNX Runtime, TorchScript) against PyTorch on real photos."""

import shutil

import numpy as np
import pytest
import torch

from lfa_ray import cli, export
from lfa_ray.augment import resize
from lfa_ray.checkpoint import load_model, state_bytes
from lfa_ray.config import load_config
from lfa_ray.data import discover
from lfa_ray.images import read_photo
from lfa_ray.infer import predict

from helpers import error_line


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, small_dir):
    """A small model trained a few epochs on real photos (its masks are neither empty nor full)."""
    from lfa_ray import loop
    from lfa_ray.data import build_datasets, load_for

    cfg = load_config(None, ["data.image_size=32", "model.features=[4,8]", f"data.path={small_dir}",
                             "train.epochs=4", "train.batch_size=4", "train.ema_epochs=null"])
    train, val = build_datasets(cfg, load_for(cfg, small_dir))
    parts = loop.build(cfg, torch.device("cpu"))
    tl, vl = loop.make_loaders(train, val, batch_size=4, seed=0)
    loop.fit(cfg, parts, tl, vl, torch.device("cpu"), on_epoch=lambda result: None)
    path = tmp_path_factory.mktemp("export") / "model.pt"
    path.write_bytes(state_bytes({"model": loop.evaluated(parts).state_dict(), "config": cfg.to_dict()}))
    return path


def _photos(small_dir, size: int) -> np.ndarray:
    return np.stack([resize(read_photo(p.image).pixels, None, size)[0] for p in discover(small_dir).pairs])


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exported_masks_match_pytorch_on_real_photos(model_file, small_dir, tmp_path, fmt):
    out, size = export.export(str(model_file), tmp_path / "m", fmt)
    assert out.name == "m" + export.SUFFIX[fmt] and size == 32
    images = _photos(small_dir, size)
    model, _, _ = load_model(model_file, torch.device("cpu"))
    # lfa_ray.predict's own masks at the training size: the normalisation baked into the export is predict's
    ours = np.stack(predict(model, list(images), size, torch.device("cpu"), out_sizes=[(size, size)] * len(images)))
    theirs = (export.run_exported(out, images)[:, 0] > 0).astype(np.uint8)
    assert theirs.shape == ours.shape and 0 < ours.mean() < 1
    assert (theirs == ours).mean() >= 0.999
    assert export.agreement(str(model_file), out, images[:3]) >= 0.999  # any batch size


def test_export_command_and_bad_input(model_file, tmp_path, capsys):
    assert cli.export(["--checkpoint", str(model_file), "--format", "onnx", "--size", "48",
                       "--out", str(tmp_path / "phone")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'phone.onnx'} (onnx): input image uint8 (N, 48, 48, 3)" in out
    assert "masks agree with PyTorch on 100" in out or "masks agree with PyTorch on 99.9" in out
    assert "refining model" not in out  # a model without one
    run = tmp_path / "run"  # a run with a refining model: the export says it is the window model's
    (run / "refine").mkdir(parents=True)
    shutil.copy(model_file, run / "model.pt")
    shutil.copy(model_file, run / "refine" / "model.pt")
    assert cli.export(["--checkpoint", str(run), "--format", "torchscript", "--out", str(tmp_path / "w")]) == 0
    assert f"its refining model (the second stage) exports with --checkpoint {run / 'refine' / 'model.pt'}" in \
        capsys.readouterr().out
    assert cli.export(["--checkpoint", str(tmp_path / "nothing"), "--format", "torchscript",
                       "--out", str(tmp_path / "x")]) == 2
    assert "no model here" in error_line(capsys)
    assert cli.export(["--checkpoint", str(model_file), "--format", "onnx", "--size", "2",
                       "--out", str(tmp_path / "x")]) == 2
    assert "--size 2: too small for the model's 2 levels; use at least 4" in error_line(capsys)
    assert not list(tmp_path.glob("x*"))  # a refused export writes nothing
