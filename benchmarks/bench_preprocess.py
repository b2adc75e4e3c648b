"""Face detection on sampled frames vs on every frame (issue 4).

On each DFDC video in ../shared/data (10 s, 300 frames, 1920x1080 and one 1080x1920 portrait), in the same
run on the same machine: seconds per video for `detect_video(frames_per_video=20)` (grab() through the
video, retrieve() and detect only the 20 sampled frames) against `detect_video(frames_per_video=0)` (decode
and detect all frames, what the reference did). Reports the ratio (target >= 5x) and checks that the sampled
run finds the same faces on its 20 frames as the every-frame run on those frames (same count per frame,
boxes matched at IoU >= 0.9).

MTCNN runs on the CPU with one torch thread (on a shared 2-core machine one thread is several times faster
than two fighting for cores); `device="cuda"` measures the GPU instead. Both wall-clock and CPU seconds of
this process are reported: on a machine shared with other jobs the wall-clock ratio is noisy, the CPU-time
ratio much less so.

    .venv/bin/python benchmarks/bench_preprocess.py [out.json]
"""
from __future__ import annotations
import json, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def same_faces(sampled: dict, full: dict, iou_min: float = 0.9) -> tuple[bool, list]:
    "Do the sampled frames carry the same faces (count, boxes) as the every-frame run on those frames?"
    import numpy as np
    from deepfake_explain.preprocess import box_iou
    diffs = []
    for f, rows in sampled.items():
        a = [r for r in (rows or []) if r is not None]
        b = [r for r in (full.get(f) or []) if r is not None]
        if len(a) != len(b): diffs.append((f, len(a), len(b))); continue
        if a and not (box_iou(np.array(a), np.array(b)).max(1) >= iou_min).all(): diffs.append((f, "boxes differ"))
    return not diffs, diffs


def main(out_json=None, frames_per_video: int = 20, device: str = "cpu", threads: int = 1, max_videos: int | None = None) -> dict:
    import torch
    from deepfake_explain.preprocess import FaceDetector, detect_video, open_video
    videos = sorted((SHARED / "dfdc").glob("*.mp4"))[:max_videos]
    if not videos: raise FileNotFoundError(f"{SHARED / 'dfdc'}: no DFDC videos (the benchmark needs ../shared/data)")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        det = FaceDetector(device=device)
        det.detect(torch.zeros(1, 540, 960, 3, dtype=torch.uint8).numpy())  # warm-up
        rows = []
        for v in videos:
            cap, info = open_video(v); cap.release()
            t, c = time.perf_counter(), time.process_time()
            sampled = detect_video(v, det, frames_per_video=frames_per_video)
            ts, cs = time.perf_counter() - t, time.process_time() - c
            t, c = time.perf_counter(), time.process_time()
            full = detect_video(v, det, frames_per_video=0)
            tf, cf = time.perf_counter() - t, time.process_time() - c
            ok, diffs = same_faces(sampled, full)
            rows.append(dict(video=v.name, size=f"{info['width']}x{info['height']}", frames=len(full), sampled_frames=len(sampled),
                             sampled_seconds=round(ts, 2), all_frames_seconds=round(tf, 2), ratio=round(tf / ts, 2),
                             sampled_cpu_seconds=round(cs, 2), all_frames_cpu_seconds=round(cf, 2), cpu_ratio=round(cf / cs, 2),
                             sampled_frames_with_face=sum(x is not None for x in sampled.values()),
                             same_faces=ok, differences=diffs[:5]))
            print(f"{v.name} {rows[-1]['size']}: {frames_per_video} frames {ts:.1f}s ({cs:.1f} CPU s), all {len(full)} frames "
                  f"{tf:.1f}s ({cf:.1f} CPU s), ratio {tf / ts:.1f}x (CPU {cf / cs:.1f}x), same faces on the sampled frames: {ok}", flush=True)
    finally:
        torch.set_num_threads(old)
    s, f = sum(r["sampled_seconds"] for r in rows), sum(r["all_frames_seconds"] for r in rows)
    cs, cf = sum(r["sampled_cpu_seconds"] for r in rows), sum(r["all_frames_cpu_seconds"] for r in rows)
    res = {"device": f"{device} ({threads} torch thread{'s' if threads > 1 else ''})", "frames_per_video": frames_per_video,
           "videos": rows, "sampled_seconds_per_video": s / len(rows), "all_frames_seconds_per_video": f / len(rows),
           "speedup_ratio": f / s, "sampled_cpu_seconds_per_video": cs / len(rows), "all_frames_cpu_seconds_per_video": cf / len(rows),
           "cpu_speedup_ratio": cf / cs, "target_ratio_met": f / s >= 5, "same_faces": all(r["same_faces"] for r in rows)}
    print(f"seconds per video: sampled {res['sampled_seconds_per_video']:.1f}, every frame {res['all_frames_seconds_per_video']:.1f}; "
          f"ratio {res['speedup_ratio']:.1f}x (CPU time {res['cpu_speedup_ratio']:.1f}x; target >= 5: {res['target_ratio_met']}); "
          f"same faces: {res['same_faces']}")
    if out_json:
        from deepfake_explain.data import write_json_atomic
        write_json_atomic(out_json, res)
    return res


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
