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
