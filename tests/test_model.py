"Integration tests of deepfake_explain.model: real face crops at full size, the reference's forward, the benchmark."
from __future__ import annotations
import importlib.util, json, statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

from deepfake_explain.data import ValTransform, read_image_rgb
from deepfake_explain.checkpoint import load_weights
from deepfake_explain.model import build_model, record_attention

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # (tests/conftest.py)


@pytest.fixture(scope="module")
def faces(shared_data) -> torch.Tensor:
    "The aligned real face crops, resized/padded to 224 as at test time: (B, 3, 224, 224) RGB 0..255."
    paths = sorted((shared_data / "faces" / "test_images_aligned").glob("*/1.png"))
    assert len(paths) >= 3, paths
    tf = ValTransform(224)
    imgs = np.stack([tf(read_image_rgb(p)) for p in paths])                  # (B, 224, 224, 3) uint8
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float()


def _reference_forward(model, img_bgr: torch.Tensor) -> torch.Tensor:
    "The reference's EfficientViT.forward (evit_model10.py), written out with explicit einsum attention."
    p = model.patch_size
    x = model.efficient_net.extract_features(img_bgr)
    y = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
    y = model.patch_to_embedding(y)
    x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), y), 1)
    x = x + model.pos_embedding
    for blk in model.transformer.blocks:
        a, h = blk.attn, blk.attn.heads
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=h) for t in a.to_qkv(blk.norm1(x)).chunk(3, dim=-1))
        attn = (torch.einsum("b h i d, b h j d -> b h i j", q, k) * a.scale).softmax(dim=-1)
        out = rearrange(torch.einsum("b h i j, b h j d -> b h i d", attn, v), "b h n d -> b n (h d)")
        x = x + a.to_out(out)
        x = x + blk.mlp(blk.norm2(x))
    return model.mlp_head(x[:, 0])


def test_seed_matches_reference_forward(faces, tmp_path):
    "On real faces at 224 px the seed layout computes the reference's function of raw BGR pixels, after a strict reload."
    torch.manual_seed(0)
    model = build_model({"model": {"layout": "seed"}}).eval()
    torch.save(model.state_dict(), tmp_path / "seed.pt")
    torch.manual_seed(1)
    model = build_model({"model": {"layout": "seed"}}); load_weights(model, tmp_path / "seed.pt"); model.eval()
    x = faces[:2]
    with torch.no_grad():
        ours = model(x)                                  # RGB 0..255 in; the model flips to BGR itself
        ref = _reference_forward(model, x.flip(1))       # what the reference computes on cv2.imread pixels
    assert ours.shape == (2, 1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["spatial", "seed"])
def test_full_size_explain_hooks(faces, layout):
    "Full-size real faces: recording path == SDPA path, and every block's map has a gradient after backward."
    torch.manual_seed(0)
    model = build_model({"model": {"layout": layout}}).eval()
    x = faces if layout == "spatial" else faces[:2]
    with torch.no_grad():
        t = model.tokens(x)
        y = model.classify_tokens(t)
    n = model.num_tokens + 1
    with record_attention(model):
        y_rec = model.classify_tokens(t.clone().requires_grad_(True))
        y_rec[:, 0].sum().backward()
    torch.testing.assert_close(y_rec.detach(), y, rtol=1e-4, atol=1e-4)
    for blk in model.transformer.blocks:
        a = blk.attn.attn_map
        assert a.shape == (len(x), blk.attn.heads, n, n) and a.grad.shape == a.shape
        assert torch.isfinite(a.grad).all()
    if layout == "spatial":
        assert model.grid == (14, 14)
        with torch.no_grad():  # batch independence: each image's logit is the same alone or in the batch
            torch.testing.assert_close(model(x[1:2]), y[1:2], rtol=1e-4, atol=1e-4)


def test_benchmark_main_smoke(tmp_path):
    "benchmarks/bench_model.py main() runs on one small batch and writes its JSON."
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "benchmarks" / "bench_model.py")
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    out = tmp_path / "model.json"
    res = bench.main(out_json=out, batch_size=1, iters=1, warmup=0, devices=["cpu"])
    saved = json.loads(out.read_text())
    assert saved["devices"]["cpu"]["results"].keys() == {"bare_backbone", "spatial", "seed"}
    r = res["devices"]["cpu"]["results"]
    # every figure follows from the measured times: images/s = batch / median s per batch, ratio = rate / bare rate
    for name, x in r.items():
        assert x["sec_per_batch"] > 0 and x["sec_per_batch"] == pytest.approx(statistics.median(x["times"])), name
        assert x["images_per_s"] == pytest.approx(1 / x["sec_per_batch"]), name
        assert x["throughput_ratio_vs_bare"] == pytest.approx(x["images_per_s"] / r["bare_backbone"]["images_per_s"]), name
    assert saved["devices"]["cpu"]["spatial_meets_target"] == (r["spatial"]["throughput_ratio_vs_bare"] >= bench.TARGET_SPATIAL_RATIO)
    assert saved["gflops_per_image"]["spatial"] <= 1.33 * saved["gflops_per_image"]["bare_backbone"]


# --- ImageNet weights by name (model.backbone-weights: imagenet), no frozen random filters -----------------------------

from deepfake_explain.model import BackboneWeightsError, ConfigError, imagenet_weights, load_config  # noqa: E402
from imagenet_standin import write_standin  # noqa: E402


def test_imagenet_weights_from_the_hub_cache(tmp_path, monkeypatch):
    "The shipped config builds on the cached file (tensor for tensor) with 3 trainable blocks; nothing is downloaded."
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th")); monkeypatch.setenv("DEEPFAKE_EXPLAIN_OFFLINE", "1")
    path = write_standin(tmp_path / "th")
    assert imagenet_weights("efficientnet-b0")["path"] == path and path.name == "efficientnet-b0-355c32eb.pth"
    model = build_model(ROOT / "configs" / "explained_architecture.yaml", for_training=True)
    assert model.meta["backbone_weights"] == f"imagenet ({path})" and model.meta["trainable_blocks"] == 3
    saved = torch.load(path, weights_only=True)
    own = model.efficient_net.state_dict()
    assert own and all(torch.equal(v, saved[k]) for k, v in own.items())  # the trunk's blocks are the file's
    seed = build_model({"model": {"layout": "seed", "backbone-weights": "imagenet"}})
    assert all(torch.equal(v, saved[k]) for k, v in seed.efficient_net.state_dict().items() if not k.startswith("_fc."))


def test_imagenet_weights_missing_offline(tmp_path, monkeypatch):
    "Offline with an empty cache: the error names the file, its URL and the cache path to put it in."
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty")); monkeypatch.setenv("DEEPFAKE_EXPLAIN_OFFLINE", "1")
    w = imagenet_weights("efficientnet-b0")
    with pytest.raises(BackboneWeightsError) as e: build_model(ROOT / "configs" / "explained_architecture.yaml")
    msg = str(e.value)
    assert "efficientnet-b0-355c32eb.pth" in msg and w["url"] in msg and str(tmp_path / "empty" / "hub" / "checkpoints") in msg
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*.pth"))


def test_random_init_with_frozen_blocks_is_refused_for_training():
    for cfg in ({"model": {"backbone-weights": None, "trainable-blocks": 3}}, {"model": {"layout": "seed", "trainable-blocks": 15}}):
        with pytest.raises(ConfigError) as e: build_model(cfg, for_training=True)
        assert "'model.trainable-blocks'" in str(e.value) and "'model.backbone-weights' is null" in str(e.value)
        assert build_model(cfg).meta["backbone_weights"] == "random init"  # a model to load a checkpoint into: not refused
    assert load_config({"model": {"layout": "seed", "trainable-blocks": 16}}, for_training=True)  # every block trains
    from deepfake_explain.train import training_config
    assert training_config(ROOT / "configs" / "quick.yaml")[1] is None  # the quick config: random init, every block trains
