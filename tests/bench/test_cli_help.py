"""The help of ``bench e2e``, ``bench cp``, ``cp-plan`` and ``cp-scaling`` is plain text: every
option says what it is, and no reST markup (double backticks, ``:func:`` roles) leaks from
the docstrings into the terminal."""

from __future__ import annotations

import argparse
import re

import pytest

from powerattn.cli import build_parser

COMMANDS = [("bench", "e2e"), ("bench", "cp"), ("cp-plan",), ("cp-scaling",)]
REST = re.compile(r"``|`|:(func|mod|class|data|meth|attr):")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_has_plain_help(path):
    parser = build_parser()
    for name in path:
        parser = _subparser(parser, name)
    missing = [
        a.option_strings[0]
        for a in parser._actions
        if a.option_strings and (not a.help or a.help == argparse.SUPPRESS)
    ]
    assert missing == [], f"options without help: {missing}"
    text = parser.format_help()
    assert REST.search(text) is None, REST.search(text).group(0)
