"""Sphinx configuration: furo theme, API from the docstrings (autodoc + napoleon for the "Args:" sections), the
gallery executed at build time (sphinx-gallery: each example's figures are the ones it draws), Markdown pages
(MyST). Build: ``pip install -e ".[docs]" && sphinx-build -b html docs docs/_build/html`` (offline)."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the package's source, installed or not
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("TOPOTORCH_DOCS_THREADS"):
    # the docs test builds the gallery beside other test processes: the examples' torch.set_num_threads(2) would
    # oversubscribe the cores (the gallery 3× slower on 2 cores), so the test caps their threads
    import torch

    def _capped(n, _set=torch.set_num_threads, _cap=int(os.environ["TOPOTORCH_DOCS_THREADS"])):
        _set(min(n, _cap))

    torch.set_num_threads = _capped

project = "topotorch"
author = "The topotorch developers"
copyright = "2026, The topotorch developers"
release = version = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "sphinx.ext.mathjax",
              "sphinx_gallery.gen_gallery", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "gallery/README.rst"]
html_theme = "furo"
html_title = "topotorch"
html_static_path = ["_static"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
napoleon_google_docstring = True
nitpicky = False
suppress_warnings = ["myst.xref_missing", "autodoc.import_object"]

sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,   # a broken example fails the build (and the docs test)
    "only_warn_on_example_error": False,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "reset_modules": ("matplotlib",),
}
