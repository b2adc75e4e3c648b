"""Our explanation metrics against Quantus 0.6.0 (Hedström et al. 2023), the field's library, on the same maps, masks and
models: a hand-made example each, and crops of a generated mini-forensics set with maps of the small random-init
detector. Where the definitions agree the test asserts agreement; where they differ it pins the difference (the study
reports ours; nbs/05a_localisation.ipynb and nbs/05b_validity.ipynb say why).

Quantus is a test-time tool here: its wheel requires opencv-python beside our opencv-python-headless, so `make install`
installs it with `--no-deps` (see the Makefile) and the library keeps its own metrics, pinned by these tests."""
import warnings

import cv2
import numpy as np
import pytest
import torch
from torch import nn

try:
    import quantus
    from quantus.functions.perturb_func import noisy_linear_imputation
    from quantus.helpers.model.pytorch_model import PyTorchModel
except ImportError as e:  # never skipped: the cross-check is part of `make test`
    raise ImportError("quantus is not installed: `make install` installs it (pip --no-deps, see the Makefile)") from e

from deepfake_explain.data import ValTransform, ffpp_video_path
from deepfake_explain.explain import explain_batch
from deepfake_explain.localisation import crop_mask, localisation_metrics
from deepfake_explain.mini_forensics import MiniSpec, make_mini_forensics, read_masks
from deepfake_explain.model import build_model
from deepfake_explain.preprocess import crop_face, read_frames
from deepfake_explain.validity import (cascading_randomisation, noisy_linear_impute, pixel_order, randomisation_steps,
                                       rank_correlation, road_curves, sanity_check, top_pixels)

pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)

# the small spatial detector of the notebooks' tests (random weights, 64 px, a 4x4 token grid)
SPATIAL_TEST_CFG = {"model": {"image-size": 64, "layout": "spatial"},
                    "spatial": {"depth": 2, "emb-dim": 32, "heads": 2, "dim-head": 16, "mlp-dim": 64}}
METHODS = ("relevancy", "fused", "gradcam", "attention", "random")
QUIET = dict(disable_warnings=True)


def calibrate_bn(model, x):
    "Set the backbone's BatchNorm statistics from images `x`: a random-init backbone's features otherwise nearly vanish."
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm): m.reset_running_stats(); m.momentum = None
    with torch.no_grad(): model.train().features(x)
    return model.eval()


@pytest.fixture(scope="module")
def detector():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calib = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 255
        return calibrate_bn(build_model(SPATIAL_TEST_CFG), calib)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    "8 fake crops (8, 3, 64, 64) 0..255 of a generated mini-forensics test split, with their masks (8, 64, 64) bool."
    root = tmp_path_factory.mktemp("quantus") / "mini_forensics"
    man = make_mini_forensics(root, MiniSpec(seed=0, n_frames=2, size=96, n_pairs=(1, 1, 1),
                                             methods=["SelfBlended", "MouthEyesEdit"]), progress=False)
    box, xs, ms = [14.0, 10.0, 82.0, 86.0, 0.99], [], []
    for f in (f for f in man["fakes"] if f["split"] == "test"):
        idx, frames = read_frames(ffpp_video_path(root, f["method"], "c23", f["video"]), indices=[0, 1])
        masks = read_masks(root, f["method"], f["video"])
        for i, fr in zip(idx, frames):
            xs.append(ValTransform(64)(crop_face(fr, box)))
            ms.append(crop_mask(masks[i].astype(np.uint8) * 255, box, 64))
    x, masks = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float(), np.stack(ms)
    assert len(x) == 8 and (masks.mean((1, 2)) > 0.02).all()
    return x, masks


@pytest.fixture(scope="module")
def scored(detector, crops):
    """Maps (n, 64, 64) float64 of every method on every crop, plus a blurred-mask map per crop (an oracle that hits),
    and the masks repeated to match."""
    x, masks = crops
    with torch.random.fork_rng(devices=[]):
        maps = [explain_batch(detector, x, m)[1].numpy() for m in METHODS]
    oracle = np.stack([cv2.GaussianBlur(m.astype(np.float64), (0, 0), 4) for m in masks])
    return np.concatenate([*maps, oracle]).astype(np.float64), np.concatenate([masks] * (len(METHODS) + 1))


