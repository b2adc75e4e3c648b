"""A generated face-crop tree for tests and benchmarks (moved out of the library: `data.synthetic_crops` before).

Import it as `from fixtures_crops import synthetic_crops` (pytest puts tests/ on the path; scripts insert it).
"""
from __future__ import annotations
from pathlib import Path

import numpy as np

from deepfake_explain.core import ORIGINAL, write_png_atomic
from deepfake_explain.data import crop_path


def synthetic_crops(root, n_videos: int = 16, n_frames: int = 4, size: int = 32, seed: int = 0,
                    splits=("train", "val")) -> Path:
    "`n_videos` videos per split (half real, half fake in two methods) of `n_frames` random crops each; returns `root`."
    rng = np.random.default_rng(seed)
    for split in splits:
        for v in range(n_videos):
            method = ORIGINAL if v % 2 == 0 else ("Deepfakes", "FaceSwap")[v // 2 % 2]
            for f in range(n_frames):
                img = (rng.random((size, size, 3)) * 120 + 60).astype(np.uint8)
                if method != ORIGINAL: img[size // 4: size // 2, size // 4: size // 2] = 250  # fakes: a bright square
                write_png_atomic(crop_path(root, split, method, f"{split}{v:04d}", f * 10, 0), img)
    return Path(root)


def sbi_crops(root, n_videos: int = 4, n_frames: int = 2, size: int = 48, seed: int = 0, splits=("train", "val")) -> Path:
    """A crop tree of real faces only, as `01_preprocess` writes one for self-blended training: `n_videos` real videos per
    split of `n_frames` generated faces (a skin ellipse, eyes, a mouth) each, and each video's `.done.json` marker with
    every crop's five landmarks in crop pixels (eyes, nose, mouth corners). Returns `root`."""
    import cv2
    from deepfake_explain.core import write_json_atomic
    from deepfake_explain.preprocess import DONE_MARKER
    rng = np.random.default_rng(seed)
    for split in splits:
        for v in range(n_videos):
            lms = {}
            for f in range(n_frames):
                c = np.array([size / 2, size / 2]) + rng.uniform(-2, 2, 2)
                e, m = size * 0.18, size * 0.22                                  # half eye distance, eyes-to-mouth
                lm = np.array([[c[0] - e, c[1] - m / 2], [c[0] + e, c[1] - m / 2], [c[0], c[1]],
                               [c[0] - e * 0.8, c[1] + m / 2], [c[0] + e * 0.8, c[1] + m / 2]])
                img = np.full((size, size, 3), rng.integers(40, 90), np.uint8)
                cv2.ellipse(img, tuple(int(x) for x in c), (int(size * 0.32), int(size * 0.42)), 0, 0, 360,
                            tuple(int(x) for x in rng.integers(140, 220, 3)), -1)
                for x, y in lm[:2]: cv2.circle(img, (int(x), int(y)), max(1, size // 16), (40, 30, 30), -1)
                cv2.line(img, tuple(int(x) for x in lm[3]), tuple(int(x) for x in lm[4]), (150, 60, 60), max(1, size // 24))
                p = crop_path(root, split, ORIGINAL, f"{split}{v:04d}", f * 10, 0)
                write_png_atomic(p, img); lms[p.name] = np.round(lm, 2).tolist()
            write_json_atomic(p.parent / DONE_MARKER, dict(crops=n_frames, frames=n_frames, margin=0.0, landmarks=lms))
    return Path(root)
