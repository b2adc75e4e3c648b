"""Explanation throughput (issue 8): inference vs batched relevancy vs one image at a time, both layouts.

    .venv/bin/python benchmarks/bench_explain.py --batch_size 8 --iters 3 --out_json outputs/bench/explain.json
    .venv/bin/python benchmarks/bench_explain.py --captum   # every map's cost per image on the quick study's detector

`--captum`: the cost per image of every method of `explain.METHODS` (Captum's baselines included) on the quick study's
model (`configs/quick.yaml`, 64 px, batches of 16, the backbone shared as in the quality pass), the table of 05_explain.

For each layout (spatial, seed; default config, 224 px, random weights: the cost does not depend on the
values) and one input batch, it times round-robin (so a change in machine load hits all alike):

* `inference`: `model(x)` under `inference_mode`;
* `explain_batched`: `relevancy(model, x)`, one forward/backward for the whole batch;
* `explain_loop`: `relevancy(model, x[i:i+1])` for each image in turn;

and once, on `reference_images` images, `reference_loop`: the reference's procedure (one image at a time,
backward through the whole network, the full N x N relevancy matrix per block).
Targets: spatial explain_batched >= 0.5x inference; seed explain_batched >= 2x its explain_loop.
`main(out_json=None, ...)` returns the results (and writes them atomically when `out_json` is given).
"""
from __future__ import annotations
import os, platform, statistics, time

import torch
from fastcore.script import call_parse

from deepfake_explain.data import write_json_atomic
from deepfake_explain.checkpoint import load_train_config, model_config
from deepfake_explain.explain import (METHODS, attention_and_grads, backbone_cache, chefer_cls_relevance, explain_batch,
                                      record_attention_for, relevancy, target_scores)
from deepfake_explain.model import build_model

TARGET_SPATIAL_VS_INFERENCE = 0.5
TARGET_SEED_BATCHED_VS_LOOP = 2.0


def _sync(device: str):
    if str(device).startswith("cuda"): torch.cuda.synchronize()


def reference_relevance(model, x1):
    "The reference's `generate_relevance` for one image: backward through everything, full R = R + A_bar @ R."
    with record_attention_for(model):
        out = model(x1)  # the stem is trainable: the backward runs through the whole CNN, as in the reference
        model.zero_grad()
        target_scores(out, "fake").sum().backward()
        R = torch.eye(model.transformer.blocks[0].attn.attn_map.shape[-1], device=x1.device)
        for blk in model.transformer.blocks:
            a, g = blk.attn.attn_map[0], blk.attn.attn_map.grad[0]  # (H, N, N)
            R = R + (g * a).clamp(min=0).mean(0) @ R
    for blk in model.transformer.blocks: blk.attn.attn_map = None
    model.zero_grad(set_to_none=True)
    return R[0, 1:]


def bench_layout(layout: str, device: str = "cpu", batch_size: int = 8, image_size: int = 224, iters: int = 3,
                 warmup: int = 1, reference_images: int = 2) -> dict:
    torch.manual_seed(0)
    model = build_model({"model": {"layout": layout, "image-size": image_size}}).eval().to(device)
    x = (torch.rand(batch_size, 3, image_size, image_size) * 255).to(device)  # one batch for all, RGB 0..255

    def inference():
        with torch.inference_mode(): model(x)
    def batched(): relevancy(model, x)
    def loop():
        for i in range(len(x)): relevancy(model, x[i:i + 1])
    fns = {"inference": inference, "explain_batched": batched, "explain_loop": loop}
    times = {k: [] for k in fns}
    for it in range(warmup + iters):
        for name, fn in fns.items():
            _sync(device); t0 = time.perf_counter()
            fn()
            _sync(device); dt = time.perf_counter() - t0
            if it >= warmup: times[name].append(dt)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"sec_per_batch": med, "images_per_s": batch_size / med, "times": ts}
    if reference_images:
        n = min(reference_images, batch_size)
        ref = reference_relevance(model, x[:1])  # warm-up, and the same scores as ours up to float error
        a, g, _ = attention_and_grads(model, x[:1])
        out["reference_matches"] = bool(torch.allclose(ref, chefer_cls_relevance(a, g)[0], rtol=1e-3, atol=1e-6))
        _sync(device); t0 = time.perf_counter()
        for i in range(n): reference_relevance(model, x[i:i + 1])
        _sync(device); dt = time.perf_counter() - t0
        out["reference_loop"] = {"images": n, "sec_per_image": dt / n, "images_per_s": n / dt}
    inf = out["inference"]["images_per_s"]
    out["ratios"] = {"explain_batched_vs_inference_ratio": out["explain_batched"]["images_per_s"] / inf,
                     "explain_loop_vs_inference_ratio": out["explain_loop"]["images_per_s"] / inf,
                     "batched_vs_loop_ratio": out["explain_batched"]["images_per_s"] / out["explain_loop"]["images_per_s"]}
    if "reference_loop" in out:
        out["ratios"]["batched_vs_reference_loop_ratio"] = out["explain_batched"]["images_per_s"] / out["reference_loop"]["images_per_s"]
    return out


