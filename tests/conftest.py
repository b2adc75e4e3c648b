"Shared fixtures: the real test data in ../shared/data (never copied into the repository)."
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real test data not found at {SHARED} (expected ../shared/data beside the repository)")
    return SHARED
