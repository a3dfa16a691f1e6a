"""How the command line ends: one line and exit 2 for a user's error, exit 3 for work left to do on
purpose, and the traceback of a bug (a KeyError is a bug, never shown as ``lantern: error: 'x'``)."""

from __future__ import annotations

import argparse

import pytest

import lantern.cli as cli
from lantern.errors import LanternError, StageIncomplete


def _parser_raising(exc: BaseException):
    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="lantern")
        parser.add_argument("-v", "--verbose", action="store_true")

        def handler(args: argparse.Namespace) -> int:
            raise exc

        parser.set_defaults(handler=handler)
        return parser

    return build


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_parser", _parser_raising(LanternError("corpus.json: line 3: bad")))
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "lantern: error: corpus.json: line 3: bad\n"


def test_incomplete_work_exits_3(monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_parser", _parser_raising(StageIncomplete("budget reached: run again")))
    assert cli.main([]) == 3
    assert capsys.readouterr().err == "lantern: budget reached: run again\n"


@pytest.mark.parametrize("bug", [KeyError("stride"), TypeError("x"), AttributeError("y")])
def test_a_bug_is_not_dressed_as_a_user_error(monkeypatch, capsys, bug):
    monkeypatch.setattr(cli, "build_parser", _parser_raising(bug))
    with pytest.raises(type(bug)):  # python -m lantern then prints its traceback and exits 1
        cli.main([])
    assert "lantern: error" not in capsys.readouterr().err
