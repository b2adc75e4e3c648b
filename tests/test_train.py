"""Integration tests of deepfake_explain.train: loss goes down, exact resume after SIGKILL, DDP on 2 CPU processes.

All runs use generated 32 px crops and a tiny model (one transformer block over the first EfficientNet
stages), one thread per process, so the whole file takes well under 4 minutes on 2 cores."""
from __future__ import annotations
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch

from fixtures_crops import sbi_crops, synthetic_crops
from deepfake_explain.model import build_model
from deepfake_explain.checkpoint import CHECKPOINT_FORMAT, load_train_config, model_config, read_checkpoint
from deepfake_explain.train import TrainOptions, make_datasets, make_loader, read_metrics, seed_everything, train

from conftest import TINY_TRAIN as TINY  # the small trainable detector shared by the tests
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    return synthetic_crops(tmp_path_factory.mktemp("crops"))




def test_shuffled_labels_are_permuted_per_video_with_a_fixed_seed(crops):
    "The data randomisation test's training data: train labels permuted per video (seed fixed), class counts kept, validation untouched."
    import numpy as np
    cfg = load_train_config(TINY)
    true_tr, true_va, s_true = make_datasets(crops, cfg)
    (tr0, va0, s0), (tr0b, _, _), (tr1, _, s1) = (make_datasets(crops, cfg, seed=k, shuffled_labels=True) for k in (0, 0, 1))
    assert (s_true["labels"], s0["labels"], s1["labels"]) == ("true", "shuffled (seed 0)", "shuffled (seed 1)")
    assert (tr0.labels != true_tr.labels).any()                                  # really permuted
    assert np.array_equal(tr0.labels, tr0b.labels) and not np.array_equal(tr0.labels, tr1.labels)  # a fixed seed: one permutation
    assert sorted(tr0.labels) == sorted(true_tr.labels) and s0["pos_weight"] == s_true["pos_weight"]  # class counts kept
    video = [Path(p.decode()).parent for p in tr0.paths]
    assert all(len({l for v, l in zip(video, tr0.labels) if v == u}) == 1 for u in set(video))  # one label per video
    assert np.array_equal(va0.labels, true_va.labels)                             # validation keeps the true labels


def _train_loss(model, crops, cfg) -> float:
    """Mean loss of `model` over the training frames (validation transform, fixed shuffled batches). BatchNorm uses
    batch statistics: after one short epoch its running statistics still lag, and the test is about the weights. The
    batches mix both classes as in training (in file order a batch holds one class, and its statistics hide the
    difference: the loss then rose for 2 of 5 seeds after 2 epochs; shuffled, it fell by 0.21-0.27 for seeds 0-4)."""
    train_ds, val_ds, summary = make_datasets(crops, cfg)
    train_ds.transform = val_ds.transform
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(summary["pos_weight"]), reduction="sum")
    model.train()
    with torch.no_grad():
        total = sum(loss_fn(model(x).reshape(-1), y).item() for x, y, _ in make_loader(train_ds, 16, True, seed=123))
    return total / len(train_ds)


def test_one_epoch_lowers_loss(crops, tmp_path, one_thread):
    cfg = load_train_config(TINY)
    seed_everything(0)                             # train() builds its model after the same seeding
    before = build_model(model_config(cfg))
    res = train(TINY, crops, tmp_path / "run", TrainOptions(num_epochs=1, workers=0, seed=0, progress=False))
    after = build_model(model_config(cfg))
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    after.load_state_dict(ck["model"])
    l0, l1 = _train_loss(before, crops, cfg), _train_loss(after, crops, cfg)
    assert l1 < l0, (l0, l1)
    assert res["history"][0]["n_train"] == 64 and ck["epoch"] == 1 and ck["format"] == CHECKPOINT_FORMAT


RUN = """
import sys, torch
torch.set_num_threads(1)
from deepfake_explain.train import TrainOptions, train
train(dict({tiny!r}), {crops!r}, {out!r}, TrainOptions(num_epochs={epochs}, workers=0, seed=3, progress=False), resume={resume!r})
"""


def _run_script(out: Path, crops: Path, epochs: int, resume=None) -> list[str]:
    return [sys.executable, "-c", RUN.format(tiny=TINY, crops=str(crops), out=str(out), epochs=epochs,
                                             resume=str(resume) if resume else None)]


