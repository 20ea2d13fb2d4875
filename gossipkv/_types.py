"""Small shared value types: node identity and addresses.

Pure stdlib; every layer may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

NodeId: TypeAlias = str


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A ``host:port`` pair, parsed and validated once."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``"host:port"`` (IPv6 as ``"[::1]:7400"``).

        Raises:
          ValueError: if the text is not a host and a port in 0..65535.
        """
        if not isinstance(text, str):
            raise ValueError(f"address must be a string like '127.0.0.1:7400', got {text!r}")
        raw = text.strip()
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"bad address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7400")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"bad address {text!r}: port must be 0..65535")
        return cls(host, port)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"
