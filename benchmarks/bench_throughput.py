"""Detector and face-detector throughput on one device (issue 20): what a full run can expect of a GPU (or this CPU).

    .venv/bin/python benchmarks/bench_throughput.py --device cuda --out_json outputs/bench/throughput.json
    .venv/bin/python benchmarks/bench_throughput.py --device cpu --quick

On `device`, with the default detector (EfficientNet-B0 + spatial transformer, 224 px, random weights: the cost does
not depend on the values):

* `training`: images/s of a training step (forward, BCE, backward, AdamW step) in fp32, bf16 autocast, and bf16 with
  channels_last memory format (on CUDA; on CPU fp32 and fp32 channels_last), the best one marked;
* `inference`: images/s of `model(x)` under `inference_mode`, fp32 and bf16 autocast (CUDA);
* `mtcnn`: frames/s of `preprocess.FaceDetector` (MTCNN, the reference's thresholds) on 1080p frames of the shared real
  face video, given in batches the way `detect_dataset` does (the reader downscales by 2, MTCNN gets the batch).

`benchmarks/run_all.py --device cuda` runs it with the explanation and loader benchmarks and prints the targets.
`main(out_json=None, ...)` returns the results (and writes them atomically when `out_json` is given).
"""
from __future__ import annotations
import os, platform, statistics, sys, time
from pathlib import Path

import torch
from fastcore.script import call_parse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
FACE_VIDEO = SHARED / "faces" / "real_face_video.mp4"  # 1920x1080, 105 frames


def _sync(dev: torch.device):
    if dev.type == "cuda": torch.cuda.synchronize(dev)


def _timed(fn, dev, iters: int, warmup: int = 1) -> float:
    "Median seconds of `fn()` over `iters` runs after `warmup` untimed ones."
    times = []
    for i in range(warmup + iters):
        _sync(dev); t0 = time.perf_counter()
        fn()
        _sync(dev)
        if i >= warmup: times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(dev, channels_last: bool = False):
    from deepfake_explain.model import build_model
    torch.manual_seed(0)
    m = build_model({"model": {"layout": "spatial", "image-size": 224}}).to(dev)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def _batch(n: int, dev, channels_last: bool = False):
    x = torch.rand(n, 3, 224, 224, device=dev) * 255  # RGB 0..255, as the loader gives
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _dtype(precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def training_rate(device="cpu", batch_size: int = 32, iters: int = 2, precision: str = "fp32", channels_last: bool = False) -> dict:
    "Training images/s of the default detector on `device`: forward (autocast `precision`), BCE, backward, AdamW step."
    dev = torch.device(device)
    model, x = _model(dev, channels_last).train(), _batch(batch_size, dev, channels_last)
    y = (torch.arange(batch_size, device=dev) % 2).float()
    opt, dtype = torch.optim.AdamW(model.parameters(), lr=1e-4), _dtype(precision)
    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).reshape(-1).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    sec = _timed(step, dev, iters, warmup=2 if dev.type == "cuda" else 1)
    return {"precision": precision, "channels_last": channels_last, "batch_size": batch_size, "iters": iters,
            "sec_per_batch": sec, "images_per_s": batch_size / sec}


def inference_rate(device="cpu", batch_size: int = 32, iters: int = 3, precision: str = "fp32", channels_last: bool = False) -> dict:
    "Inference images/s of the default detector (`model(x)` under `inference_mode`, autocast `precision`)."
    dev = torch.device(device)
    model, x, dtype = _model(dev, channels_last).eval(), _batch(batch_size, dev, channels_last), _dtype(precision)
    def fwd():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None): model(x)
    sec = _timed(fwd, dev, iters, warmup=2 if dev.type == "cuda" else 1)
    return {"precision": precision, "channels_last": channels_last, "batch_size": batch_size, "iters": iters,
            "sec_per_batch": sec, "images_per_s": batch_size / sec}


