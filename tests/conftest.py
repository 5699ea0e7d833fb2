"""Shared test setup: offline Hub, fixed seeds, and the location of the real change-detection samples."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
REALCD = REPO_ROOT.parent / "shared" / "data" / "realcd"


@pytest.fixture(scope="session")
def realcd() -> Path:
    """The 26 real bitemporal pairs in ../shared/data/realcd; the test is skipped where a clone has no ../shared."""
    if not REALCD.is_dir():
        pytest.skip(f"real change-detection samples not found at {REALCD} (a clone without ../shared)")
    return REALCD
