"""The headline rule (05f_headline) on constructed candidate tables: one map passes and one fails, none passes, and a
passing map that a baseline out-localises; each in well under a second (the stage itself runs in the quick study)."""
import numpy as np
import pandas as pd

from deepfake_explain.headline import BASELINES, CANDIDATE_COLUMNS, THRESHOLD, headline_rule


def cands(**rows) -> pd.DataFrame:
    "A candidate table from name=(pointing game, mass in mask, model |rho|, data |rho|), CIs at the means."
    return pd.DataFrame([dict(method=m, ours=m not in BASELINES, n_images=16, pointing_game=pg, mass_in_mask=mim,
                              model_abs_spearman=mr, model_abs_spearman_ci_low=mr, model_abs_spearman_ci_high=mr,
                              data_abs_spearman=dr, data_abs_spearman_ci_low=dr, data_abs_spearman_ci_high=dr)
                         for m, (pg, mim, mr, dr) in rows.items()], columns=CANDIDATE_COLUMNS)


def test_rule_headlines_the_passing_map_not_the_better_localiser_that_fails():
    # fused localises best but its map survives model randomisation (the quick study's 0.43); its variant passes both
    h = headline_rule(cands(fused=(0.93, 0.6, 0.43, 0.30), smooth_relevancy=(0.80, 0.5, 0.05, 0.12), gradcam=(0.6, 0.4, 0.1, 0.1)))
    assert (h["map"], h["passes"], h["beats_baselines"]) == ("smooth_relevancy", True, True)
    status = {c["method"]: (c["passes"], c["why_not"]) for c in h["candidates"]}
    assert status["fused"] == (False, f"model randomisation mean |rho| 0.43 > {THRESHOLD:g}; data randomisation mean |rho| 0.30 > {THRESHOLD:g}")
    assert status["smooth_relevancy"] == (True, "") and "beats every baseline" in h["statement"]


def test_rule_says_plainly_when_no_map_passes():
    h = headline_rule(cands(fused=(0.93, 0.6, 0.43, 0.30), relevancy=(0.7, 0.5, 0.05, 0.35)))
    assert not h["passes"] and not h["beats_baselines"] and h["map"] == "relevancy"   # the closest to passing (0.35 < 0.43)
    assert h["statement"].startswith("No map passes the sanity checks") and "relevancy, which does NOT pass" in h["statement"]


def test_rule_says_when_the_best_passing_map_does_not_beat_a_baseline():
    h = headline_rule(cands(fused_features=(0.7, 0.5, 0.1, 0.1), occlusion=(0.8, 0.4, 0.6, 0.6)))   # occlusion fails, localises better
    assert (h["map"], h["passes"], h["beats_baselines"]) == ("fused_features", True, False)
    assert h["statement"].startswith("No map both passes the sanity checks and beats every baseline") and "occlusion (0.80)" in h["statement"]
    h = headline_rule(cands(a=(0.7, 0.5, 0.1, np.nan)))   # no shuffled-label model: model randomisation alone, said so
    assert h["passes"] and h["tests"] == ["model randomisation (every weight re-drawn)"] and "not run" in h["rule"]
