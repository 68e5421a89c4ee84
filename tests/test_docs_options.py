"""README.md documents every command-line option and every transport URL.

Options are read from the real parsers (``gsi.cli.build_parser``, ``host_sim.cli.
build_parser`` and each of its subcommands), so an option added later fails this test
until the README's tables or code mention it.
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from gsi import cli as receiver_cli
from gsi.transports import url as transport_url
from host_sim import cli as host_cli

README = Path(__file__).resolve().parent.parent / "README.md"
OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def documented(text: str) -> tuple[set[str], set[str]]:
    """(options, table rows): the ``--options`` in table rows, code spans and code
    blocks of a markdown text, and its table rows."""
    blocks = re.findall(r"^```.*?^```", text, flags=re.M | re.S)
    rest = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    rows = {line for line in rest.splitlines() if line.lstrip().startswith("|")}
    places = [*blocks, *rows, *re.findall(r"`([^`\n]+)`", rest)]
    return {o for place in places for o in OPTION.findall(place)}, rows


def long_options(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, str]]:
    """(command, option) for every long option of ``parser`` and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from long_options(subparser, f"{name} {sub}")
        elif not isinstance(action, argparse._HelpAction):
            yield from ((name, o) for o in action.option_strings if o.startswith("--"))


def all_options() -> list[tuple[str, str]]:
    return [*long_options(receiver_cli.build_parser(), "gsi-receiver"),
            *long_options(host_cli.build_parser(), "host-sim")]


def test_every_cli_option_is_in_the_readme() -> None:
    options, _ = documented(README.read_text())
    missing = [f"{command} {option}" for command, option in all_options()
               if option not in options]
    assert missing == [], "README.md lacks these options (add them to its tables)"


def test_the_parsers_are_read_whole() -> None:
    """The walk sees subcommands and every kind of option, not only the first few."""
    found = set(all_options())
    assert {("gsi-receiver", "--grace-period"), ("gsi-receiver", "--log-level"),
            ("host-sim copy", "--to"), ("host-sim copy", "--no-progress"),
            ("host-sim copy", "--transport-mode")} <= found
    assert not any(option == "--help" for _, option in found)


@pytest.mark.parametrize("scheme", [a.scheme for a in typing.get_args(transport_url.Address)])
def test_every_url_scheme_is_in_a_readme_table(scheme: str) -> None:
    _, rows = documented(README.read_text())
    assert any(f"`{scheme}://" in row for row in rows)


def test_documented_finds_only_what_is_documented() -> None:
    text = ("| `--a` | x |\n"
            "prose --b, and `--c` in code\n"
            "```sh\ncmd --d\n```\n"
            "a--e and ---f are no options\n")
    options, rows = documented(text)
    assert options == {"--a", "--c", "--d"}
    assert rows == {"| `--a` | x |"}
