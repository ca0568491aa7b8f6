"""How peers are named to the user: the one short form of a PeerId every output uses.

A PeerId is 52 characters (``12D3KooW`` and 44 more); a line naming a peer shows
:func:`short_id` instead, enough to tell peers apart at a glance. Where the user must copy an id
(``p2pchat id``, ``/info``, a peer address), the full id is printed.
"""

from __future__ import annotations

SHORT_ID_MAX = 14  # ids this long or shorter are shown whole: shortening would not shorten them


def short_id(peer_id: str) -> str:
    """``12D3Ko…x7Qa``: the first 6 characters, an ellipsis, the last 4; an id of
    :data:`SHORT_ID_MAX` characters or fewer unchanged."""
    if len(peer_id) <= SHORT_ID_MAX:
        return peer_id
    return f"{peer_id[:6]}…{peer_id[-4:]}"
