"""Training throughput and peak memory for two dataset sizes (issue 6).

Generates 32 px face crops for 50 and for 500 videos (4 frames each, train and val splits), then runs one
training epoch of `deepfake_explain.train.train` on each in a fresh process (one CPU thread, no loader
workers, so the process's peak RSS is the whole job's) with a small model. Reports training images/s
(training pass only), epoch images/s, and peak RSS; the crops are read lazily, so peak RSS must stay
within 10% between the two sizes.

    .venv/bin/python benchmarks/bench_train.py [out.json]
"""
from __future__ import annotations
import json, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"model": {"image-size": 32, "trainable-blocks": 16, "dropout": 0.0, "emb-dropout": 0.0},
          "spatial": {"feature-block": 4, "emb-dim": 64, "depth": 2, "heads": 2, "dim-head": 32, "mlp-dim": 128},
          "training": {"lr": 1e-3, "bs": 32, "optimizer": "adamw", "scheduler": "none", "bn-momentum": 0.1,
                       "frames-per-video": 4, "rebalancing_fake": 1}}
CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
def peak_rss_mb():  # VmHWM: this process's own peak (ru_maxrss keeps a large parent's peak across fork + exec)
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))) / 1024
from deepfake_explain.train import TrainOptions, train
t = time.time()
res = train(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], TrainOptions(num_epochs=1, workers=0, seed=0, progress=False))
row = res["history"][-1]
print(json.dumps({"n_train": row["n_train"], "n_val": row["n_val"], "train_seconds": row["train_seconds"],
                  "epoch_seconds": row["seconds"], "wall_seconds": time.time() - t,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def run_size(tmp: Path, n_videos: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_crops import synthetic_crops
    crops = synthetic_crops(tmp / f"crops{n_videos}", n_videos)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CONFIG), str(crops), str(tmp / f"run{n_videos}")],
                         capture_output=True, text=True, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if out.returncode: raise RuntimeError(f"training on {n_videos} videos failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["train_images_per_s"] = r["n_train"] / r["train_seconds"]
    r["epoch_images_per_s"] = (r["n_train"] + r["n_val"]) / r["epoch_seconds"]
    return {"videos": n_videos, **r}


def main(out_json=None, sizes=(50, 500)) -> dict:
    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        runs = [run_size(Path(td), n) for n in sizes]
    small, big = runs[0], runs[-1]
    res = {"config": CONFIG, "device": "cpu (1 thread, workers=0)",
           "runs": {str(r["videos"]): r for r in runs},
           "peak_rss_ratio": big["peak_rss_mb"] / small["peak_rss_mb"],
           "peak_rss_within_10pct": abs(big["peak_rss_mb"] / small["peak_rss_mb"] - 1) <= 0.10,
           "train_throughput_ratio": big["train_images_per_s"] / small["train_images_per_s"],
           "seconds": time.time() - t0}
    for r in runs:
        print(f"{r['videos']:4d} videos: {r['n_train']} train frames, {r['train_images_per_s']:.1f} train img/s, "
              f"{r['epoch_images_per_s']:.1f} epoch img/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"peak RSS ratio {res['peak_rss_ratio']:.3f} (within 10%: {res['peak_rss_within_10pct']})")
    if out_json:
        sys.path.insert(0, str(ROOT))
        from deepfake_explain.data import write_json_atomic
        write_json_atomic(out_json, res)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
