"""The command line explains itself: workflow order, an example per command, every option's help and
default, global options after the command."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from lantern.cli import WORKFLOW, build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (path, parser) of the command tree, the top level included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


ALL = list(_commands(build_parser()))
COMMANDS = [(" ".join(path), p) for path, p in ALL if path]


def test_the_command_list_follows_the_workflow():
    lines = build_parser().format_help().splitlines()
    listed = [line.split()[0] for line in lines if line.startswith("    ")]
    commands = [name for name in listed if name in WORKFLOW]
    assert commands == [name for name in WORKFLOW if name in commands]
    assert commands[:3] == ["demo", "run", "data"] and len(commands) == len(WORKFLOW)


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_an_example_that_runs_it(name, parser):
    assert parser.epilog and parser.epilog.startswith(("example:", "examples:")), name
    lines = [line.strip() for line in parser.epilog.splitlines()[1:] if line.strip()]
    assert lines and all(line.startswith(f"lantern {name}") for line in lines), (name, lines)
    for line in lines:  # each example is a command line the parser accepts as written
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.command == name.split()[0], line


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_is_explained_with_its_default(name, parser):
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}: no help"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            flag = action.option_strings[0]
            shown = text[text.index(f"\n  {flag}") :].split("\n  -", 2)[1]
            assert "default" in " ".join(shown.split()), f"{name} {flag}: {action.default!r} not shown"


def test_verbose_is_accepted_before_and_after_the_command():
    parser = build_parser()
    base = ["train", "--corpus", "c", "--model", "corect", "--out", "r"]
    assert parser.parse_args(base).verbose is False
    assert parser.parse_args(["-v", *base]).verbose is True
    assert parser.parse_args([*base, "-v"]).verbose is True
    assert parser.parse_args(["data", "inspect", "c", "--verbose"]).verbose is True


def test_one_spelling_for_quiet():
    for name, parser in COMMANDS:
        flags = {f for a in parser._actions for f in a.option_strings}
        assert "--no-progress" not in flags, name


def test_the_overview_s_commands_parse_as_written():
    parser = build_parser()
    lines = [line.strip() for line in parser.epilog.splitlines() if line.startswith("  lantern ")]
    assert len(lines) >= 7
    for line in lines:
        parser.parse_args(shlex.split(line)[1:])


def _readme_commands() -> list[str]:
    """Every `lantern ...` line of the README's shell blocks, optional parts (``[...]``) and comments
    left out."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    commands, in_shell = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_shell = line.strip() in ("```bash", "```sh")
            continue
        if in_shell and line.startswith("lantern "):
            line = re.sub(r"\[[^\]]*\]", "", line.split("  #")[0])
            commands.append(line.strip())
    return commands


def test_every_command_in_the_readme_parses_as_written():
    commands = _readme_commands()
    assert len(commands) >= 20
    for line in commands:
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"README: {line!r} does not parse")
