"""``python -m p2pchat.node`` runs the ``p2pchat`` command."""

from p2pchat.node.cli import run

run()
