"""The documentation builds offline with no warning (-W): the guide, the API reference from the docstrings, and the
gallery, every example executed so that its figures are the ones it draws (a broken example or docstring fails
here). Built from a copy of docs/, so a cached gallery in the working tree is never reused."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.slow
def test_docs_build_with_every_gallery_example_run(tmp_path):
    pytest.importorskip("sphinx_gallery")
    src = tmp_path / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "auto_examples", "sg_execution_times.rst"))
    out = tmp_path / "html"
    # one torch thread per example (docs/conf.py): the other test process has the other core
    env = {**__import__("os").environ, "MPLBACKEND": "Agg", "TOPOTORCH_DOCS_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html", str(src),
                          str(out)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    examples = sorted(p.stem for p in (DOCS / "gallery").glob("plot_*.py"))
    assert 8 <= len(examples) <= 12
    for ex in examples:
        page = (out / "auto_examples" / f"{ex}.html").read_text()
        assert f"sphx_glr_{ex}_001.png" in page, ex                      # the example drew its figure
        assert (out / "_images" / f"sphx_glr_{ex}_001.png").stat().st_size > 5000
    assert "landing.png" in (out / "index.html").read_text() and (out / "_images" / "landing.png").is_file()
    api = (out / "api.html").read_text()
    for name in ("SpatialCorrelationLoss", "attach", "WiringCost", "swap_optimize_windows", "morans_i_test", "fit"):
        assert name in api, name
    for page in ("positions", "wiring", "losses", "attach", "evaluation", "recipes", "sweeps", "benchmarks", "code"):
        assert (out / "guide" / f"{page}.html").is_file(), page
