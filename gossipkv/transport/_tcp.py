"""TCP transport (placeholder until implemented)."""

from __future__ import annotations

from ._base import Transport


class TcpTransport(Transport):  # pragma: no cover - replaced by the real implementation
    pass