def mtcnn_rate(device="cpu", n_frames: int = 32, batch_size: int = 32, iters: int = 2) -> dict:
    "MTCNN frames/s on `n_frames` 1080p frames of the shared face video, half-size batches of `batch_size` (as `detect_dataset`)."
    import numpy as np
    from deepfake_explain.data import equidistant
    from deepfake_explain.preprocess import FaceDetector, read_frames
    if not FACE_VIDEO.exists(): raise FileNotFoundError(f"{FACE_VIDEO}: the MTCNN benchmark needs ../shared/data")
    det = FaceDetector(device=device, batch_size=batch_size)
    idx, frames, full = read_frames(FACE_VIDEO, indices=equidistant(105, min(n_frames, 105)), scale=det.scale, with_size=True)
    frames = np.stack(frames)  # (N, 540, 960, 3): the reader's half-size frames
    found = []
    sec = _timed(lambda: found.append(det.detect(frames, full_size=full)), torch.device(det.device), iters)
    return {"frames": len(frames), "frame_size": f"{full[1]}x{full[0]}", "batch_size": batch_size, "iters": iters,
            "sec_per_run": sec, "frames_per_s": len(frames) / sec,
            "frames_with_face": int(sum(d is not None for d in found[-1]))}


def main(out_json=None, device: str = "cpu", quick: bool = False, batch_size: int | None = None, threads: int | None = None) -> dict:
    "Training, inference and MTCNN throughput on `device`; print them; return (and optionally write) the results."
    if threads: torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available(): raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    bs = batch_size or (64 if cuda else 8 if quick else 16)
    it = 10 if cuda else 1 if quick else 2
    settings = [("fp32", False), ("bf16", False), ("bf16", True)] if cuda else [("fp32", False), ("fp32", True)]
    res = {"benchmark": "throughput", "device": device, "quick": quick,
           "gpu": torch.cuda.get_device_name(dev) if cuda else None,
           "env": {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
                   "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
           "training": {}, "inference": {}}
    for p, cl in settings:
        name = p + ("_channels_last" if cl else "")
        r = res["training"][name] = training_rate(device, bs, it, p, cl)
        print(f"training  {name:<18} batch {bs}: {r['images_per_s']:8.1f} images/s", flush=True)
    for p, cl in settings:
        name = p + ("_channels_last" if cl else "")
        r = res["inference"][name] = inference_rate(device, bs * 2, it + 1, p, cl)
        print(f"inference {name:<18} batch {bs * 2}: {r['images_per_s']:8.1f} images/s", flush=True)
    for k in ("training", "inference"):
        best = max(res[k], key=lambda n: res[k][n]["images_per_s"])
        res[f"{k}_best"] = {"setting": best, "images_per_s": res[k][best]["images_per_s"]}
    res["channels_last_helps"] = {k: res[k][s + "_channels_last"]["images_per_s"] > res[k][s]["images_per_s"]
                                  for k in ("training", "inference") for s in ["bf16" if cuda else "fp32"]}
    n = 8 if (quick and not cuda) else 32 if not cuda else 64
    r = res["mtcnn"] = mtcnn_rate(device, n, n if cuda else 8, iters=1 if quick else 2)
    print(f"MTCNN {r['frame_size']}, batches of {r['batch_size']}: {r['frames_per_s']:.1f} frames/s "
          f"({r['frames_with_face']} of {r['frames']} frames with a face)", flush=True)
    res["env"]["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if out_json:
        from deepfake_explain.data import write_json_atomic
        write_json_atomic(out_json, res); print("wrote", out_json)
    return res


@call_parse
def cli(out_json: str = None,   # write the results here (JSON)
        device: str = "cpu",    # cpu | cuda | cuda:1 ...
        quick: bool = False,    # smaller batches, one timed iteration (CPU: a couple of minutes)
        batch_size: int = None, # training batch (inference: twice it); default 64 on CUDA, 16 on CPU (8 quick)
        threads: int = None):   # torch intra-op threads (default: torch's)
    "Training (fp32, bf16, channels_last), inference and MTCNN throughput on one device."
    main(out_json, device, quick, batch_size, threads)
