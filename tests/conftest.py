import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the seed's reference algorithm, for comparisons
SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield
