"""The archiver role: durable room history, served over the history protocol (issue #5)."""

from p2pchat.roles.archiver.role import ArchiverRole

__all__ = ["ArchiverRole"]
