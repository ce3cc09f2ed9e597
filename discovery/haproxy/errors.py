"""What can go wrong when talking to HAProxy, as one family of exceptions."""

from __future__ import annotations


class HAProxyError(Exception):
    """HAProxy refused a config, a reload failed, or its socket could not be reached."""


class HAProxyUnreachable(HAProxyError):
    """Nothing listens on the socket (no file, or connection refused): HAProxy does not run."""


class SocketRefused(HAProxyUnreachable):
    """The socket file is there but nothing accepts on it: HAProxy gone, or its master between
    two lives (it re-executes itself on every reload)."""


class ReloadFailed(HAProxyError):
    """HAProxy refused to load the new config and kept its previous workers."""


class ConfigInvalid(HAProxyError):
    """`haproxy -c` rejected a candidate configuration; the message holds its diagnostics."""
