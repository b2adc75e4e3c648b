"""Training data loading at FaceForensics++ full-run size (issue 20): does the loader keep a GPU fed?

    .venv/bin/python benchmarks/bench_loader.py --out_json outputs/bench/loader.json            # 6,000 videos x 20 crops
    .venv/bin/python benchmarks/bench_loader.py --quick                                         # 600 videos x 20 crops

Generates a crop tree under /tmp (deleted afterwards) the size of a full FF++ c23 run: `videos` videos (Original and
five manipulation methods, split 72/14/14 % into train/val/test) of `crops_per_video` 224 px PNG face crops each.
The crops are hard links to a few distinct PNGs made from the real aligned faces of ../shared/data (a copy where
hard links are refused), so the loader opens and decodes a real file for every item. Then, each in a fresh process:

* `index`: seconds for `data.index_crops` over the whole tree, and the crops per second;
* `loader`: images/s of the training loader (`train.make_datasets` + `train.make_loader`: the training split,
  `frames-per-video` crops per video, the training augmentations at 224 px, batch 32, shuffled) with 1, 4 and 8
  workers, each in a short timed window after the workers' first batch;
* `sbi`: the same for self-blended training (issue 28: `training.fakes: self-blended`, 224 px, batch 32 = 16 real
  faces and their fakes made on the workers): images/s with 1, 4 and 8 workers, and the per-image cost of generation
  (one real face and its fake, `self_blended.self_blend`, beside the PNG decode), in one process. The Original videos'
  crops carry landmarks (the aligned faces' five points, in each video's crop marker, as `01_preprocess` writes them);
* `peak_rss_mb`: the peak RSS (VmHWM) of the main process (index + datasets + loader) for the full tree and for a tree
  one tenth of its size: flat in dataset size means within 10 %.

Beside them `training`: the training rate of the detector on this machine (`--device`; the default config: EfficientNet-B0
+ spatial transformer, 224 px, batch 32, forward + backward + AdamW step), so the loader's rate can be read against it.
`main(out_json=None, ...)` returns the results (and writes them atomically when `out_json` is given).
"""
from __future__ import annotations
import json, os, platform, shutil, subprocess, sys, tempfile, time
from pathlib import Path