def test_resume_after_kill_is_exact(crops, tmp_path, one_thread):
    epochs = 3
    train(TINY, crops, tmp_path / "ref", TrainOptions(num_epochs=epochs, workers=0, seed=3, progress=False))  # uninterrupted reference
    out = tmp_path / "killed"
    proc = subprocess.Popen(_run_script(out, crops, epochs), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, killed_at = time.time() + 150, None
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.pt").exists() and read_checkpoint(out / "last.pt")["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL); killed_at = time.time(); break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = read_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= done < epochs, done
    saved = torch.load(out / "last.pt", weights_only=True)
    res = subprocess.run(_run_script(out, crops, epochs, resume=out / "last.pt"), env=ENV, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (tmp_path / "ref", out))
    assert b["epoch"] == epochs
    # the resumed run went on from the killed run's state: same weights, optimizer and schedule as the uninterrupted one
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for i, st in a["optimizer"]["state"].items():
        assert all(torch.equal(st[k], b["optimizer"]["state"][i][k]) for k in st)
    assert a["scheduler"] == b["scheduler"] and a["early_stopping"] == b["early_stopping"]
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    ref_rows = read_metrics(tmp_path / "ref" / "metrics.csv")
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in ref_rows]
    assert saved["optimizer"]["state"] and saved["epoch"] == done


DDP = """
import json, os, sys, numpy as np, torch
import deepfake_explain.train as T
rank = int(os.environ["RANK"])
calls, save = [], T.save_checkpoint
def logged(path, ck):
    calls.append(os.path.basename(str(path))); return save(path, ck)
T.save_checkpoint = logged
res = T.train(dict({tiny!r}), {crops!r}, {out!r}, T.TrainOptions(num_epochs=1, workers=1, seed=0, progress=False), T.training_runtime("cpu"))
json.dump({{"rank": rank, "world": res["world_size"], "indices": res["train_indices"].tolist(), "saves": calls}},
          open(os.path.join({out!r}, f"rank{{rank}}.json"), "w"))
"""