def main(out_json=None, batch_size: int = 8, image_size: int = 224, iters: int = 3, warmup: int = 1,
         reference_images: int = 2, threads: int | None = None, device: str = "cpu", layouts=("spatial", "seed")) -> dict:
    "Benchmark both layouts on `device`; print a table; return (and optionally write) the results."
    if threads: torch.set_num_threads(threads)
    res = {"benchmark": "explain_throughput", "device": device, "batch_size": batch_size, "image_size": image_size,
           "iters": iters, "targets": {"spatial_explain_batched_vs_inference": TARGET_SPATIAL_VS_INFERENCE,
                                       "seed_batched_vs_loop": TARGET_SEED_BATCHED_VS_LOOP},
           "env": {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
                   "gpu": torch.cuda.get_device_name() if str(device).startswith("cuda") else None,
                   "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
           "layouts": {}}
    for layout in layouts:
        r = bench_layout(layout, device, batch_size, image_size, iters, warmup, reference_images)
        res["layouts"][layout] = r
        print(f"[{layout}] {device}, batch {batch_size} x {image_size}px, {iters} iters, {torch.get_num_threads()} threads")
        for k in ("inference", "explain_batched", "explain_loop"):
            print(f"  {k:<16}{r[k]['sec_per_batch']:>9.3f} s/batch {r[k]['images_per_s']:>8.2f} images/s")
        if "reference_loop" in r:
            print(f"  {'reference_loop':<16}{r['reference_loop']['sec_per_image']:>9.3f} s/image {r['reference_loop']['images_per_s']:>8.2f} images/s"
                  f"  (same map as ours: {r['reference_matches']})")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))
    L, res["meets_targets"] = res["layouts"], {}
    if "spatial" in L: res["meets_targets"]["spatial_explain_batched_vs_inference"] = \
        L["spatial"]["ratios"]["explain_batched_vs_inference_ratio"] >= TARGET_SPATIAL_VS_INFERENCE
    if "seed" in L: res["meets_targets"]["seed_batched_vs_loop"] = L["seed"]["ratios"]["batched_vs_loop_ratio"] >= TARGET_SEED_BATCHED_VS_LOOP
    res["env"]["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print("targets met:", res["meets_targets"], "| load average before/after:", res["env"]["loadavg_before"], res["env"]["loadavg_after"])
    if out_json: write_json_atomic(out_json, res); print("wrote", out_json)
    return res


def method_costs(config: str = "configs/quick.yaml", batch_size: int = 16, iters: int = 2, device: str = "cpu") -> dict:
    "Seconds per image of every method on `config`'s model (random weights: the cost does not depend on the values)."
    torch.manual_seed(0)
    model = build_model(model_config(load_train_config(config))).eval().to(device)
    size = model.image_size
    x = (torch.rand(batch_size, 3, size, size) * 255).to(device)
    t0 = time.perf_counter(); cache = backbone_cache(model, x); _sync(device)
    out = {"backbone (shared)": (time.perf_counter() - t0) / batch_size}
    for m in METHODS:
        ts = []
        for _ in range(iters):
            _sync(device); t0 = time.perf_counter()
            explain_batch(model, x, m, cache=cache)
            _sync(device); ts.append((time.perf_counter() - t0) / batch_size)
        out[m] = statistics.median(ts)
    print(f"cost per image, {config} ({size} px), batch {batch_size}, {torch.get_num_threads()} threads, {device}:")
    for k, v in out.items(): print(f"  {k:<18}{1000 * v:>9.1f} ms")
    return out


@call_parse
def cli(out_json: str = None,        # write the results here (JSON)
        batch_size: int = 8,         # images per batch
        image_size: int = 224,       # square input size
        iters: int = 3,              # timed iterations (after warm-up)
        warmup: int = 1,             # untimed iterations
        reference_images: int = 2,   # images for the reference procedure's timing (0: skip)
        threads: int = None,         # torch intra-op threads (default: torch's)
        device: str = "cpu",         # cpu | cuda
        layouts: str = "spatial,seed", # comma-separated layouts to run
        captum: bool = False           # instead: every method's cost per image on the quick study's model
        ):
    "Throughput of inference, batched relevancy and one-image-at-a-time relevancy, spatial and seed layouts."
    if threads: torch.set_num_threads(threads)
    if captum: return method_costs(device=device)
    main(out_json, batch_size, image_size, iters, warmup, reference_images, threads, device,
         tuple(l.strip() for l in layouts.split(",") if l.strip()))
