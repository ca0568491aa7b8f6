"""The user-facing error types and the exit codes the CLI maps them to.

An error of these types is an expected failure the user can fix; the CLI prints its message (one
line, or one line per problem when there are several) and exits with its code. Anything else
escaping is a bug and keeps its traceback.
"""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class P2PChatError(Exception):
    """An expected failure with a message for the user: one line per problem, usually one."""

    exit_code: int = EXIT_RUNTIME


class ConfigError(P2PChatError):
    """The configuration (file, environment, flags or presets) is invalid."""

    exit_code = EXIT_USAGE


class IdentityError(P2PChatError):
    """The identity key cannot be read or created; the node must not start with another key."""

    exit_code = EXIT_USAGE


class StoreError(P2PChatError):
    """The local store cannot be opened (corrupt, locked by another process, no permission)."""

    exit_code = EXIT_USAGE


class PassphraseError(P2PChatError):
    """The data dir's passphrase is missing, wrong, or its ``at-rest.json`` is damaged: the
    node must not start (nor change anything) without the data dir's keys."""

    exit_code = EXIT_USAGE


class StartupError(P2PChatError):
    """The node could not start at run time (a listen address cannot be bound, ...)."""

    exit_code = EXIT_RUNTIME