def quantus_localisation(metric, maps, masks) -> np.ndarray:
    "Quantus's localisation `metric` class on maps (B, H, W) and masks (B, H, W) (its defaults: max-normalised, no abs)."
    kw = dict(x_batch=np.zeros((len(maps), 1, *maps.shape[1:])), y_batch=np.zeros(len(maps), int),
              a_batch=np.asarray(maps, np.float64)[:, None], s_batch=np.asarray(masks, np.float64)[:, None])
    with warnings.catch_warnings():  # Quantus and scikit-learn warn on the undefined cases (empty or full mask, all-zero
        warnings.simplefilter("ignore")  # map), whose NaN the tests check
        return np.asarray(metric(**QUIET)(model=None, channel_first=True, **kw), np.float64)


# ---------------------------------------------------------------- localisation: pointing game, mass, AUC

# the notebooks' 2x3 map and mask, plus: a tie at the maximum (first in raster order outside the mask, second inside),
# a constant map, an empty mask, a full mask, an all-zero map
_H = np.array([[0.9, 0.5, 0.0], [0.1, 0.5, 0.0]]); _K = np.array([[1, 1, 0], [0, 0, 0]])
_TIE, _KT = np.array([[0.2, 0.9, 0.1], [0.9, 0.0, 0.0]]), np.array([[0, 0, 0], [1, 1, 0]])
HAND_MAPS = np.stack([_H, 1 - _H, _TIE, np.full((2, 3), 0.5), _H, _H, np.zeros((2, 3))])
HAND_MASKS = np.stack([_K, _K, _KT, _K, np.zeros((2, 3)), np.ones((2, 3)), _K])


def test_localisation_hand_example():
    ours = localisation_metrics(HAND_MAPS, list(HAND_MASKS))
    pg, mass, auc = (quantus_localisation(m, HAND_MAPS, HAND_MASKS)
                     for m in (quantus.PointingGame, quantus.RelevanceMassAccuracy, quantus.AUC))
    # mass and AUC agree everywhere, undefined cases included (NaN: empty mask, all-zero map; AUC of a full mask)
    want_mass = [1.4 / 2, 0.3 / 2, 0.9 / 2.1, 1 / 3, np.nan, 1.0, np.nan]
    want_auc = [7.5 / 8, 0.5 / 8, 0.5, 0.5, np.nan, np.nan, 0.5]  # the tie: 0.9 vs {0.2, 0.9, 0.1, 0}, 0 vs them: 4/8
    np.testing.assert_allclose(ours["mass_in_mask"], want_mass, atol=1e-12)
    np.testing.assert_allclose(mass, want_mass, atol=1e-12)
    np.testing.assert_allclose(ours["pixel_auroc"], want_auc, atol=1e-12)
    np.testing.assert_allclose(auc, want_auc, atol=1e-12)
    # the pointing game: both take the top-1 pixel (no tolerance box); a hit is ours when the FIRST maximum is in the
    # mask, Quantus's when ANY is. They agree on a unique maximum (rows 0, 1, 5) and differ on: the tie (0 vs 1), the
    # constant map (0 vs 1: it "points" everywhere), the empty mask (NaN vs 1: Quantus writes its NaN into a boolean
    # array, where it becomes True) and the all-zero map (0 vs 1)
    np.testing.assert_array_equal(ours["pointing_game"], [1, 0, 0, 0, np.nan, 1, 0])
    np.testing.assert_array_equal(pg, [1, 0, 1, 1, 1, 1, 1])


