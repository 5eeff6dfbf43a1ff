"""The command line's help, as a person reads it with ``casetrail COMMAND --help``."""

from __future__ import annotations

import argparse

import pytest

from services.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_says_what_it_is(command: str) -> None:
    """`casetrail token --help` listed --sub, --role and --agency with no word on what they
    are, and `records`/`notifier` --port gave neither its variable nor its default."""
    parser = _commands()[command]
    silent = [a.option_strings[0] for a in parser._actions
              if a.option_strings and a.help in (None, "") and a.dest != "help"]
    assert silent == []


def test_the_token_lifetime_states_its_default() -> None:
    assert "default 28800: 8 hours" in _commands()["token"].format_help()
