"""The host layer: the only code in p2pchat that imports py-libp2p.

Everything the library gets wrong (see shared/notes/py-libp2p-0.8.1.md) is neutralised here, so
roles and the rest of the node work with small project-owned interfaces. Upgrading the library
changes this package and nothing else.
"""
