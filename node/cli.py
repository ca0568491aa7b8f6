"""The ``p2pchat`` command line.

Usage::

    p2pchat [options]                 run the node (default role: peer)
    p2pchat id [options]              print this node's PeerId, creating the identity if needed
    p2pchat config check FILE         validate FILE (with presets and environment) and the
                                      data dir it names; print the effective configuration
    p2pchat history ADDR [--room R] [--since WHEN] [--limit N] [--json]
                                      ask a history source for a room's messages, verified
    p2pchat passphrase set|change|remove [--new-passphrase-file FILE]
                                      encrypt the data dir at rest, change its passphrase, or
                                      decrypt it (the node must not be running)

Each subcommand accepts only the options it uses (``p2pchat history --help`` lists them).

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure. An expected error is one
line on stderr (one per problem when a config has several).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from p2pchat.node import __version__
from p2pchat.node.config import Config, data_dir_in_use, data_dir_problems, load_config
from p2pchat.node.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, ConfigError, P2PChatError

PROG = "p2pchat"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see {PROG} --help)\n")
        raise SystemExit(EXIT_USAGE)


# Every option the node and its subcommands take: flags, then argparse keywords. Each command
# shows the ones it uses; the rest of the node's options are accepted there too, hidden, as they
# always were (``p2pchat id --data-dir D --metrics off`` keeps working), and are then unused.
_OPTIONS: dict[str, dict[str, Any]] = {
    "--role": {
        "metavar": "ROLES",
        "help": "peer | bootstrap | relay | archiver, or a comma list (default: peer)",
    },
    "--listen": {
        "metavar": "MULTIADDR",
        "action": "append",
        "help": "listen address (repeatable or comma list), e.g. /ip4/0.0.0.0/tcp/4001",
    },
    "--announce": {
        "metavar": "MULTIADDR",
        "action": "append",
        "help": "address advertised to peers instead of the listen addresses (repeatable)",
    },
    "--bootstrap": {
        "metavar": "MULTIADDR",
        "action": "append",
        "help": "bootstrap peer, /.../p2p/<peer id> (repeatable or comma list)",
    },
    "--room": {"help": "chat room to join (also: CHAT_TOPIC)"},
    "--json": {
        "action": "store_true",
        "help": "chat front end for scripts: JSON events on stdout, commands from stdin",
    },
    "--metrics": {
        "metavar": "HOST:PORT|off",
        "help": "metrics/health endpoint address, or off",
    },
    "--config": {"metavar": "FILE", "type": Path, "help": "YAML configuration file"},
    "--data-dir": {"metavar": "DIR", "help": "identity and store directory"},
    "--log-level": {"choices": ("debug", "info", "warning", "error"), "help": "log level"},
    "--log-format": {
        "choices": ("auto", "json", "console"),
        "help": "logs on stderr: auto (console on a TTY, JSON lines otherwise), json, console",
    },
}
_NODE = tuple(_OPTIONS)
_CONFIG = ("--config",)
_DATA_DIR = ("--data-dir",)
_LOGS = ("--log-level", "--log-format")


def _options(shown: Sequence[str], hidden: Sequence[str] = ()) -> _Parser:
    """A parent parser with the options ``shown`` in help and ``hidden`` accepted but not
    shown. SUPPRESS keeps unset flags out of the result, so that only the flags given become
    config settings (the highest layer)."""
    options = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    for flag in shown:
        options.add_argument(flag, **_OPTIONS[flag])
    for flag in hidden:
        if flag not in shown:
            options.add_argument(flag, **{**_OPTIONS[flag], "help": argparse.SUPPRESS})
    return options


def _history_options() -> _Parser:
    options = _options(
        (*_CONFIG, *_LOGS), hidden=[f for f in _NODE if f not in ("--room", "--json")]
    )
    options.add_argument(
        "addr",
        metavar="MULTIADDR",
        help="the source: an archiver or a chat peer serving history, /.../p2p/<peer id>",
    )
    options.add_argument("--room", help="the room to read (default: chat.room, CHAT_TOPIC)")
    options.add_argument(
        "--since", metavar="WHEN", help="from this long ago (90s, 15m, 2h, 7d) or an ISO time"
    )
    options.add_argument(
        "--limit", type=int, default=1000, help="messages at most, oldest first (default 1000)"
    )
    options.add_argument(
        "--timeout", type=float, default=30.0, help="seconds for the whole query (default 30)"
    )
    options.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per message (id, sent_at_ms, sender, sender_name, text)",
    )
    return options


def _build_parser() -> _Parser:
    """The whole command line. Each subcommand's help lists only the options it uses; the
    node's options are accepted everywhere, as always (before a subcommand too:
    ``p2pchat --data-dir D id``)."""
    parser = _Parser(
        prog=PROG,
        parents=[_options(_NODE)],
        description="Decentralized chat node on libp2p. Without a subcommand, runs the node.",
        epilog="Environment: P2PCHAT_SECTION__KEY overrides config keys, e.g. "
        "P2PCHAT_NODE__LISTEN; CHAT_TOPIC selects the room.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.add_parser(
        "id",
        parents=[_options((*_DATA_DIR, *_CONFIG), hidden=_NODE)],
        help="print this node's PeerId (creates the identity if needed)",
        description="Print this node's PeerId (the identity in the data dir; created if "
        "there is none).",
    )
    commands.add_parser(
        "history",
        parents=[_history_options()],
        help="ask an archiver or peer for a room's messages (verified), e.g. to check an archive",
        description="Ask one history source for a room's messages; each is verified (signature, "
        "room, id, time) and forged or altered ones are counted, not shown.",
    )
    passphrase = commands.add_parser(
        "passphrase",
        parents=[_options((*_DATA_DIR, *_CONFIG), hidden=_NODE)],
        help="encrypt the data dir at rest with a passphrase, change it, or remove it",
        description="set: encrypt the identity key, ratchet state and message bodies of the "
        "data dir (re-encrypting what is there); change: a new passphrase; remove: decrypt "
        "it all. The passphrase is read from P2PCHAT_PASSPHRASE, node.passphrase_file, or asked "
        "on a terminal; change's new one from P2PCHAT_NEW_PASSPHRASE, --new-passphrase-file, "
        "or asked. The node must not be running.",
    )
    passphrase.add_argument("action", choices=("set", "change", "remove"), help="what to do")
    passphrase.add_argument(
        "--new-passphrase-file",
        metavar="FILE",
        type=Path,
        help="file holding the new passphrase (set, change), its first line",
    )
    config_cmd = commands.add_parser(
        "config", help="configuration tools", description="Configuration tools."
    )
    config_sub = config_cmd.add_subparsers(
        dest="config_command", metavar="ACTION", parser_class=_Parser, required=True
    )
    check = config_sub.add_parser(
        "check",
        help="validate a config file and its data dir; print the effective configuration",
        description="Validate FILE with the presets and the environment, check the data dir it "
        "names, and print the effective configuration.",
    )
    check.add_argument("file", type=Path, help="YAML configuration file")
    return parser


def _flags_to_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Map the flags that were given to nested config keys (the highest-precedence layer)."""
    given = vars(args)
    settings: dict[str, Any] = {}
    node: dict[str, Any] = {}
    if "role" in given:
        settings["roles"] = args.role
    if "data_dir" in given:
        node["data_dir"] = args.data_dir
    for flag in ("listen", "announce", "bootstrap"):
        if flag in given:
            node[flag] = [item for value in given[flag] for item in value.split(",") if item]
    if node:
        settings["node"] = node
    chat: dict[str, Any] = {}
    if "room" in given:
        chat["room"] = args.room
    if given.get("json"):
        chat["ui"] = "json"
    if chat:
        settings["chat"] = chat
    if "metrics" in given:
        settings["metrics"] = (
            {"enabled": False}
            if args.metrics == "off"
            else {"enabled": True, "listen": args.metrics}
        )
    log = {key: given[f"log_{key}"] for key in ("level", "format") if f"log_{key}" in given}
    if log:
        settings["log"] = log
    return settings


