"""`make generated`: the man page and the shell completions of ``p2pchat``, from its parser.

Both are generated from ``p2pchat.node.cli._build_parser()`` by pinned, well-kept generators
(argparse-manpage for the man page, shtab for bash, zsh and fish completion), written under
share/ in the layout they are installed in (pyproject's [tool.setuptools.data-files] ships them
in the wheel), and committed, like the protobuf code of ``make proto``.
tests/test_packaging.py regenerates them and fails when the committed files are stale.

    python tools/cli_files.py            # rewrite the files under share/
    python tools/cli_files.py --check    # exit 1, naming the stale files, if any differs

The output depends only on the parser, pyproject's version and CHANGELOG.md's date for that
version: never on today's date or the terminal's width.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAN_PAGE = Path("share/man/man1/p2pchat.1")
COMPLETIONS = {
    "bash": Path("share/bash-completion/completions/p2pchat"),
    "zsh": Path("share/zsh/site-functions/_p2pchat"),
    "fish": Path("share/fish/vendor_completions.d/p2pchat.fish"),
}

# Sections of the man page that argparse does not know. Kept short: the README is the manual.
EXIT_STATUS = r""".TP
.B 0
ok (also after SIGINT or SIGTERM)
.TP
.B 1
runtime failure, e.g. a listen or metrics address cannot be bound
.TP
.B 2
usage or configuration error: bad flag, key, value or multiaddr, unreadable or corrupt file,
corrupt identity, data directory in use
.PP
Every expected error is one line on standard error."""

FILES = r""".TP
.I $XDG_DATA_HOME/p2pchat
(default
.IR ~/.local/share/p2pchat )
the node's identity and message store; \fB\-\-data\-dir\fR or \fBnode.data_dir\fR moves it."""

SEE_ALSO = r"""The README of the source distribution: configuration keys, chat commands, roles,
deployment and metrics."""


def project_version() -> str:
    """The version pyproject.toml declares (not the installed metadata's, which may be older)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def release_date(version: str) -> str:
    """CHANGELOG.md's date for ``version`` (``## 0.1.0 - 2026-12-04``): the man page's date.

    A version with no dated entry is a release in the making: it takes the Unreleased
    section's place and has no date yet, so the page says "unreleased".
    """
    changelog = (ROOT / "CHANGELOG.md").read_text()
    found = re.search(
        rf"^## \[?{re.escape(version)}\]? - (\d{{4}}-\d{{2}}-\d{{2}})$", changelog, re.M
    )
    return found.group(1) if found else "unreleased"


def _parser() -> argparse.ArgumentParser:
    """The CLI's parser, its file and directory arguments marked for shtab."""
    # argparse wraps usage and help to the terminal's width: fix it, or the output would depend
    # on the shell that ran the generator. Wide, so that man fills each usage line itself.
    os.environ["COLUMNS"] = "1000"
    import shtab
    from p2pchat.node.cli import _build_parser

    parser: argparse.ArgumentParser = _build_parser()
    for action in _all_actions(parser):
        # A `complete` attribute is how shtab is told what an argument names.
        if action.metavar == "DIR":
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.type is Path or action.metavar == "FILE":
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return parser


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions of ``parser`` and of every subcommand's parser, recursively."""
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                actions += _all_actions(sub)
    return actions


def render() -> dict[Path, str]:
    """Every generated file's path (relative to the repository) and its content."""
    import shtab
    from argparse_manpage.manpage import Manpage

    parser = _parser()
    version = project_version()
    page = Manpage(parser)
    # The attributes Manpage documents as the way to set the header and NAME line.
    page.date = release_date(version)
    page.source = f"p2pchat {version}"
    page.manual = "p2pchat manual"
    page.description = "decentralized chat node on libp2p (peer, bootstrap, relay, archiver)"
    page.add_section("exit status", ">", EXIT_STATUS)
    page.add_section("files", ">", FILES)
    page.add_section("see also", ">", SEE_ALSO)
    files = {MAN_PAGE: str(page)}
    for shell, path in COMPLETIONS.items():
        files[path] = shtab.complete(parser, shell=shell)
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the files, or with ``--check`` report the stale ones (exit 1) and write nothing."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    check = options.parse_args(argv).check
    stale = []
    for path, content in render().items():
        target = ROOT / path
        if target.exists() and target.read_text() == content:
            continue
        stale.append(path)
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            print(f"wrote {path}")
    if check and stale:
        print(f"stale, run `make generated`: {', '.join(map(str, stale))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
