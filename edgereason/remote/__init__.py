"""The remote engine: EdgeReason's request API and strategies over any OpenAI-compatible server.

``engine`` is the :class:`RemoteEngine` (a peer of the local ``Engine``), ``http`` the pooled client and
response parsing, ``executor`` the strategies driven over ``/v1/completions`` and ``/v1/chat/completions``.
"""

from .engine import DEFAULT_PARALLEL, RemoteEngine, load_remote
from .http import RemoteError, RemoteTarget, RemoteUnavailableError, parse_remote_url

__all__ = [
    "DEFAULT_PARALLEL",
    "RemoteEngine",
    "RemoteError",
    "RemoteTarget",
    "RemoteUnavailableError",
    "load_remote",
    "parse_remote_url",
]
