"""The ``mpruner`` command line's parser (mpruner/cli/__init__.py): every command is listed,
every option has help that says its default."""
import argparse

import pytest

from mpruner.cli import build_parser


def _subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()[1]))
def test_every_option_has_help_and_its_default(name):
    parser = _subcommands()[1][name]
    assert parser.description, f"`mpruner {name} --help` has no description"
    assert "``" not in parser.description, "the description shows raw reST backticks"
    blank, no_default = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        flag = max(action.option_strings, key=len)
        if not action.help or action.help == argparse.SUPPRESS:
            blank.append(flag)
            continue
        text = action.help % {**vars(action), "prog": parser.prog}
        if not action.required and "default" not in text.lower():
            no_default.append(flag)
    assert not blank, f"`mpruner {name}` options without help: {blank}"
    assert not no_default, f"`mpruner {name}` options whose help does not say the default: {no_default}"
    parser.format_help()  # every %(default)s expands


def test_top_level_help_lists_every_command(capsys):
    parser, subs = _subcommands()
    text = parser.format_help()
    for name in subs:
        assert name in text


# ---------------------------------------------------------------- item: --eval evaluate(model)


# ---------------------------------------------------------------- item: custom model without --layers


# ---------------------------------------------------------------- item: checked before any model loads


# ---------------------------------------------------------------- item: unknown bench methods


# ---------------------------------------------------------------- item: resume messages


# ---------------------------------------------------------------- item: what the pruned model directory holds


# ---------------------------------------------------------------- item: output a user reads
