"""The GPU regime's settings, checked without a GPU: where workers run, what is refused, how many
trials share a GPU. A real local Ray cluster that declares logical GPUs stands in for a GPU node;
the hardware itself is measured by benchmarks/gpu_suite.py."""

import json
import subprocess
import sys

import pytest

from lfa_ray.errors import UserError

from helpers import REPO, tiny_config

# One Ray cluster per process: the node with 16 CPUs and 1 logical GPU runs in its own interpreter.
_GPU_NODE = r"""
import json, sys
import ray
from lfa_ray import ray_train, tune
from lfa_ray.config import load_config
from lfa_ray.errors import UserError
from lfa_ray.storage import locate

ray_train.init_ray(num_cpus=16, num_gpus=1)
out = {}
for name, items in json.loads(sys.argv[1]).items():
    cfg = load_config(None, items)
    try:
        gpus = ray_train.check_resources(cfg)
    except UserError as exc:
        out[name] = {"error": str(exc)}
        continue
    data = ray_train.SharedData(ray.put(None), "", cfg.data.image_size)
    sc = ray_train.make_trainer(cfg, data=data, storage=locate(sys.argv[2]), name=name,
                                gpus_per_worker=gpus).scaling_config
    out[name] = {"gpus": gpus, "concurrency": tune.default_concurrency(cfg, gpus),
                 "trainer": [sc.num_workers, sc.use_gpu, sc.resources_per_worker]}
print("RESULT " + json.dumps(out))
"""

CASES = {
    "auto": [],
    "quarter": ["scaling.gpus_per_worker=0.25", "scaling.cpus_per_worker=3"],
    "tenth": ["scaling.gpus_per_worker=0.1"],
    "cpu_bound": ["scaling.gpus_per_worker=0.25", "scaling.cpus_per_worker=8"],
    "off": ["scaling.use_gpu=false"],
    "two_whole": ["scaling.gpus_per_worker=2"],
    "two_workers": ["scaling.num_workers=2"],
}


@pytest.mark.slow
def test_gpu_concurrency_and_placement_on_a_cluster_that_declares_a_gpu(tmp_path):
    done = subprocess.run([sys.executable, "-c", _GPU_NODE, json.dumps(CASES), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.split("RESULT ", 1)[1])
    # auto on a node with a GPU: one whole GPU per worker, so one trial at a time
    assert r["auto"] == {"gpus": 1.0, "concurrency": 1, "trainer": [1, True, {"CPU": 1, "GPU": 1.0}]}
    # fractions: GPUs / (workers x fraction) trials, unless the CPUs run out first
    assert r["quarter"] == {"gpus": 0.25, "concurrency": 4, "trainer": [1, True, {"CPU": 3, "GPU": 0.25}]}
    assert r["tenth"]["concurrency"] == 10  # 1 / 0.1 is 9.999... in floating point
    assert r["cpu_bound"]["concurrency"] == 2  # 16 CPUs / 8 per worker
    assert r["off"] == {"gpus": 0.0, "concurrency": 16, "trainer": [1, False, {"CPU": 1}]}
    assert "needs 2 GPUs but the Ray cluster has 1; use --set scaling.num_workers=1" in r["two_whole"]["error"]
    assert "needs 2 GPUs but the Ray cluster has 1" in r["two_workers"]["error"]
    assert "devices: GPU, 0.25 GPUs per training worker (scaling.gpus_per_worker=0.25; the Ray cluster has 1)" \
        in done.stdout


@pytest.mark.slow
def test_auto_falls_back_to_cpu_and_gpu_settings_without_gpus_are_refused(ray_cluster, small_dir, tmp_path,
                                                                          capsys, monkeypatch):
    from lfa_ray.ray_train import check_resources

    assert check_resources(tiny_config(small_dir, tmp_path)) == 0.0  # use_gpu: auto, no GPU in the cluster
    assert "devices: CPU, 1 per training worker (no GPU in the Ray cluster)" in capsys.readouterr().out
    for sets, fragment in [({"scaling.gpus_per_worker": 0.5},
                            "scaling.gpus_per_worker=0.5 needs GPUs but the Ray cluster has 0; use --set "
                            "scaling.gpus_per_worker=null to train on CPU"),
                           ({"scaling.use_gpu": "true"},
                            "scaling.use_gpu: true needs GPUs but the Ray cluster has 0; "
                            "use --set scaling.use_gpu=auto")]:
        with pytest.raises(UserError) as info:
            check_resources(tiny_config(small_dir, tmp_path, **sets))
        assert fragment in str(info.value)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a joined cluster may add GPU nodes: only a note
    assert check_resources(tiny_config(small_dir, tmp_path, **{"scaling.gpus_per_worker": 0.5})) == 0.5
    assert "waits for the cluster's autoscaler" in capsys.readouterr().out


@pytest.mark.e2e
def test_the_gpu_suite_runs_every_part_on_cpu_in_smoke_mode(tmp_path):
    """The suite spends scarce GPU time: every part must run end to end before it gets there."""
    out = tmp_path / "suite"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    figures = {f["key"]: f["value"] for f in report["figures"]}
    assert not [k for k in figures if k.endswith((".failed", ".skipped")) or k == "e.sweep"], figures
    rates = ["b.img_s.off.batch8", "b.img_s.fp16.batch8", "b.img_s.bf16.batch8", "b.img_s.bf16.batch8.compiled",
             "c.trainer_img_s", "c.epoch_ratio", "c.fixed_s", "c.fastest.plain_img_s", "c.fastest_ratio",
             "d.loader_samples_s.2_workers", "e.shared_img_s",
             "e.alone_img_s", "e.sharing_speedup", "f.predict_img_s"]
    for key in rates:
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures.get(key))
    for key in ["e.best_trial_val_dice", "e.final_test_dice", "h.heldout_dice", "h.heldout_classic_dice"]:
        # two epochs of a tiny model: any score
        assert isinstance(figures[key], float) and 0 <= figures[key] <= 1, (key, figures.get(key))
    assert "devices: CPU" in figures["e.devices"] and figures["h.real_dice"] == "no set"  # --smoke: no real photos
    assert figures["b.to_unit_exact"] is True
    spans = report["extra"]["e.spans"]  # every trial epoch, kept for reading the sharing figure afterwards
    assert {s["epoch"] for s in spans} >= {1, 2} and all(s["end"] > s["start"] and s["img_s"] > 0 for s in spans)
    table = (out / "gpu_suite.md").read_text()
    assert "| c.epoch_ratio |" in table and "torch" in table.splitlines()[0]
