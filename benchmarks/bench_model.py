"""Model throughput (issue 5): bare EfficientNet-B0 features vs the spatial and seed layouts, same batch.

    .venv/bin/python benchmarks/bench_model.py --batch_size 8 --iters 3 --out_json outputs/bench/model.json

For each device (CPU, and CUDA when available) it builds the three forwards with random weights
(throughput does not depend on the values), runs them round-robin on one input batch (so a change in
machine load hits all three alike), and reports the median time per batch, images/s and the ratio to
the bare backbone. Target: spatial >= 0.75x the bare backbone's throughput.
`main(out_json=None, ...)` returns the results dict (and writes it atomically when `out_json` is given),
so a benchmark runner can call it.
"""
from __future__ import annotations
import os, platform, statistics, sys, time
from pathlib import Path

import torch
from efficientnet_pytorch import EfficientNet
from fastcore.script import call_parse

from deepfake_explain.data import write_json_atomic
from deepfake_explain.model import build_model, forward_gflops

TARGET_SPATIAL_RATIO = 0.75


def _sync(device: str):
    if device.startswith("cuda"): torch.cuda.synchronize()


def _forwards(device: str) -> dict:
    "name -> callable(x) for the three models, on `device`, in eval mode."
    bare = EfficientNet.from_name("efficientnet-b0").eval().to(device)
    spatial = build_model({"model": {"layout": "spatial"}}).eval().to(device)
    seed = build_model({"model": {"layout": "seed"}}).eval().to(device)
    return {"bare_backbone": bare.extract_features, "spatial": spatial, "seed": seed}


def bench_device(device: str, batch_size: int = 8, image_size: int = 224, iters: int = 3, warmup: int = 1) -> dict:
    "Median seconds per batch and images/s of each forward on `device`, measured round-robin."
    torch.manual_seed(0)
    fns = _forwards(device)
    x = (torch.rand(batch_size, 3, image_size, image_size) * 255).to(device)  # one batch for all, RGB 0..255
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for it in range(warmup + iters):
            for name, fn in fns.items():
                _sync(device); t0 = time.perf_counter()
                fn(x)
                _sync(device); dt = time.perf_counter() - t0
                if it >= warmup: times[name].append(dt)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"sec_per_batch": med, "images_per_s": batch_size / med, "times": ts}
    base = out["bare_backbone"]["images_per_s"]
    for r in out.values(): r["throughput_ratio_vs_bare"] = r["images_per_s"] / base
    return out


def _table(device: str, res: dict) -> str:
    rows = [f"{'model':<15}{'s/batch':>10}{'images/s':>10}{'x bare':>8}"]
    for name, r in res.items():
        rows.append(f"{name:<15}{r['sec_per_batch']:>10.3f}{r['images_per_s']:>10.2f}{r['throughput_ratio_vs_bare']:>8.2f}")
    return f"[{device}]\n" + "\n".join(rows)


def main(out_json=None, batch_size: int = 8, image_size: int = 224, iters: int = 3, warmup: int = 1,
         cuda_iters: int = 20, threads: int | None = None, devices=None) -> dict:
    "Benchmark on CPU (and CUDA if available); print a table; return (and optionally write) the results."
    if threads: torch.set_num_threads(threads)
    devices = list(devices) if devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gf = {"bare_backbone": forward_gflops(EfficientNet.from_name("efficientnet-b0"), image_size,
                                          fn=lambda m, x: m.extract_features(x)),
          "spatial": forward_gflops(build_model({"model": {"layout": "spatial"}}), image_size),
          "seed": forward_gflops(build_model({"model": {"layout": "seed"}}), image_size)}
    res = {"benchmark": "model_throughput", "batch_size": batch_size, "image_size": image_size,
           "gflops_per_image": gf, "target_spatial_ratio": TARGET_SPATIAL_RATIO,
           "env": {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(),
                   "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
           "devices": {}}
    for dev in devices:
        n = cuda_iters if dev.startswith("cuda") else iters
        r = bench_device(dev, batch_size, image_size, iters=n, warmup=max(warmup, 3) if dev.startswith("cuda") else warmup)
        name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"{platform.processor() or platform.machine()}"
        res["devices"][dev] = {"name": name, "iters": n, "results": r,
                               "spatial_meets_target": r["spatial"]["throughput_ratio_vs_bare"] >= TARGET_SPATIAL_RATIO}
        print(_table(f"{dev}: {name}, batch {batch_size} x {image_size}px, {n} iters, "
                     f"{torch.get_num_threads()} threads" if dev == "cpu" else f"{dev}: {name}, batch {batch_size}, {n} iters", r))
    res["env"]["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print("GFLOPs/image:", {k: round(v, 3) for k, v in gf.items()},
          "ratio:", {k: round(v / gf["bare_backbone"], 2) for k, v in gf.items()})
    print("load average before/after:", res["env"]["loadavg_before"], res["env"]["loadavg_after"])
    if out_json: write_json_atomic(out_json, res); print("wrote", out_json)
    return res


@call_parse
def cli(out_json: str = None,   # write the results here (JSON)
        batch_size: int = 8,    # images per batch
        image_size: int = 224,  # square input size
        iters: int = 3,         # timed CPU iterations per model (after warm-up)
        warmup: int = 1,        # untimed iterations per model
        cuda_iters: int = 20,   # timed CUDA iterations per model
        threads: int = None,    # torch intra-op threads (default: torch's)
        cpu_only: bool = False  # skip CUDA even if available
        ):
    "Throughput of bare backbone features, spatial and seed models on one batch."
    main(out_json, batch_size, image_size, iters, warmup, cuda_iters, threads, ["cpu"] if cpu_only else None)
