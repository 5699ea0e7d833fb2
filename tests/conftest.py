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


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """20 synthetic pairs converted to JSON samples (the tests of the collator, the feature cache, LoRA and train.py)."""
    from helpers import synthetic_samples

    return synthetic_samples(tmp_path_factory.mktemp("second"), 20, seed=3)
