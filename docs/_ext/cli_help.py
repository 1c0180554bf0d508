"""``mpruner <command> --help`` in the docs, taken from the parser at build time.

    ```{mpruner-help} prune
    ```

renders the help of ``mpruner prune`` as a literal block, so the flags listed in the docs are
always the ones the command accepts.
"""
from __future__ import annotations

import argparse
import os

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def help_text(command: str, width: int = 100) -> str:
    from mpruner.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps to the terminal; a fixed width for the page
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if command not in sub.choices:
            raise ValueError(f"mpruner has no command {command!r}; it has {sorted(sub.choices)}")
        return sub.choices[command].format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


class MprunerHelp(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        text = help_text(self.arguments[0])
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("mpruner-help", MprunerHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
