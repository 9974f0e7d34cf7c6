import os
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one test process per core: numpy's BLAS and torch's OpenMP pools must not each start a thread per core, or
    # their waiting threads take the other worker's core
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the seed's reference algorithm, for comparisons
SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tdann_run(tmp_path_factory):
    """The tdann-cnn recipe at its defaults, run once for every test that reads it: ``(run dir, metrics)``."""
    from topotorch.recipes import run_recipe
    out = tmp_path_factory.mktemp("tdann")
    return out, run_recipe("tdann-cnn", out, progress=False)
