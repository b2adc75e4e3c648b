"Shared fixtures: the real test data in ../shared/data (never copied into the repository), a small checkpoint."
import os
from pathlib import Path
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one compute thread each, and in the
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # kernels and processes they start (inherited)
import torch
if os.environ.get("PYTEST_XDIST_WORKER"): torch.set_num_threads(1)  # 2 threads each spin-wait on each other's cores

from deepfake_explain.model import build_model, load_config
from deepfake_explain.preprocess import torch_threads
from deepfake_explain.checkpoint import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# A small spatial detector (64 px, one 32-wide transformer block): fast on CPU, every code path of the real one.
TINY = {"model": {"image-size": 64}, "spatial": {"depth": 1, "emb-dim": 32, "mlp-dim": 32, "heads": 2, "dim-head": 16}}
# A small trainable one (32 px crops, tokens after block 2, every block trainable, AdamW): a few seconds an epoch.
TINY_TRAIN = {"model": {"image-size": 32, "trainable-blocks": 16, "dropout": 0.0, "emb-dropout": 0.0},
              "spatial": {"feature-block": 2, "emb-dim": 32, "depth": 1, "heads": 2, "dim-head": 16, "mlp-dim": 32},
              "training": {"lr": 3e-3, "bs": 8, "optimizer": "adamw", "scheduler": "cosine", "bn-momentum": 0.1,
                           "frames-per-video": 4, "rebalancing_fake": 1}}


SLOW_FIRST = ("test_study.py", "test_rehearsal.py")  # the study runs (minutes each) start first on the 2 xdist workers


def pytest_collection_modifyitems(items):
    "The modules of long study runs first (`make test` runs files on 2 processes in this order): the workers end together."
    first = lambda item: next((i for i, name in enumerate(SLOW_FIRST) if item.path.name == name), len(SLOW_FIRST))
    items.sort(key=first)  # stable: every other file keeps its place


@pytest.fixture
def one_thread():
    """One torch thread for the test (restored after): on 2 shared cores, small models run faster on one thread than
    on two competing with the other jobs. Modules use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with torch_threads(1): yield


@pytest.fixture(scope="module")
def one_thread_module():
    "`one_thread` for a whole module, its module-scoped fixtures included."
    with torch_threads(1): yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real test data not found at {SHARED} (expected ../shared/data beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def save_tiny_checkpoint():
    """`save(path, config, **extra) -> path`: a training-style checkpoint (config inside, `extra` keys added, e.g.
    `provenance`) of a small random-init model. A random-init EfficientNet in eval mode scores every image the same
    (initial batch-norm statistics), which would hide a crop/score mix-up: the statistics are set from a few random
    batches."""
    def save(path, config, **extra) -> Path:
        torch.manual_seed(0)
        cfg = load_config(config)
        net = build_model(cfg)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm): m.momentum = None
        net.train()
        size = cfg["model"]["image-size"]
        with torch.no_grad():
            for _ in range(3): net(torch.rand(8, 3, size, size) * 255)
        torch.save({"format": CHECKPOINT_FORMAT, "model": net.eval().state_dict(), "config": cfg, "meta": {"layout": net.layout},
                    **extra}, path)
        return Path(path)
    return save


def sigint_as_in_a_terminal():
    """`preexec_fn` for a child that a test interrupts with SIGINT, as Ctrl-C in a terminal would: the default
    disposition. A suite started in the background (`make test &`, nohup, some CI runners) ignores SIGINT, a child
    inherits that, and Python then installs no KeyboardInterrupt handler, so the signal would never arrive."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