from fastcore.script import call_parse

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METHODS = ("Original", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
CONFIG = {"model": {"image-size": 224, "layout": "spatial", "backbone-weights": None, "trainable-blocks": 16},
          "training": {"bs": 32, "frames-per-video": 20, "rebalancing_fake": 1.0, "rebalancing_real": 1, "augment": True}}


def face_pngs(out: Path, n: int = 8, size: int = 224) -> list[Path]:
    "`n` distinct 224 px PNG face crops (the shared aligned faces, resized, mirrored, brightened): the pool to link from."
    import cv2, numpy as np
    sys.path.insert(0, str(ROOT))
    from deepfake_explain.core import read_image_rgb, write_png_atomic
    faces = sorted((SHARED / "faces" / "test_images_aligned").glob("*/1.png"))
    if not faces: raise FileNotFoundError(f"{SHARED}/faces/test_images_aligned: no aligned faces (the benchmark needs ../shared/data)")
    out.mkdir(parents=True, exist_ok=True)
    pool = []
    for k in range(n):
        img = cv2.resize(read_image_rgb(faces[k % len(faces)]), (size, size), interpolation=cv2.INTER_CUBIC)
        if k // len(faces) % 2: img = img[:, ::-1]
        img = np.clip(img.astype(np.int16) + 6 * (k // len(faces)), 0, 255).astype(np.uint8)
        pool.append(write_png_atomic(out / f"face{k}.png", img))
    return pool


# the five landmarks (eyes, nose, mouth corners) of the shared aligned faces at 160 px (nbs/03a_self_blended.ipynb), scaled
ALIGNED_LANDMARKS = [[43, 69], [115, 69], [80, 97], [52, 126], [112, 125]]


def pool_landmarks(pool: list[Path], n_faces: int, size: int = 224) -> list:
    "The landmarks of each pool PNG (`face_pngs`: the aligned faces at `size` px, every other round mirrored)."
    import numpy as np
    lm = np.array(ALIGNED_LANDMARKS, float) * size / 160
    return [(lm * [-1, 1] + [size - 1, 0] if k // n_faces % 2 else lm).round(2).tolist() for k in range(len(pool))]


def make_tree(root: Path, videos: int, crops_per_video: int, pool: list[Path], landmarks: list | None = None) -> dict:
    """The crop tree `<root>/<split>_set/<method>/<video>/<frame>_0.png` of `videos` x `crops_per_video` hard-linked PNGs;
    with `landmarks` (one per pool PNG) each Original video's crop marker holds its crops' landmarks."""
    t0, linked, copied = time.perf_counter(), 0, 0
    for v in range(videos):
        method = METHODS[v % len(METHODS)]
        r = v % 50
        split = "train" if r < 36 else "val" if r < 43 else "test"
        d = root / f"{split}_set" / method / f"{v:05d}"
        d.mkdir(parents=True)
        for f in range(crops_per_video):
            src, dst = pool[(v + f) % len(pool)], d / f"{f * 10}_0.png"
            try: os.link(src, dst); linked += 1
            except OSError: shutil.copyfile(src, dst); copied += 1
        if landmarks is not None and method == "Original":
            lms = {f"{f * 10}_0.png": landmarks[(v + f) % len(pool)] for f in range(crops_per_video)}
            (d / ".done.json").write_text(json.dumps({"crops": crops_per_video, "landmarks": lms}))
    return {"videos": videos, "crops": videos * crops_per_video, "seconds": time.perf_counter() - t0,
            "hard_links": linked, "copies": copied, "png_bytes": int(sum(p.stat().st_size for p in pool) / len(pool))}


CHILD = r"""
import json, os, sys, time, torch
torch.set_num_threads(1)
from deepfake_explain.data import index_crops
from deepfake_explain.train import make_datasets, make_loader, start_epoch
root, cfg, workers, seconds, what = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
out = {}
t = time.perf_counter(); crops = index_crops(root); out["index_seconds"] = time.perf_counter() - t; out["crops"] = len(crops)
del crops
if what == "sbi": cfg = {**cfg, "training": {**cfg["training"], "fakes": "self-blended"}}
t = time.perf_counter(); train_ds, _, summary = make_datasets(root, cfg); out["datasets_seconds"] = time.perf_counter() - t
out["train_frames"] = len(train_ds)
# one item's cost, step by step, in this process (what each worker pays per image)
import numpy as np, os
from einops import rearrange
from deepfake_explain.data import read_image_rgb
from deepfake_explain.self_blended import sbi_pair_batch
cost, n = np.zeros(3), min(100, len(train_ds))
for i in range(n):  # one image at a time: nothing kept (the peak RSS stays the loader's)
    if what == "sbi":   # one real face and its fake: decode + resize, generation, both to float tensors
        t0 = time.perf_counter(); face, lm = train_ds.face(i)
        t1 = time.perf_counter(); b = sbi_pair_batch([face], [lm], 0, 0, [i])
        t2 = time.perf_counter(); x = torch.from_numpy(rearrange(b.images, "k h w c -> k c h w").copy()).float()
        cost += np.diff([t0, t1, t2, time.perf_counter()])
        continue
    t0 = time.perf_counter(); im = read_image_rgb(os.fsdecode(train_ds.paths[i]))
    t1 = time.perf_counter(); a = train_ds.transform(im, np.random.default_rng(i))
    t2 = time.perf_counter(); x = torch.from_numpy(np.ascontiguousarray(rearrange(a, "h w c -> c h w"))).float()
    cost += np.diff([t0, t1, t2, time.perf_counter()])
names = ("decode_resize_png", "self_blend_pair", "pair_to_float_tensors") if what == "sbi" else ("decode_png", "augment", "to_float_tensor")
out["per_image_ms"] = dict(zip(names, (1e3 * cost / n).tolist()))
out["loader"] = {}
for w in workers:
    bs = cfg["training"]["bs"] // 2 if what == "sbi" else cfg["training"]["bs"]   # self-blended: bs / 2 pairs (as train)
    loader = make_loader(train_ds, bs, shuffle=True, workers=w, seed=0)
    start_epoch(loader, 0, 0)
    it = iter(loader)
    t0 = time.perf_counter(); next(it); first = time.perf_counter() - t0  # the workers' start and first batch
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try: x, y, idx = next(it)
        except StopIteration: it = iter(loader); continue   # a small tree (the self-blended line: its reals only) ends first
        n += len(x)
    dt = time.perf_counter() - t0
    out["loader"][str(w)] = {"images": n, "seconds": dt, "images_per_s": n / dt, "first_batch_seconds": first}
    del it, loader
# VmHWM: this process's own peak (ru_maxrss would carry over the peak of a large parent across fork + exec)
out["peak_rss_mb"] = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))) / 1024
print("RESULT " + json.dumps(out))
"""


def run_child(root: Path, workers, seconds: float, what: str = "x") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", CHILD, str(root), json.dumps(CONFIG), json.dumps(list(workers)), str(seconds), what],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode or not lines: raise RuntimeError(f"loader benchmark on {root} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def training_rate(device: str = "cpu", batch_size: int = 32, iters: int = 2) -> dict:
    "The detector's training images/s on `device` (bench_throughput's measure, fp32)."
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_throughput", Path(__file__).with_name("bench_throughput.py"))
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return {"device": device, **mod.training_rate(device, batch_size, iters)}


def main(out_json=None, videos: int = 6000, crops_per_video: int = 20, workers=(1, 4, 8), seconds: float = 8.0,
         device: str = "cpu", train_iters: int = 2, small_fraction: float = 0.1, tmp_root: str | None = None,
         quick: bool = False, sbi: bool = True) -> dict:
    "Generate the trees, time index and loader, compare peak RSS and the training rate; print; return (and write) the results."
    if quick: videos, seconds, train_iters = min(videos, 600), min(seconds, 3.0), min(train_iters, 1)
    t_all = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="bench_loader_", dir=tmp_root))
    try:
        pool = face_pngs(base / "pool")
        small_n = max(len(METHODS) * 10, int(videos * small_fraction))
        gen = {"big": make_tree(base / "big", videos, crops_per_video, pool, pool_landmarks(pool, len(list((SHARED / "faces" / "test_images_aligned").glob("*/1.png")))) if sbi else None)}
        gen["small"] = make_tree(base / "small", small_n, crops_per_video, pool)
        print(f"generated {gen['big']['crops']} crops of {videos} videos in {gen['big']['seconds']:.1f} s "
              f"({gen['big']['hard_links']} hard links, {gen['big']['png_bytes'] // 1024} KB per PNG); "
              f"and {gen['small']['crops']} crops of {small_n} videos", flush=True)
        big = run_child(base / "big", workers, seconds)
        small = run_child(base / "small", workers[:1], min(seconds, 2.0))
        sbi_res = run_child(base / "big", workers, seconds, "sbi") if sbi else None
    finally:
        shutil.rmtree(base, ignore_errors=True)
    train = training_rate(device, CONFIG["training"]["bs"], train_iters) if train_iters else None
    best = max(big["loader"].values(), key=lambda r: r["images_per_s"])
    res = {"benchmark": "loader", "videos": videos, "crops_per_video": crops_per_video, "device": device,
           "generate": gen, "index_seconds": big["index_seconds"], "index_crops_per_s": big["crops"] / big["index_seconds"],
           "datasets_seconds": big["datasets_seconds"], "train_frames": big["train_frames"], "per_image_ms": big["per_image_ms"],
           "loader": big["loader"], "training": train,
           "peak_rss_mb": {"big": big["peak_rss_mb"], "small": small["peak_rss_mb"], "small_videos": small_n},
           "peak_rss_ratio": big["peak_rss_mb"] / small["peak_rss_mb"],
           "peak_rss_within_10pct": abs(big["peak_rss_mb"] / small["peak_rss_mb"] - 1) <= 0.10,
           "loader_best_images_per_s": best["images_per_s"],
           "sbi": None if sbi_res is None else {"train_real_faces": sbi_res["train_frames"], "per_image_ms": sbi_res["per_image_ms"],
                                                "loader": sbi_res["loader"]},
           "env": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                   "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
           "seconds": time.perf_counter() - t_all}
    if train:
        res["loader_vs_training_ratio"] = best["images_per_s"] / train["images_per_s"]
        if "8" in big["loader"]: res["loader_8_workers_vs_training_ratio"] = big["loader"]["8"]["images_per_s"] / train["images_per_s"]
    print(f"index_crops: {big['crops']} crops in {big['index_seconds']:.2f} s ({res['index_crops_per_s']:.0f} crops/s); "
          f"make_datasets {big['datasets_seconds']:.2f} s ({big['train_frames']} training frames)")
    print("per image (one process): " + ", ".join(f"{k} {v:.2f} ms" for k, v in big["per_image_ms"].items()))
    for w, r in big["loader"].items():
        print(f"loader, {w} worker{'s' if w != '1' else ''}: {r['images_per_s']:.0f} images/s "
              f"({r['images']} images in {r['seconds']:.1f} s; first batch after {r['first_batch_seconds']:.2f} s)")
    if train: print(f"training on {device} ({train['precision']}, batch {train['batch_size']}, 224 px): {train['images_per_s']:.1f} images/s "
                    f"-> best loader / training = {res['loader_vs_training_ratio']:.1f}x")
    if sbi_res is not None:
        gen_ms = sbi_res["per_image_ms"]["self_blend_pair"]
        print("self-blended loader (" + ", ".join(f"{w} worker{'s' if w != '1' else ''}: {r['images_per_s']:.0f} images/s"
                                                 for w, r in sbi_res["loader"].items())
              + f"; generation {gen_ms:.1f} ms per real face and its fake, decode + resize "
              f"{sbi_res['per_image_ms']['decode_resize_png']:.1f} ms, 224 px, batch 32 = 16 pairs)"
              + (f" against training {train['images_per_s']:.1f} images/s on {device}" if train else ""))
    print(f"peak RSS: {big['peak_rss_mb']:.0f} MB for {videos} videos, {small['peak_rss_mb']:.0f} MB for {small_n} "
          f"(ratio {res['peak_rss_ratio']:.3f}, within 10 %: {res['peak_rss_within_10pct']})")
    if out_json:
        sys.path.insert(0, str(ROOT))
        from deepfake_explain.data import write_json_atomic
        write_json_atomic(out_json, res); print("wrote", out_json)
    return res


@call_parse
def cli(out_json: str = None,        # write the results here (JSON)
        videos: int = 6000,          # videos in the generated tree (FF++ c23 full run: ~6,000)
        crops_per_video: int = 20,   # crops per video (6,000 x 20 = 120,000)
        workers: str = "1,4,8",      # loader worker counts to time
        seconds: float = 8.0,        # timed window per worker count
        device: str = "cpu",         # device for the training-rate figure: cpu | cuda
        tmp_root: str = None,        # where to generate the tree (default: the system temp folder)
        quick: bool = False):        # 600 videos, 3 s windows: a few minutes on 2 cores
    "Crop index time, training loader images/s and peak RSS on a generated FF++-sized crop tree, beside the training rate."
    main(out_json, videos, crops_per_video, tuple(int(w) for w in workers.split(",")), seconds, device, tmp_root=tmp_root, quick=quick)