def test_localisation_generated_crops(scored):
    maps, masks = scored
    ours = localisation_metrics(maps, list(masks))
    pg, mass, auc = (quantus_localisation(m, maps, masks)
                     for m in (quantus.PointingGame, quantus.RelevanceMassAccuracy, quantus.AUC))
    np.testing.assert_allclose(ours["mass_in_mask"], mass, rtol=0, atol=1e-12)  # Quantus's max-normalisation: a scale
    np.testing.assert_allclose(ours["pixel_auroc"], auc, rtol=0, atol=1e-12)   # (of the whole batch) neither sees
    flat = maps.reshape(len(maps), -1)
    at_max = flat == flat.max(1, keepdims=True)
    unique = at_max.sum(1) == 1
    assert unique.sum() >= 8 and (~unique).sum() >= 8  # both cases occur (token-grid maps have plateaus)
    assert {0.0, 1.0} <= set(ours["pointing_game"])    # hits and misses
    np.testing.assert_array_equal(ours["pointing_game"][unique], pg[unique])  # a unique maximum: the same answer
    # a tied maximum: ours is the mask at the first one, Quantus's any of them (so ours <= Quantus's)
    first = masks.reshape(len(masks), -1)[np.arange(len(maps)), flat.argmax(1)]
    anyhit = (masks.reshape(len(masks), -1) & at_max).any(1)
    np.testing.assert_array_equal(ours["pointing_game"], first.astype(float))
    np.testing.assert_array_equal(pg, anyhit.astype(float))


# ---------------------------------------------------------------- ROAD: noisy linear imputation, MoRF / LeRF

class TwoLogits(nn.Module):
    """A one-logit model (fake logit `l`, minus `offset`) as two logits [0, l - offset] for Quantus (argmax = fake iff our
    fake probability > 0.5); `gray`: takes (B, 1, H, W) and repeats the channel for an RGB model."""
    def __init__(self, model, offset=0.0, gray=False, two=True):
        super().__init__(); self.model, self.offset, self.gray, self.two = model, offset, gray, two
    def forward(self, x):
        l = self.model(x.expand(-1, 3, -1, -1) if self.gray else x)[:, :1] - self.offset
        return torch.cat([torch.zeros_like(l), l], 1) if self.two else l


class RegionModel(nn.Module):
    "Fake probability = mean of channel 0 over the top-left 2x2 pixels / 255 (one logit)."
    def forward(self, x): return torch.logit((x[:, 0, :2, :2].mean((1, 2)) / 255).clamp(1e-6, 1 - 1e-6))[:, None]


class ROADPerImage(quantus.ROAD):
    "Quantus's ROAD, keeping its per-image results (B, percentages: 1 where the class is kept) before its mean."
    def custom_postprocess(self, **kwargs):
        self.per_image = np.concatenate(self.evaluation_scores)
        super().custom_postprocess(**kwargs)


def quantus_road(model, x, ranking, y, percentages) -> tuple[np.ndarray, dict]:
    "Quantus's ROAD (noise 0, no normalisation) of `model` on `x` (B, C, H, W) in the order of `ranking` (B, H, W) > 0."
    r = ROADPerImage(percentages=list(percentages), noise=0.0, normalise=False, **QUIET)
    means = r(model=model.eval(), x_batch=np.asarray(x, np.float32), y_batch=np.asarray(y), channel_first=True,
              a_batch=np.asarray(ranking, np.float32)[:, None])
    return r.per_image, means


