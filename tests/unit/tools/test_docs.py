"""The configuration reference cannot drift from the code: docs/configuration.md is what the
commands' parsers say, and every flag or variable named anywhere in docs/ exists."""

import re
from pathlib import Path

import pytest

from demo import webapp
from discovery import acl
from discovery.register.labels import LABELS
from discovery.register.main import build_parser as registrator_parser
from discovery.watch.main import build_parser as watcher_parser
from tools import cluster, docs, lab

DOCS = Path(__file__).resolve().parents[3] / "docs"

ROOT = DOCS.parent
# Read by the code but not a flag's variable: the stats password itself (a secret is never a flag:
# it would show in `ps`), Docker's own (read by its SDK), and compose.yaml's.
OTHER_VARIABLES = {"DISCOVERY_STATS_PASSWORD", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"}
OTHER_VARIABLES |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))
# Flags of commands that are not ours, and the file that proves each one: checked below too.
OTHER_FLAGS = {"--profile": "compose.yaml", "--scale": "compose.yaml", "--quick": "bench/__main__.py",
               "--check": "tools/figures.py", "--net": "tools/cluster.py"}
# Each proof as the file writes it: compose's own usage comment, bench's argparse definition,
# the figures tool's own test of its argument, nsenter's as the cluster tool calls it.
PROOF = {"--profile": "--profile cluster", "--scale": "--scale webapp", "--quick": '"--quick"',
         "--check": '"--check" in', "--net": '"nsenter", f"--net='}


def known(everything: bool = True) -> tuple[set[str], set[str]]:
    """Every flag and environment variable the shipped commands take (the watcher, the registrator
    and the ACL one-shot), with `everything` also the lab's and the demo web app's."""
    flags: set[str] = set()
    variables = {label.env for label in LABELS if label.env}
    parsers = [watcher_parser({}), registrator_parser({}), acl.build_parser({})]
    if everything:
        parsers += [lab.build_parser({}), webapp.build_parser(), cluster.build_parser()]
    parsers += [sub for parser in parsers for sub in docs._subcommands(parser).values()]
    for parser in parsers:
        flags |= {flag for action in parser._actions for flag in action.option_strings}
        variables |= set(getattr(parser, "env_of", {}).values())
    return flags, variables


def test_the_reference_is_what_the_parsers_say():
    assert (DOCS / "configuration.md").read_text() == docs.render(), "run: python -m tools.docs"


def test_the_reference_lists_every_flag_and_variable_of_help():
    text = (DOCS / "configuration.md").read_text()
    flags, variables = known(everything=False)
    assert {flag for flag in flags if flag.startswith("--")} - {"--help"} <= set(re.findall(r"--[a-z][a-z-]*", text))
    assert variables <= set(re.findall(r"\b[A-Z][A-Z0-9_]{3,}\b", text))


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_flag_and_variable_named_in_the_docs_exists(page):
    text = page.read_text()
    flags, variables = known()
    named_flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text))
    prose = re.sub(r"--[a-z-]+ [A-Z][A-Z0-9_\[\]=]*", "", text)  # a flag's METAVAR is no variable
    named_variables = set(re.findall(r"\b(?:DISCOVERY|CONSUL|SERVICE|DOCKER)_[A-Z0-9_]+\b", prose))
    assert named_flags <= flags | OTHER_FLAGS.keys(), f"{page.name} names flags no command takes"
    assert named_variables <= variables | OTHER_VARIABLES, f"{page.name} names variables no command reads"


@pytest.mark.parametrize(("flag", "where"), sorted(OTHER_FLAGS.items()))
def test_the_other_commands_flags_are_real(flag, where):
    assert PROOF[flag] in (ROOT / where).read_text()


def test_a_drifted_reference_is_caught(tmp_path, monkeypatch):
    stale = tmp_path / "configuration.md"
    stale.write_text(docs.render().replace("DISCOVERY_WAIT_MIN", "DISCOVERY_MIN_WAIT"))
    monkeypatch.setattr(docs, "TARGET", stale)
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    assert docs.main(["--check"]) == 1
    stale.write_text(docs.render())
    assert docs.main(["--check"]) == 0
