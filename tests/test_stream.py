"""Packs at the training size and photos streamed to the workers by Ray Data (data.stream), on real
Parquet files and a real local Ray cluster."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lfa_ray import cli, data, stream
from lfa_ray.augment import train_transform, val_transform
from lfa_ray.errors import UserError
from lfa_ray.runlog import read_metrics

from helpers import error_line, set_args, tiny_overrides


def _sized_pack(src, tmp_path, size: int, capsys=None):
    out = tmp_path / f"at{size}.parquet"
    assert cli.data(["pack", str(src), str(out), "--size", str(size)]) == 0
    if capsys is not None:
        assert f"at {size} x {size} px" in capsys.readouterr().out
    return out


def test_a_pack_at_the_training_size_gives_the_pixels_of_the_originals(small_dir, tmp_path, capsys):
    packed = _sized_pack(small_dir, tmp_path, 48, capsys)
    folder, sized = data.load(small_dir, 48), data.load(packed, 48)
    assert sized.train.names == folder.train.names and sized.val.names == folder.val.names
    for a, b in ((folder.train, sized.train), (folder.val, sized.val)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)  # coverage kept, not 0/1
    assert 0 < (sized.train.masks % 255).sum()  # edge pixels partly inside survive the pack
    # a smaller size is resampled from the stored pixels: close to resizing the originals
    small, direct = data.load(packed, 32), data.load(small_dir, 32)
    assert np.abs(small.train.images.astype(int) - direct.train.images).mean() < 3
    assert np.abs(small.train.masks.astype(int) - direct.train.masks).mean() < 3
    # a larger one cannot be made from it
    with pytest.raises(UserError, match=r"packed at 48 px, but data.image_size is 64; pack the original photos "
                                        r"again with --size 64"):
        data.load(packed, 64)
    assert cli.data(["pack", str(packed), str(tmp_path / "up.parquet"), "--size", "64"]) == 2
    assert "packed at 48 px, but --size is 64" in error_line(capsys)
    assert not (tmp_path / "up.parquet").exists()


def test_a_light_look_at_a_pack_reads_no_photo(small_dir, tmp_path):
    packed = _sized_pack(small_dir, tmp_path, 32)
    light, full = data.discover(packed, light=True), data.discover(packed)
    assert [p.name for p in light.pairs] == [p.name for p in full.pairs] and light.packed_size == 32
    assert all(p.image.data == b"" and p.coverage is None for p in light.pairs)
    assert all(len(p.image.data) > 100 and len(p.coverage) == 32 * 32 for p in full.pairs)
    # a streamed run's test split: those rows' bytes alone, as a full look gives them
    test = data.split(light, 0.2, 42, 0.1).test
    filled = data.with_bytes(packed, test)
    assert [p.name for p in filled] == [p.name for p in data.split(full, 0.2, 42, 0.1).test] and len(filled) == 2
    assert [(p.image.data, p.mask.data, p.coverage) for p in filled] == [
        (p.image.data, p.mask.data, p.coverage) for p in data.split(full, 0.2, 42, 0.1).test]


def test_auto_streams_a_set_over_a_quarter_of_the_smallest_object_store():
    need = stream.decoded_bytes(1000, 96)  # 1000 x 96 x 96 x (RGB + coverage)
    assert need == 1000 * 96 * 96 * 4
    assert stream.choose("auto", 1000, 96, store=4 * need) == (
        False, "in memory: 1000 photos at 96 px are 35 MiB decoded, within a quarter of the smallest node's "
               "object store (141 MiB) (data.stream: auto)")
    streams, line = stream.choose("auto", 1000, 96, store=4 * need - 4)
    assert streams and line.startswith("streamed with Ray Data: 1000 photos at 96 px are 35 MiB decoded, more than")
    assert stream.choose(True, 10, 32, store=1e12)[0] and not stream.choose(False, 10**6, 512, store=1)[0]


def _digests(pairs) -> list[str]:
    return sorted(hashlib.sha1(i.numpy().tobytes() + m.numpy().tobytes()).hexdigest() for i, m in pairs)


@pytest.mark.slow
def test_streamed_photos_are_the_in_memory_photos_augmented_alike(ray_cluster, small_dir, tmp_path):
    """Each photo of an epoch is augmented by (seed, epoch, its index) wherever it is drawn: a streamed
    epoch holds exactly the in-memory epoch's tensors; two workers' validation shares make the set once."""
    packed = _sized_pack(small_dir, tmp_path, 32)
    splits = data.resolve_splits(packed, 0.2, 42, 0.1, light=True)
    source = stream.streamed(splits, data.locate(packed), 32)
    sets = stream.datasets(source)
    memory = data.load(packed, 32, 0.2, 42, 0.1)
    epoch, seed = 3, 5
    vals = [stream.Loader(sets["val"].iterator(), val_transform(), size=32, batch_size=2, seed=seed,
                          photos=len(range(rank, len(source.val), 2)), shuffle=False, keep=(rank, 2))
            for rank in (0, 1)]

    def train_loader(**ahead) -> stream.Loader:
        return stream.Loader(sets["train"].iterator(), train_transform(1.0), size=32, batch_size=4, seed=seed,
                             photos=len(source.train), shuffle=True, **ahead)

    def drawn(loader) -> list:
        return [(i, m) for images, masks in loader for i, m in zip(images, masks, strict=True)]

    loader = train_loader(then=vals[0], epochs=epoch + 1)
    loader.set_epoch(epoch)
    streamed = drawn(loader)
    in_memory = data.SegmentationDataset(memory.train, train_transform(1.0), seed=seed)
    assert len(streamed) == len(in_memory) == 17 and len(loader) == 5  # 4 batches of 4 and one of 1
    assert _digests(streamed) == _digests([in_memory[(epoch, i)] for i in range(len(in_memory))])
    # read ahead: validation from the epoch's start, the next epoch from its end; the last epoch reads nothing
    assert vals[0].ahead is not None and loader.ahead.epoch == epoch + 1
    loader.set_epoch(epoch + 1)
    following = _digests(drawn(loader))
    assert following != _digests(streamed) and loader.ahead is None  # a new epoch, new draws
    fresh = train_loader()
    fresh.set_epoch(epoch + 1)
    assert _digests(drawn(fresh)) == following  # the epoch read ahead is that epoch

    shares = [drawn(val) for val in vals]
    whole = data.SegmentationDataset(memory.val, val_transform())
    assert len(shares[0]) == 3 and len(shares[1]) == 2  # 5 validation photos: indices 0, 2, 4 and 1, 3
    assert _digests(shares[0] + shares[1]) == _digests(whole[i] for i in range(len(whole)))
    assert torch.equal(vals[1].shown()[0][0], shares[1][0][0])  # TensorBoard's overlays: the first photos it gave


@pytest.mark.slow
def test_train_streams_a_packed_set_learns_and_resumes(ray_cluster, synth_dir, tmp_path, capsys):
    packed = _sized_pack(synth_dir, tmp_path, 48)
    sets = tiny_overrides(packed, tmp_path, **{"data.image_size": 48, "model.features": "[16,32,64]",
                                               "data.stream": "true", "train.epochs": 8, "train.batch_size": 8,
                                               "train.lr": 3e-3})
    splits = data.resolve_splits(packed, 0.2, 42, 0.1)
    train, val = len(splits.train), len(splits.val)
    assert cli.train(set_args(sets) + ["--name", "streamed"]) == 0
    out = capsys.readouterr().out
    assert f"data: streamed with Ray Data (data.stream: true; {train + val} photos at 48 px are 1 MiB decoded)" in out
    # one CPU of the 2-CPU test cluster is left to Ray Data's tasks; Ray Data's own lines stay in its log
    assert "devices: CPU, 1 per training worker" in out
    assert "SplitCoordinator" not in out and "Dataset" not in out and "Traceback" not in out
    run = tmp_path / "streamed"
    rows = read_metrics(run / "metrics.csv")
    dice, loss = [r["val_dice"] for r in rows], [r["train_loss"] for r in rows]
    # it learned the window from the stream (in memory, the same run: 0.14 -> 0.42, loss 1.52 -> 0.94)
    assert dice[0] < 0.2 and max(dice[-3:]) > 0.25 and loss[-1] < 0.7 * loss[0], (dice, loss)
    assert all(r["train_images"] == train for r in rows)  # every training photo once an epoch
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert events.Images("val/overlay")

    assert cli.train(["--resume-from", str(run), "--set", "train.epochs=9"]) == 0
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == list(range(1, 10))
    assert "data: streamed with Ray Data" in capsys.readouterr().out  # the resumed run streams too


@pytest.mark.slow
@pytest.mark.parametrize("bad_file", ["photo", "mask"])
def test_a_bad_row_ends_a_streamed_run_in_one_line(ray_cluster, small_dir, tmp_path, capsys, bad_file):
    """A photo that does not decode, or a mask of another size than its photo: the in-memory path's
    line, naming the file, when Ray Data reads the row."""
    broken = tmp_path / "broken"
    shutil.copytree(small_dir, broken)
    photo = sorted((broken / "train_images").iterdir())[3]
    if bad_file == "photo":
        bad = photo
        bad.write_bytes(b"not a photo")
        why = "cannot be decoded as an image; replace or remove it"
    else:
        bad = broken / "train_masks" / f"{photo.stem}_mask.gif"
        with Image.open(bad) as mask:
            w, h = mask.size
            mask.resize((w // 2, h // 2)).save(bad)
        why = f"mask is {w // 2}x{h // 2} but {photo.name} is {w}x{h}; masks must match their image's size"
    sets = tiny_overrides(broken, tmp_path / "results", **{"data.stream": "true"})
    assert cli.train(set_args(sets) + ["--name", "b"]) == 2
    line = error_line(capsys)
    assert line == f"error: training failed: {bad}: {why}; run the same command again (nothing was kept)"
    assert not (tmp_path / "results" / "b").exists()