def test_road_imputation_hand_example():
    # the same linear system: a 1x4 row [0, ?, ?, 3] becomes 0, 1, 2, 3; the centre of a ring becomes 8 (see 05b)
    row, gap = np.array([[[0., 0, 0, 3]]]), np.array([[False, True, True, False]])
    np.testing.assert_allclose(noisy_linear_impute(row, gap, noise=0)[0, 0], [0, 1, 2, 3], atol=1e-9)
    np.testing.assert_allclose(noisy_linear_imputation(row, np.flatnonzero(gap), noise=0)[0, 0], [0, 1, 2, 3], atol=1e-9)
    ring = np.array([[[12., 6, 12], [6, 0, 6], [12, 6, 12]]])
    centre = np.zeros((3, 3), bool); centre[1, 1] = True
    assert noisy_linear_impute(ring, centre, noise=0)[0, 1, 1] == pytest.approx(8)
    assert noisy_linear_imputation(ring, np.array([4]), noise=0)[0, 1, 1] == pytest.approx(8)
    # the noise differs: ours has std `noise` x 255 (1% of the 0..255 range) and clips to 0..255; Quantus's has std
    # `noise` in the image's own units (np.random's global state) and no clip: its default 0.01 on a 0..255 image is
    # 1/255 of ours, and noise=2.55 matches ours
    flat, half = np.full((3, 64, 64), 255.0), np.zeros((64, 64), bool); half[:, :32] = True
    idx, state = np.flatnonzero(half), np.random.get_state()
    try:
        np.random.seed(0)
        q_default, q_255 = (noisy_linear_imputation(flat, idx, noise=n)[:, half] for n in (0.01, 2.55))
    finally: np.random.set_state(state)
    ours = noisy_linear_impute(flat, half, noise=0.01, rng=np.random.default_rng(0))[:, half]
    assert q_default.std() == pytest.approx(0.01, rel=0.05) and q_255.std() == pytest.approx(2.55, rel=0.05)
    assert ours.max() == 255 and q_255.max() > 255 + 5  # ours clipped (half the noise cut off), Quantus's not
    assert np.abs(ours - 255).mean() == pytest.approx(2.55 * np.sqrt(2 / np.pi) / 2, rel=0.05)  # a half-normal, halved


def test_road_hand_example():
    "The region model of 05b: removing the bright top-left block first kills the evidence, removing it last keeps it."
    x1 = torch.zeros(1, 1, 4, 4); x1[:, :, :2, :2] = 255
    tl = torch.zeros(1, 4, 4); tl[:, :2, :2] = 1
    curves = road_curves(RegionModel(), x1, tl, fractions=(0.25, 0.5, 0.75), noise=0)
    kept = {o: (c.sort_values("fraction")["fake_prob"].to_numpy() > 0.5).astype(int) for o, c in curves.groupby("order")}
    q_morf, _ = quantus_road(TwoLogits(RegionModel()), x1, 1 + tl, [1], (25, 50, 75))      # most relevant first
    q_lerf, _ = quantus_road(TwoLogits(RegionModel()), x1, 2 - tl, [1], (25, 50, 75))      # least relevant first
    np.testing.assert_array_equal(kept["morf"], [0, 0, 0]); np.testing.assert_array_equal(q_morf[0], [0, 0, 0])
    np.testing.assert_array_equal(kept["lerf"], [1, 1, 1]); np.testing.assert_array_equal(q_lerf[0], [1, 1, 1])
    # Quantus 0.6.0's ROAD cannot take an RGB image with one map per pixel: it orders the map broadcast to C x H x W
    # and passes those indices to an imputation of the H x W pixels (IndexError). When this fails, Quantus has fixed
    # it: run the comparison below on the RGB crops instead of their grey versions.
    with pytest.raises(IndexError):
        quantus_road(TwoLogits(RegionModel()), x1.expand(-1, 3, -1, -1), 1 + tl, [1], (25, 50, 75))


