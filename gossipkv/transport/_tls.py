"""Mutual TLS for the TCP transport: the configuration, its SSL contexts, and who is on the
other end of a connection.

Both sides require a certificate signed by the cluster CA (``CERT_REQUIRED``), TLS 1.2 at
least (1.3 is what two gossipkv ends negotiate). Host names are not checked: members are reached
by address and a certificate names an identity, not a host. What a certificate says, its name
(CN) and role (OU, see ``_certs.py``), is handed to the node as a :class:`TLSIdentity`, and the
node checks it against the ``hello``.

A failed TLS handshake becomes :class:`TLSHandshakeFailed` (a ``ConnectionClosed``) with a reason
and one readable line: ``tls_required`` (plaintext met a TLS peer), ``tls_not_enabled`` (TLS met
a plaintext peer) or ``tls_certificate`` (the certificate was refused: another CA, expired,
none).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from gossipkv._errors import ConfigError, ConnectionClosed

from ._certs import CA_CERT, ROLES, check_certificate_name


class TLSHandshakeFailed(ConnectionClosed):
    """The TLS layer refused the connection (or the other end does not speak it).

    Attributes:
      reason: ``tls_required``, ``tls_not_enabled`` or ``tls_certificate``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TLSIdentity:
    """What the other end's certificate says: its ``name`` (CN) and ``role`` (OU)."""

    name: str
    role: str


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Where this end's TLS material is: the cluster CA bundle, its certificate and key.

    Build it with :meth:`from_dir` from a directory made by ``gossipkv certs``. The files are
    read by :meth:`contexts` (again on every reload), not at construction.

    Attributes:
      ca: PEM file of the trusted CA certificates (one, or old and new while rotating).
      cert: this end's certificate (PEM).
      key: its private key (PEM).
    """

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], name: str | None = None) -> TLSConfig:
        """The configuration in ``directory``: ``ca.pem`` and ``NAME.pem``/``NAME.key``.

        Args:
          directory: a directory made by ``gossipkv certs``.
          name: whose certificate to use; default: the only one in the directory.

        Raises:
          ConfigError: the directory or a file is missing, or ``name`` is needed to choose.
        """
        path = Path(directory)
        if not path.is_dir():
            raise ConfigError(f"TLS directory {path} does not exist")
        if name is None:
            names = sorted(
                p.stem
                for p in path.glob("*.pem")
                if p.name != CA_CERT and p.with_suffix(".key").exists()
            )
            if len(names) != 1:
                found = ", ".join(names) or "none"
                raise ConfigError(
                    f"{path} holds {len(names)} certificates ({found}): choose one with --tls-name"
                )
            name = names[0]
        check_certificate_name(name)
        config = cls(path / CA_CERT, path / f"{name}.pem", path / f"{name}.key")
        for file in (config.ca, config.cert, config.key):
            if not file.is_file():
                raise ConfigError(f"TLS file {file} is missing")
        return config

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """A fresh ``(server, client)`` pair of SSL contexts from the files as they are now.

        Raises:
          ConfigError: a file is missing or does not load (one line naming it).
        """
        return self._context(server=True), self._context(server=False)

    def _context(self, *, server: bool) -> ssl.SSLContext:
        purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
        context = ssl.create_default_context(purpose)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # identities are names, checked against the hello
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(self.ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle {self.ca}: {_reason(exc)}") from None
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the certificate {self.cert} with key {self.key}: {_reason(exc)}"
            ) from None
        return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


def identity_of(peer_cert: dict[str, object] | None) -> TLSIdentity | None:
    """The identity in a certificate as :meth:`ssl.SSLSocket.getpeercert` returns it.

    ``None`` when there is no certificate or it does not carry exactly one name and one known
    role (a certificate not made by ``gossipkv certs``).
    """
    if not peer_cert:
        return None
    subject = peer_cert.get("subject", ())
    fields: dict[str, list[str]] = {}
    if isinstance(subject, tuple):
        for rdn in subject:
            for item in rdn:
                if isinstance(item, tuple) and len(item) == 2:
                    fields.setdefault(str(item[0]), []).append(str(item[1]))
    names = fields.get("commonName", [])
    roles = fields.get("organizationalUnitName", [])
    if len(names) != 1 or len(roles) != 1 or roles[0] not in ROLES:
        return None
    return TLSIdentity(names[0], roles[0])


# OpenSSL reasons meaning "what came was not TLS at all".
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
     "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_RECORD", "RECORD_TOO_LARGE"}
)  # fmt: skip


def handshake_failure(exc: BaseException, remote: str, *, server_side: bool) -> TLSHandshakeFailed:
    """The :class:`TLSHandshakeFailed` for an error met during (or just after) a TLS handshake."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLEOFError) or cause is None:
        if server_side:
            return TLSHandshakeFailed(
                "tls_certificate",
                f"{remote} closed the connection in the TLS handshake "
                "(it does not trust this peer's certificate)",
            )
        return TLSHandshakeFailed(
            "tls_certificate",
            f"{remote} closed the connection in the TLS handshake: it refused this "
            "certificate (expired, or not signed by its CA?)",
        )
    reason = str(cause.reason or "")
    if reason in _NOT_TLS:
        if server_side:
            return TLSHandshakeFailed(
                "tls_required",
                f"{remote} sent plaintext, but this peer requires TLS (connect with --tls-dir)",
            )
        return TLSHandshakeFailed(
            "tls_not_enabled",
            f"{remote} answered in plaintext: it runs without TLS (connect without --tls-dir, "
            "or restart it with --tls-dir)",
        )
    for prefix in ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_"):
        if reason.startswith(prefix):
            alert = reason.removeprefix(prefix).lower().replace("_", " ")
            return TLSHandshakeFailed(
                "tls_certificate", f"{remote} refused this end's TLS certificate: {alert}"
            )
    text = reason.lower().replace("_", " ") or str(cause)
    detail = getattr(cause, "verify_message", None)
    if "verify" in text and detail:
        return TLSHandshakeFailed(
            "tls_certificate", f"the TLS certificate of {remote} is refused here: {detail}"
        )
    return TLSHandshakeFailed("tls_certificate", f"TLS handshake with {remote} failed: {text}")