def test_ddp_two_cpu_processes(crops, tmp_path):
    out = tmp_path / "ddp"; out.mkdir()
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP.format(tiny=TINY, crops=str(crops), out=str(out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(29500 + os.getpid() % 1000), str(script)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stderr[-4000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [x["world"] for x in ranks] == [2, 2]
    seen = [set(x["indices"]) for x in ranks]
    assert seen[0] and seen[1] and not (seen[0] & seen[1]), "ranks saw overlapping training samples"
    assert seen[0] | seen[1] == set(range(64))
    assert ranks[1]["saves"] == [] and ranks[0]["saves"] == ["last.pt", "best.pt"]
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 1 and rows[0]["n_train"] == 64   # metrics gathered over both ranks
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["meta"]["world_size"] == 2 and ck["epoch"] == 1
    assert not any(k.startswith("module.") for k in ck["model"])


# --- no frozen random filters, ImageNet weights checked first, provenance --------------------------------------------

from imagenet_standin import write_standin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CLI = Path(sys.executable).parent / "deepfake-explain-train"  # the console script


def _cli(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRAIN_CLI)] + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_refuses_frozen_random_blocks_before_writing(crops, tmp_path):
    cfg = tmp_path / "frozen.yaml"
    cfg.write_text("model: {image-size: 32, backbone-weights: null, trainable-blocks: 3}\n")
    r = _cli(["--config", cfg, "--data_root", crops, "--output", tmp_path / "out", "--num_epochs", 1, "--workers", 0], ENV)
    assert r.returncode == 1, r.stderr
    assert f"{cfg}: invalid config" in r.stderr and "'model.trainable-blocks' = 3" in r.stderr and "'model.backbone-weights'" in r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_missing_imagenet_file_fails_before_work(crops, tmp_path):
    env = {**ENV, "TORCH_HOME": str(tmp_path / "th"), "DEEPFAKE_EXPLAIN_OFFLINE": "1"}
    r = _cli(["--config", ROOT / "configs" / "explained_architecture.yaml", "--data_root", crops, "--output", tmp_path / "out"], env)
    assert r.returncode == 1
    assert "efficientnet-b0-355c32eb.pth" in r.stderr and "https://github.com/lukemelas/EfficientNet-PyTorch/releases" in r.stderr
    assert str(tmp_path / "th" / "hub" / "checkpoints") in r.stderr and not (tmp_path / "out").exists()


def test_cli_trains_self_blended_on_real_faces_only(tmp_path):
    """`training.fakes: self-blended` (issue 28): the console script trains on a crop tree of real faces only, generating
    the fakes in the loader (on its workers: tests/test_self_blended.py), and the checkpoint's provenance says so."""
    import yaml
    real = sbi_crops(tmp_path / "real", n_videos=3, n_frames=2, size=40)
    cfg = tmp_path / "sbi.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "fakes": "self-blended"}}))
    r = _cli(["--config", cfg, "--data_root", real, "--output", tmp_path / "out", "--num_epochs", 1, "--workers", 0, "--quiet"], ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = read_checkpoint(tmp_path / "out" / "last.pt")
    p = {k: v for k, v in ck["provenance"].items() if k != "git_commit"}
    assert p == {"datasets": [], "methods": ["self-blended"], "fakes": "self-blended", "n_train_videos": 3, "n_val_videos": 3,
                 "backbone_init": "random", "image_size": 32, "layout": "spatial", "epochs": 1, "generated_data": False, "labels": "true"}
    train_split = ck["meta"]["dataset"]["train"]
    assert (train_split["frames"], train_split["real_frames"], train_split["fake_frames"]) == (12, 6, 6)
    assert ck["metrics"]["n_train"] == 12 and ck["metrics"]["n_val"] == 12   # every real face and its fake, both splits


def test_checkpoint_provenance(crops, tmp_path, monkeypatch, one_thread):
    "ImageNet (stand-in) backbone with frozen blocks: trains, and both checkpoints record what they were trained on."
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th")); monkeypatch.setenv("DEEPFAKE_EXPLAIN_OFFLINE", "1")
    write_standin(tmp_path / "th")
    cfg = {**TINY, "model": {**TINY["model"], "backbone-weights": "imagenet", "trainable-blocks": 1}}
    train(cfg, crops, tmp_path / "run", TrainOptions(num_epochs=2, workers=0, seed=0, progress=False))
    for name in ("last.pt", "best.pt"):
        ck = read_checkpoint(tmp_path / "run" / name)
        p = ck["provenance"]
        assert set(p) == {"datasets", "methods", "fakes", "n_train_videos", "n_val_videos", "backbone_init", "image_size", "layout",
                          "epochs", "git_commit", "generated_data", "labels"}
        assert {k: v for k, v in p.items() if k != "git_commit"} == {
            "datasets": ["FaceForensics++"], "methods": ["Deepfakes", "FaceSwap"], "fakes": "dataset", "n_train_videos": 16, "n_val_videos": 16,
            "backbone_init": "imagenet", "image_size": 32, "layout": "spatial", "epochs": ck["epoch"], "generated_data": False, "labels": "true"}
        assert p["git_commit"] is None or len(p["git_commit"]) == 40
    assert ck["meta"]["trainable_blocks"] == 1 and ck["meta"]["backbone_weights"].startswith("imagenet (")
    # resuming needs no ImageNet file (the checkpoint holds the backbone): an empty cache, offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    res = train(None, crops, tmp_path / "run", TrainOptions(num_epochs=3, workers=0, seed=0, progress=False), resume=tmp_path / "run" / "last.pt")
    assert res["start_epoch"] == 3 and read_checkpoint(tmp_path / "run" / "last.pt")["provenance"]["epochs"] == 3


def test_study_refuses_untrainable_config_before_writing(tmp_path, monkeypatch):
    "The study checks the training config (and the ImageNet file) before its first stage writes anything."
    from deepfake_explain.model import BackboneWeightsError, ConfigError
    from deepfake_explain.study import run_study
    cfg = tmp_path / "frozen.yaml"
    cfg.write_text("model: {backbone-weights: null, trainable-blocks: 3}\n")
    with pytest.raises(ConfigError, match="'model.trainable-blocks' = 3 freezes .* 'model.backbone-weights' is null"):
        run_study({"config": str(cfg)}, output=tmp_path / "run")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th")); monkeypatch.setenv("DEEPFAKE_EXPLAIN_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match="efficientnet-b0-355c32eb.pth"):
        run_study({"config": str(ROOT / "configs" / "explained_architecture.yaml")}, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()