def test_road_generated_crops(detector, crops):
    x, _ = crops
    with torch.random.fork_rng(devices=[]):
        rel = explain_batch(detector, x, "relevancy")[1]
    order, (B, _, H, W) = pixel_order(rel), x.shape
    # the imputation of the crops (RGB) at the removed shares of the study: the same linear system, to rounding
    for f in (0.25, 0.5, 0.75):
        k = int(round(f * H * W)); removed = top_pixels(order, k, (H, W)).numpy()
        for i in range(B):
            ours = noisy_linear_impute(x[i].double().numpy(), removed[i], noise=0)
            theirs = noisy_linear_imputation(x[i].double().numpy(), order[i, :k].numpy(), noise=0)
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8)
    # the metric, on grey crops (Quantus cannot take RGB, above), ties broken beforehand by our seeded order (Quantus's
    # argsort is not stable), the decision threshold at the crops' median logit so that removal flips decisions.
    # Quantus scores whether the class of the clean image is kept; ours the fake probability: thresholded at 0.5 it
    # is Quantus's answer, image by image.
    g = x.mean(1, keepdim=True)
    with torch.no_grad(): logit = detector(g.expand(-1, 3, -1, -1))[:, 0]
    t, y = float(logit.median()), (logit > logit.median()).long().numpy()
    rank = torch.zeros(B, H * W, dtype=torch.float64)
    rank.scatter_(1, order, torch.arange(H * W, 0, -1, dtype=torch.float64).expand(B, -1))  # H*W .. 1, most relevant first
    rank = rank.reshape(B, H, W)
    curves = road_curves(TwoLogits(detector, t, gray=True, two=False), g, rank, fractions=(0.25, 0.5, 0.75), noise=0)
    flips = 0
    for name, ranking in (("morf", rank), ("lerf", H * W + 1 - rank)):
        q, means = quantus_road(TwoLogits(detector, t, gray=True), g, ranking, y, (25, 50, 75))
        c = curves[curves.order == name].pivot(index="image", columns="fraction", values="fake_prob").to_numpy()
        ours = ((c > 0.5) == y[:, None]).astype(int)
        np.testing.assert_array_equal(ours, q)
        np.testing.assert_allclose(list(means.values()), ours.mean(0), atol=1e-12)
        flips += int((q == 0).sum())
    assert 0 < flips < 2 * 3 * B  # decisions kept and flipped: the comparison can fail


# ---------------------------------------------------------------- cascading model-parameter randomisation (MPRT)

class Ramp(nn.Module):
    "A 4x4 weight whose `reset_parameters` sets it to `reset` (what Quantus and ours both call)."
    def __init__(self, trained, reset):
        super().__init__(); self.weight, self.reset = nn.Parameter(trained.clone()), reset.clone()
    def reset_parameters(self):
        with torch.no_grad(): self.weight.copy_(self.reset)


class HandCascade(nn.Module):
    """A "detector" with one block, a head and a bare `cls_token` (named as in 02_model), whose map is head + block
    weights: trained r = 0..15 (+ 0), head reset to 15 - r (map 15 - r: rho = -1), then block reset to 2r
    (map 15 + r: rho = +1)."""
    def __init__(self):
        super().__init__()
        r = torch.arange(16.).reshape(4, 4)
        self.transformer = nn.Module(); self.transformer.blocks = nn.ModuleList([Ramp(torch.zeros(4, 4), 2 * r)])
        self.cls_token = nn.Parameter(torch.ones(4, 4))
        self.mlp_head = Ramp(r, 15 - r)
    def forward(self, x): return x.flatten(1)[:, :1]
    def heat(self, n): return (self.mlp_head.weight + self.transformer.blocks[0].weight).detach().numpy()[None].repeat(n, 0)


def quantus_mprt(model, x, explain, seed=42, **kw) -> dict:
    "Quantus's MPRT, cascading (top_down), Spearman, on `explain(model, x) -> maps (B, H, W)`; the global RNG untouched."
    with torch.random.fork_rng(devices=[]):
        return quantus.MPRT(layer_order="top_down", seed=seed, **QUIET, **kw)(
            model=model, x_batch=np.asarray(x, np.float32), y_batch=np.ones(len(x), int), a_batch=None,
            explain_func=lambda model, inputs, targets, **_: explain(model, inputs), channel_first=True)


def ours_mprt(model, x, explain) -> dict:
    "Ours: rank_correlation of the trained model's map with each step's of `cascading_randomisation`."
    ref = explain(model, x)
    return {name: rank_correlation(ref, explain(m, x)) for name, m in cascading_randomisation(model)}


