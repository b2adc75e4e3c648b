"""Explaining a video vs predicting it (issue 18): the same frames, the same detector, CPU, shared real videos.

    .venv/bin/python benchmarks/bench_explained_video.py --iters 2 --out_json outputs/bench/explained_video.json

For each video (default: two FF++ c23 fakes of ../shared/data, 1280x720) it times, alternately (so a change in machine
load hits both alike), with `FRAMES_PER_VIDEO` frames and one face detector:

* `predict`: `04_evaluate.predict_video` (decode the sampled frames, MTCNN, crops, `score_crops`, the verdict);
* `explain`: the same `predict_video` with `05c_videos.VideoExplainer.score` (the same forward pass plus the relevancy
  maps of the crops) and `VideoExplainer.write` (annotated H.264 MP4 written with PyAV, timeline PNG, evidence figures,
  HTML page with the video inline).

The detector is the default config (EfficientNet-B0 + spatial transformer, 224 px) with random weights: the cost does not
depend on the values. Target: explain <= 1.5 x predict (median seconds per video, summed over the videos); the median of
the paired runs' ratios is reported too (a machine shared with other jobs makes single times noisy).
`make bench` (benchmarks/run_all.py) runs it with the other benchmarks (every benchmarks/bench_*.py).
`main(out_json=None, ...)` returns the results (and writes them atomically when `out_json` is given).
"""
from __future__ import annotations
import os, platform, statistics, sys, tempfile, time
from pathlib import Path

import torch
from fastcore.script import call_parse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from deepfake_explain.data import write_json_atomic
from deepfake_explain.evaluate import FRAMES_PER_VIDEO, PredictOptions, predict_video
from deepfake_explain.videos import VideoExplainer
from deepfake_explain.model import build_model

TARGET_EXPLAIN_VS_PREDICT = 1.5
SHARED = ROOT.parent / "shared" / "data"
VIDEOS = ("ffpp/manipulated_sequences/FaceSwap/c23/videos/634_660.mp4", "ffpp/manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4")


def main(out_json=None, iters: int = 2, frames_per_video: int = FRAMES_PER_VIDEO, videos=VIDEOS, threads: int | None = None,
         batch_size: int = 32) -> dict:
    "Time predict and explain on each video; print them and the ratio; return (and optionally write) the results."
    from deepfake_explain.preprocess import FaceDetector
    if threads: torch.set_num_threads(threads)
    paths = [SHARED / v for v in videos]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing: raise FileNotFoundError(f"shared videos not found: {missing} (expected ../shared/data beside the repository)")
    torch.manual_seed(0)
    model, fd = build_model({"model": {"layout": "spatial"}}).eval(), FaceDetector(device="cpu")
    out = Path(tempfile.mkdtemp(prefix="bench_explained_"))
    res = {"benchmark": "explained_video", "frames_per_video": frames_per_video, "iters": iters, "image_size": model.image_size,
           "target_explain_vs_predict": TARGET_EXPLAIN_VS_PREDICT, "videos": {},
           "env": {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
                   "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}}

    def predict(p): return predict_video(p, model, fd, PredictOptions(frames_per_video=frames_per_video, batch_size=batch_size))
    def explain(p):
        ex = VideoExplainer()
        rec = predict_video(p, model, fd, PredictOptions(frames_per_video=frames_per_video, batch_size=batch_size), scorer=ex.score, keep_images=True)
        rec.update(name=p.stem, warning=None, provenance={"known": False})
        ex.write(rec, out)
        return rec
    for p in paths:
        times = {"predict": [], "explain": []}
        for it in range(iters):
            for name, fn in (("predict", predict), ("explain", explain)) if it % 2 == 0 else (("explain", explain), ("predict", predict)):
                t0 = time.perf_counter(); rec = fn(p); times[name].append(time.perf_counter() - t0)
                assert rec["status"] == "ok", rec["reason"]
        med = {k: statistics.median(v) for k, v in times.items()}
        res["videos"][p.name] = {"predict_s": med["predict"], "explain_s": med["explain"], "times": times, "n_crops": rec["n_crops"],
                                 "explain_vs_predict_ratio": med["explain"] / med["predict"],
                                 "paired": [e / q for e, q in zip(times["explain"], times["predict"])]}  # each run beside its pair
        print(f"{p.name}: predict {med['predict']:.2f} s, explain {med['explain']:.2f} s, ratio {med['explain'] / med['predict']:.2f} "
              f"({rec['n_crops']} faces on {frames_per_video} frames)")
    tp = sum(v["predict_s"] for v in res["videos"].values()); te = sum(v["explain_s"] for v in res["videos"].values())
    paired = statistics.median(r for v in res["videos"].values() for r in v["paired"])  # less sensitive to load that comes and goes
    res.update(predict_s=tp, explain_s=te, explain_vs_predict_ratio=te / tp, paired_median_ratio=paired,
               meets_target=te / tp <= TARGET_EXPLAIN_VS_PREDICT)
    res["env"]["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(f"all videos: predict {tp:.2f} s, explain {te:.2f} s, explain/predict {te / tp:.2f}, median of paired runs {paired:.2f} "
          f"(target <= {TARGET_EXPLAIN_VS_PREDICT}: "
          f"{'met' if res['meets_target'] else 'NOT met'}); load average before/after {res['env']['loadavg_before']} {res['env']['loadavg_after']}")
    if out_json: write_json_atomic(out_json, res); print("wrote", out_json)
    return res


@call_parse
def cli(out_json: str = None,       # write the results here (JSON)
        iters: int = 2,             # timed runs of each mode per video (alternating order)
        frames_per_video: int = FRAMES_PER_VIDEO,  # sampled frames per video
        threads: int = None,        # torch intra-op threads (default: torch's)
        batch_size: int = 32):      # crops per forward pass
    "Seconds to explain a video vs to predict it, with the same frames, on shared real videos."
    main(out_json, iters, frames_per_video, VIDEOS, threads, batch_size)
