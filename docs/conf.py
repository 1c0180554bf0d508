"""Sphinx configuration: MyST Markdown pages, an API reference from the docstrings, and the
measured pages (benchmarks, performance, results, reliability) rendered from the committed JSON
under ``benchmarks/results/`` by the local extension ``docs/_ext/results.py``."""
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, ROOT)                       # this checkout's mpruner, not another install
sys.path.insert(0, os.path.join(DOCS, "_ext"))

import mpruner  # noqa: E402

project = "mpruner"
author = "the mpruner authors"
copyright = "the mpruner authors"
release = version = mpruner.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "results",          # docs/_ext/results.py: pages rendered from benchmarks/results/*.json
    "cli_help",         # docs/_ext/cli_help.py: `mpruner <command> --help`, from the parser itself
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_mock_imports = []
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = f"mpruner {release}"
html_static_path = []
html_theme_options = {"description": "Depth pruning by CKA layer redundancy", "fixed_sidebar": True}