def test_mprt_hand_example():
    heat = lambda m, x: m.heat(len(x))
    x = np.zeros((2, 1, 4, 4))
    q, ours = quantus_mprt(HandCascade(), x, heat), ours_mprt(HandCascade(), x, heat)
    assert list(q) == ["original", "mlp_head", "transformer.blocks.0"]
    np.testing.assert_allclose([q[k] for k in q], [[1, 1], [-1, -1], [1, 1]], atol=1e-12)
    # ours has the same two steps and values, plus the embedding step (the bare cls_token, which Quantus's cascade of
    # modules with `reset_parameters` never reaches; the map does not use it here: rho stays 1)
    assert list(ours) == ["head", "block 0", "embedding"]
    np.testing.assert_allclose([ours[k] for k in ours], [[-1, -1], [1, 1], [1, 1]], atol=1e-12)
    last = list(cascading_randomisation(HandCascade()))[-1][1]
    assert not torch.equal(last.cls_token, torch.ones(4, 4))


def _step(layer: str) -> str:
    "Our cascade step (`randomisation_steps`) of a module of 02_model's detector."
    for prefix, step in (("mlp_head", "head"), ("feature_to_embedding", "embedding"), ("efficient_net", "backbone")):
        if layer.startswith(prefix): return step
    if layer.startswith("transformer.blocks."): return "block " + layer.split(".")[2]
    raise AssertionError(f"{layer}: in no step of ours")


def test_mprt_generated_crops(detector, crops):
    x = crops[0][:2]
    relevancy = lambda m, xb: explain_batch(m, torch.as_tensor(xb).float(), "relevancy")[1].numpy()
    q = quantus_mprt(detector, x, relevancy)
    np.testing.assert_allclose(q.pop("original"), 1.0, atol=1e-12)
    # the layer order: Quantus re-initialises every module with `reset_parameters`, last registered first (103 layers
    # here); grouped into our steps they come in our order, each step whole
    layers = list(q)
    assert len(layers) > 50
    steps = [_step(n) for n in layers]
    assert [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]] == [n for n, _ in randomisation_steps(detector)]
    # the similarity: on the very models of Quantus's cascade, our rank_correlation is Quantus's Spearman, at its first
    # layer and at the end of each of our steps
    check = {layers[0]} | {n for n, s, after in zip(layers, steps, steps[1:] + [None]) if s != after}
    ref = relevancy(detector, x)
    with torch.random.fork_rng(devices=[]):
        cascade = PyTorchModel(detector, channel_first=True).get_random_layer_generator(order="top_down", seed=42)
        for layer, quantus_last in cascade:
            if layer in check:
                np.testing.assert_allclose(rank_correlation(ref, relevancy(quantus_last, x)), q[layer], rtol=0, atol=1e-12)
    # the coverage: Quantus's whole cascade leaves the bare parameters (CLS token, positions) as trained; ours re-draws
    # them in the embedding step. Other weights are re-drawn by both (with other draws: Quantus seeds the global RNG
    # with seed + 1 before each module, ours forks it, seed + k per step), so the values differ, layer for step
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    learned = [k for k, v in before.items() if v.is_floating_point() and v.numel() > 1 and bool(v.float().std() > 0)]
    ours_last = list(cascading_randomisation(detector))[-1][1].state_dict()
    assert all(not torch.equal(before[k], ours_last[k]) for k in learned)
    kept = {k for k, v in quantus_last.state_dict().items() if k in learned and torch.equal(before[k], v)}
    assert kept == {"cls_token", "pos_embedding"}
    # the control: the random map (the same seeded map whatever the model) stays at 1 in both
    rand = lambda m, xb: explain_batch(m, torch.as_tensor(xb).float(), "random")[1].numpy()
    np.testing.assert_allclose(list(quantus_mprt(detector, x, rand, skip_layers=True).values()), 1.0, atol=1e-12)
    sc = sanity_check(detector, x, methods=("random", "relevancy"))
    np.testing.assert_allclose(sc[sc.method == "random"]["spearman"], 1.0, atol=1e-12)
    assert (sc[sc.method == "relevancy"]["spearman"] < 0.999).all()
