"""p2pchat node runtime: config, identity, host layer, logs, metrics and role composition."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("p2pchat-node")  # the distribution, not the import name
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
