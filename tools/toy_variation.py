"""The learned-model checks of the unit tests (a toy model must learn) across seeds and torch thread counts.

Companion of tools/quick_variation.py for the small checks: `tests/test_train.py::test_one_epoch_lowers_loss`
(loss after one epoch < before) and 03_train's `run_epoch` cell (a linear model separates brighter fakes:
loss falls, AUC > 0.8) and `train` cell (training loss falls over 3 epochs). Each is rerun with seeds 0, 1, 2
and 1 and 2 threads; the table shows how far every run is from the asserted bound.

    .venv/bin/python tools/toy_variation.py [out.csv]
"""
from __future__ import annotations
import subprocess, sys, json, tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
seed, threads = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[3])
from test_train import TINY, _train_loss
from fixtures_crops import synthetic_crops  # tests/ is on the path (argv[3])
from deepfake_explain.model import build_model
from deepfake_explain.checkpoint import load_train_config, model_config
from deepfake_explain.core import Runtime
from deepfake_explain.train import (IndexedDataset, TrainOptions, bce_pos_weight, run_epoch,
                                    seed_everything, train)
out = {}
with tempfile.TemporaryDirectory() as td:
    td = Path(td)
    # tests/test_train.py::test_one_epoch_lowers_loss (seed 0 there)
    crops = synthetic_crops(td / "crops")
    cfg = load_train_config(TINY)
    seed_everything(seed); before = build_model(model_config(cfg))
    train(TINY, crops, td / "run", TrainOptions(num_epochs=1, workers=0, seed=seed, progress=False))
    after = build_model(model_config(cfg))
    after.load_state_dict(torch.load(td / "run" / "last.pt", weights_only=True)["model"])
    out["test_train.loss_drop"] = _train_loss(before, crops, cfg) - _train_loss(after, crops, cfg)  # asserted > 0
    # 03_train, run_epoch cell (generator seed 0 there)
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(64) % 2).float()
    x = (torch.rand(64, 3, 8, 8, generator=g) * 255 + y[:, None, None, None] * 20) / 255
    ds = IndexedDataset(TensorDataset(x, y))
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1)); nn.init.zeros_(net[1].weight); nn.init.zeros_(net[1].bias)
    lossf = nn.BCEWithLogitsLoss(reduction="none", pos_weight=torch.tensor(bce_pos_weight(y)))
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    ld = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    b = run_epoch(net, ld, lossf, Runtime("cpu"), progress=False)
    for _ in range(3): run_epoch(net, ld, lossf, Runtime("cpu"), opt, progress=False)
    a = run_epoch(net, ld, lossf, Runtime("cpu"), progress=False)
    out["03_train.run_epoch.loss_drop"] = b["loss"] - a["loss"]        # asserted > 0
    out["03_train.run_epoch.auc_minus_0.8"] = a["auc"] - 0.8           # asserted > 0
    # 03_train, train cell: tiny config, 3 epochs on the toy crops (seed 1 there)
    tiny = {"model": {"image-size": 32, "trainable-blocks": 16, "dropout": 0.0, "emb-dropout": 0.0},
            "spatial": {"feature-block": 2, "emb-dim": 32, "depth": 1, "heads": 2, "dim-head": 16, "mlp-dim": 32},
            "training": {"lr": 3e-3, "bs": 8, "optimizer": "adamw", "scheduler": "steplr", "step-size": 2,
                         "bn-momentum": 0.1, "frames-per-video": 4, "rebalancing_fake": 1}}
    h = train(tiny, synthetic_crops(td / "toy", n_videos=12), td / "a", TrainOptions(num_epochs=3, workers=0, progress=False, seed=seed))["history"]
    out["03_train.train.loss_drop"] = h[0]["train_loss"] - h[-1]["train_loss"]  # asserted > 0
print(json.dumps(out))
"""


def main(out_csv=None, seeds=(0, 1, 2), threads=(1, 2)) -> pd.DataFrame:
    rows = []
    for t in threads:
        for s in seeds:
            r = subprocess.run([sys.executable, "-c", CHILD, str(s), str(t), str(ROOT / "tests")], capture_output=True,
                               text=True, cwd=ROOT, env={"OMP_NUM_THREADS": str(t), "PATH": "/usr/bin:/bin"})
            if r.returncode: raise RuntimeError(f"seed {s}, {t} threads failed:\n{r.stderr[-3000:]}")
            rows.append({"seed": s, "threads": t, **json.loads(r.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    num = df.drop(columns=["seed", "threads"])
    summary = pd.DataFrame({"min": num.min(), "max": num.max(), "range": num.max() - num.min()})
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    if out_csv: df.to_csv(out_csv, index=False)
    return df


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
