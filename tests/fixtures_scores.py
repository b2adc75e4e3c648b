"""Test fixture: frame scores from a known scorer (formerly `evaluate.synthetic_frame_scores`; 04_evaluate has the same one)."""
from __future__ import annotations
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import expit

from deepfake_explain.evaluate import FRAME_COLUMNS


def synthetic_frame_scores(n_videos: int = 12, methods: Sequence[str] = ("Deepfakes", "Face2Face"),
                           frames_per_track: int = 5, two_faces_every: int = 4, separation: float = 0.5,
                           seed: int = 0, root: str = "/crops/test_set") -> pd.DataFrame:
    """Frame scores from a known scorer: `n_videos` reals ("Original") and `n_videos` fakes per method;
    frame logit ~ N(+separation, 1) for fakes, N(-separation, 1) for reals (a second face, on every
    `two_faces_every`-th video, at a third of that); score = sigmoid(logit)."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, label in [("Original", 0)] + [(m, 1) for m in methods]:
        for i in range(n_videos):
            video = f"{i:03d}" if label == 0 else f"{i:03d}_{(i + 7) % 1000:03d}"
            n_faces = 2 if two_faces_every and i % two_faces_every == 0 else 1
            for face in range(n_faces):
                mu = (separation if label else -separation) * (1 if face == 0 else 1 / 3)
                for frame, z in zip(range(0, 10 * frames_per_track, 10), rng.normal(mu, 1.0, frames_per_track)):
                    rows.append(dict(video=video, method=method, label=label, face=face, frame=frame,
                                     path=f"{root}/{method}/{video}/{frame}_{face}.png", score=float(expit(z))))
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)
