"""Wire formats as sans-IO codecs: pure functions over bytes, no sockets, tested with vectors."""