def _first_user_error(error: BaseException) -> P2PChatError | None:
    """Find a user-facing error inside (possibly nested) exception groups from nurseries."""
    if isinstance(error, P2PChatError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_user_error(inner)
            if found is not None:
                return found
    return None


def _print_error(error: P2PChatError) -> int:
    """One line per problem the error holds (a config with several errors lists each), each
    prefixed, so that every line stands on its own in a log or a terminal."""
    kind = "config error" if error.exit_code == EXIT_USAGE else "error"
    for line in str(error).splitlines() or [type(error).__name__]:
        sys.stderr.write(f"{PROG}: {kind}: {line}\n")
    return error.exit_code


def _cmd_config_check(file: Path) -> int:
    config = load_config(file=file)
    data_dir = config.data_dir()
    problems = data_dir_problems(data_dir)
    if problems:
        raise ConfigError("\n".join(problems))
    if data_dir_in_use(data_dir):
        # Checking the next config of a running node is what an operator does before a
        # restart: worth saying, not an error.
        sys.stderr.write(
            f"{PROG}: note: data dir {data_dir} is in use by a running p2pchat node; this "
            "config takes effect when it restarts (another node cannot share the data dir)\n"
        )
    sys.stdout.write(config.to_yaml())
    return EXIT_OK


def _cmd_id(config: Config) -> int:
    from p2pchat.node.p2p.identity import load_or_create_identity
    from p2pchat.node.passphrase_cli import unlock_data_dir

    keys = unlock_data_dir(config, can_ask=sys.stdin.isatty())
    identity = load_or_create_identity(config.data_dir(), keys)
    sys.stdout.write(identity.peer_id_text + "\n")
    if identity.created:
        sys.stderr.write(f"{PROG}: created a new identity in {identity.path}\n")
    tightened = identity.tightened
    if tightened is not None and tightened.left_open is not None:
        sys.stderr.write(
            f"{PROG}: note: data dir {tightened.data_dir} is root's and open to others "
            f"(mode {tightened.left_open:03o}); what p2pchat keeps in it is private\n"
        )
    elif tightened is not None and tightened.changed:
        sys.stderr.write(
            f"{PROG}: note: data dir {tightened.data_dir} was open to others; made private\n"
        )
    return EXIT_OK


def _cmd_history(config: Config, args: argparse.Namespace) -> int:
    from p2pchat.node.history_cli import run_query
    from p2pchat.node.logs import configure_logging

    # A one-off command: only what goes wrong (unless --log-level says otherwise), and never the
    # library's per-attempt dial errors (the failure is reported once, as the command's error
    # line).
    level = getattr(args, "log_level", "warning")
    configure_logging(level=level, fmt=config.log.format, libp2p_level="critical")
    if not 1 <= args.limit <= 10_000_000:
        raise ConfigError(f"--limit {args.limit}: must be 1..10000000")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: must be positive")
    return run_query(
        args.addr,
        config.chat.room,
        getattr(args, "since", None),
        args.limit,
        config.chat.max_message_bytes,
        bool(getattr(args, "json", False)),
        args.timeout,
    )


def _cmd_run(config: Config) -> int:
    import trio
    from p2pchat.node.logs import LogFile, bind_node, configure_logging, get_logger
    from p2pchat.node.p2p.identity import load_or_create_identity
    from p2pchat.node.passphrase_cli import unlock_data_dir
    from p2pchat.node.runtime import run_node
    from p2pchat.roles import create_roles

    # With the chat console front end the terminal is the console's: logs go to a file (the
    # front end shows warnings as notices, see logs.watch_warnings).
    path = config.log_file(stdin_is_tty=sys.stdin.isatty())
    configure_logging(
        level=config.log.level,
        fmt=config.log.format,
        libp2p_level=config.log.libp2p_level,
        file=None if path is None else LogFile(path, config.log.max_bytes, config.log.backups),
    )
    # Asked only of a person at the console: --json, a service, a container are told how.
    can_ask = config.console_front_end(sys.stdin.isatty())
    identity = load_or_create_identity(config.data_dir(), unlock_data_dir(config, can_ask=can_ask))
    bind_node(role=",".join(config.roles), peer_id=identity.peer_id_text)
    log = get_logger("p2pchat")
    log.info(
        "starting",
        version=__version__,
        identity=str(identity.path),
        new_identity=identity.created,
        encrypted_at_rest=identity.at_rest is not None,
    )
    try:
        trio.run(run_node, config, identity, create_roles(config))
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return EXIT_OK
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "config":
            return _cmd_config_check(args.file)
        config = load_config(file=getattr(args, "config", None), flags=_flags_to_settings(args))
        if args.command == "id":
            return _cmd_id(config)
        if args.command == "history":
            return _cmd_history(config, args)
        if args.command == "passphrase":
            from p2pchat.node.passphrase_cli import cmd_passphrase
            from p2pchat.roles import PLAINTEXT_FILES, repickle_at_rest

            return cmd_passphrase(
                config,
                args.action,
                getattr(args, "new_passphrase_file", None),
                repickle_at_rest,
                PLAINTEXT_FILES,
            )
        return _cmd_run(config)
    except BaseException as error:
        user_error = _first_user_error(error)
        if user_error is None:
            raise
        return _print_error(user_error)


def run() -> NoReturn:
    """Console-script wrapper: exit with :func:`main`'s code."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = EXIT_OK
    except Exception:
        import traceback

        traceback.print_exc()
        code = EXIT_RUNTIME
    raise SystemExit(code)
