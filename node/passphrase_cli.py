"""The data dir's passphrase on the command line: where it is read from, unlocking the data dir
at start, and ``p2pchat passphrase set|change|remove``.

The passphrase comes from the environment variable ``P2PCHAT_PASSPHRASE``, else from the file
``node.passphrase_file`` names (its first line; the file must be the owner's alone, as the
identity key), else, only where a person is at a terminal (the console peer, the ``passphrase``
commands), from a prompt that does not echo. A node that has no way to ask (``--json``, a
service) and was given none says so in one line and exits 2; so does a wrong passphrase, with
nothing changed.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from p2pchat.node.atrest import (
    AtRestKeys,
    clear_pending,
    create_vault,
    is_encrypted,
    mark_pending,
    pending_action,
    pickle_key,
    remove_vault,
    rewrap,
    unlock,
)
from p2pchat.node.atrest_store import compact, convert_store
from p2pchat.node.config import NEW_PASSPHRASE_ENV, PASSPHRASE_ENV, STORE_DIR, Config
from p2pchat.node.errors import EXIT_OK, PassphraseError
from p2pchat.node.store import KeyValue, Store

# Re-pickles the roles' ratchet state from one pickle key to another (p2pchat.roles'
# repickle_at_rest; the CLI passes it: only it imports the roles).
Repickle = Callable[[Callable[[str], KeyValue], bytes, bytes], int]


def _from_file(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PassphraseError(
                f"passphrase file {path} is open to others (mode {mode:03o}); run: chmod 600 {path}"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PassphraseError(
            f"passphrase file {path}: cannot read: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError:
        raise PassphraseError(f"passphrase file {path}: not UTF-8 text") from None
    return text.splitlines()[0] if text else ""


def _prompt(text: str) -> str:
    # prompt_toolkit, on stdin/stdout as the console that follows (not /dev/tty): not echoed.
    from prompt_toolkit import prompt

    try:
        return prompt(text, is_password=True)
    except (EOFError, KeyboardInterrupt):
        sys.stderr.write("\n")
        raise PassphraseError("no passphrase given") from None


def given_passphrase(config: Config, environ: Mapping[str, str] = os.environ) -> str | None:
    """The passphrase from the environment or the configured file; None if neither."""
    if (value := environ.get(PASSPHRASE_ENV)) is not None:
        return value
    if config.node.passphrase_file is not None:
        return _from_file(config.node.passphrase_file.expanduser())
    return None


def _where_to_give(data_dir: Path) -> str:
    return (
        f"data dir {data_dir} is encrypted: give its passphrase ({PASSPHRASE_ENV} or "
        "node.passphrase_file; the console peer asks for it on a terminal)"
    )


def unlock_data_dir(config: Config, *, can_ask: bool) -> AtRestKeys | None:
    """The data dir's keys when it has a passphrase (None when it has none). ``can_ask``: a
    person is at the terminal (the console peer) and may be prompted.

    Raises:
        PassphraseError: encrypted and no passphrase given (nor asked), or a wrong one.
    """
    data_dir = config.data_dir()
    if (pending := pending_action(data_dir)) is not None:
        raise PassphraseError(_interrupted(data_dir, pending))
    given = given_passphrase(config)
    if not is_encrypted(data_dir):
        if given is not None:
            sys.stderr.write(
                f"p2pchat: note: a passphrase was given but data dir {data_dir} has none "
                "(p2pchat passphrase set turns it on); starting without\n"
            )
        return None
    if given is None:
        if not can_ask:
            raise PassphraseError(_where_to_give(data_dir))
        given = _prompt(f"Passphrase for {data_dir}: ")
    return unlock(data_dir, given)


def _interrupted(data_dir: Path, pending: str) -> str:
    return (
        f"data dir {data_dir}: an interrupted 'p2pchat passphrase {pending}' did not finish "
        f"(part of the data dir is converted); run 'p2pchat passphrase {pending}' again"
    )


def _new_passphrase(new_file: Path | None, environ: Mapping[str, str], env_name: str) -> str:
    if (value := environ.get(env_name)) is not None:
        return value
    if new_file is not None:
        return _from_file(new_file.expanduser())
    if not sys.stdin.isatty():
        raise PassphraseError(
            f"no new passphrase given ({env_name}, --new-passphrase-file, or a terminal)"
        )
    first = _prompt("New passphrase: ")
    if _prompt("New passphrase again: ") != first:
        raise PassphraseError("the two passphrases differ; nothing changed")
    return first


def _current(config: Config, environ: Mapping[str, str]) -> str:
    given = given_passphrase(config, environ)
    if given is not None:
        return given
    if not sys.stdin.isatty():
        raise PassphraseError(_where_to_give(config.data_dir()))
    return _prompt(f"Passphrase for {config.data_dir()}: ")


def cmd_passphrase(
    config: Config,
    action: str,
    new_file: Path | None,
    repickle: Repickle,
    plaintext_files: Sequence[str] = (),
    environ: Mapping[str, str] = os.environ,
) -> int:
    """``p2pchat passphrase set|change|remove`` on ``config``'s data dir (the node must not be
    running: the store is opened, and is locked by a running node). ``plaintext_files``: files
    of the data dir the roles keep only without a passphrase, deleted by ``set``."""
    from p2pchat.node.p2p.identity import load_or_create_identity, reseal_identity

    os.umask(0o077)  # what the store writes is private, as the node's own (runtime.run_node)
    data_dir = config.data_dir()
    encrypted = is_encrypted(data_dir)
    pending = pending_action(data_dir)
    if pending is not None and pending != action:
        raise PassphraseError(_interrupted(data_dir, pending))
    if pending == "remove" and not encrypted:  # killed after the last step: nothing left
        clear_pending(data_dir)
        sys.stderr.write(f"p2pchat: data dir {data_dir} decrypted (an interrupted remove)\n")
        return EXIT_OK
    if action == "change":
        if not encrypted:
            raise PassphraseError(f"data dir {data_dir} has no passphrase (use: set)")
        old = _current(config, environ)
        rewrap(data_dir, old, _new_passphrase(new_file, environ, NEW_PASSPHRASE_ENV))
        sys.stderr.write(f"p2pchat: passphrase of {data_dir} changed\n")
        return EXIT_OK
    if action == "remove" and not encrypted:
        raise PassphraseError(f"data dir {data_dir} has no passphrase")
    if action == "set" and not encrypted:
        given = given_passphrase(config, environ)
        passphrase = given or _new_passphrase(new_file, environ, PASSPHRASE_ENV)
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise PassphraseError(
                f"data dir {data_dir}: cannot create: {error.strerror or error}"
            ) from None
        store = Store.open(data_dir / STORE_DIR)  # fails now if a node is running
        mark_pending(data_dir, action)  # before anything changes: a kill is detected
        keys = create_vault(data_dir, passphrase)  # first: a resumed run finds the key
        # The data dir made private; a key created now is created sealed.
        load_or_create_identity(data_dir, keys)
    else:  # set again (finish an interrupted set) or remove: the current passphrase
        keys = unlock(data_dir, _current(config, environ))
        store = Store.open(data_dir / STORE_DIR, keys)
        mark_pending(data_dir, action)
    seal = action == "set"
    # The roles re-pickle through namespaces that seal (the values are sealed at that moment):
    # after sealing when turning it on, before opening when removing it.
    keyed = Store(store.path, store.db, keys)
    plain, derived = pickle_key(None), keys.pickle_key
    try:
        if seal:
            done = convert_store(store, keys, True)
            pickles = repickle(keyed.namespace, plain, derived)
        else:
            pickles = repickle(keyed.namespace, derived, plain)
            done = convert_store(store, keys, False)
        compact(store)
        reseal_identity(data_dir, keys, seal)
    finally:
        store.close()
    if seal:
        for name in plaintext_files:
            (data_dir / name).unlink(missing_ok=True)
    if not seal:
        remove_vault(data_dir)  # last: an interrupted remove is finished by running it again
    clear_pending(data_dir)  # last of all: until here a kill leaves the data dir marked
    verb = "encrypted" if seal else "decrypted"
    sys.stderr.write(
        f"p2pchat: data dir {data_dir} {verb}: {done.history} history bodies, {done.values} "
        f"private values, {pickles} ratchet pickles"
        + (f"; {done.skipped} damaged values left as they were" if done.skipped else "")
        + "\n"
    )
    return EXIT_OK
