"""The cluster's certificate authority: ``gossipkv certs init`` and ``gossipkv certs issue``.

One CA per cluster signs every certificate. A certificate names one identity and one role:

* the name is the subject's common name (CN) and a DNS subject alternative name;
* the role (``peer``, ``client`` or ``operator``) is the subject's organizational unit (OU), so
  ``openssl x509 -noout -subject`` shows both.

Peers do not check host names (members are reached by address, often a bare IP): each side checks
instead that the certificate is the cluster CA's and that its name and role are what the ``hello``
claims (see ``_tls.py``). Peer certificates also carry ``localhost`` and ``127.0.0.1`` alternative
names, so tools that do check host names work against a loopback cluster.

Files in the CA directory: ``ca.pem`` (the CA certificate, or several: a bundle while rotating),
``ca.key``, and ``NAME.pem`` / ``NAME.key`` per issued certificate. Keys are written mode 0600.
Keys are ECDSA P-256 (small and fast to handshake); signatures SHA-256.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gossipkv._errors import ConfigError

#: The roles a certificate may carry (its subject OU).
ROLES = ("peer", "client", "operator")
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
#: Certificate names: what a member name may be and a file name can hold, within a CN's 64 chars.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_certificate_name(name: str) -> None:
    """Refuse a name that cannot be a certificate (and file) name.

    Raises:
      ConfigError: naming the rule.
    """
    if not _NAME.fullmatch(name) or name in ("ca", "client"):
        raise ConfigError(
            f"certificate name {name!r} must be 1..64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit), and not 'ca' or 'client'"
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)  # wall-clock ok: certificate validity


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # also when it existed with wider permissions


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _directory(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is not a directory")
    return path


def create_ca(
    directory: str | os.PathLike[str],
    *,
    name: str = "gossipkv-ca",
    days: int = 3650,
    force: bool = False,
) -> Path:
    """Create a cluster CA in ``directory``: ``ca.key`` (0600) and the self-signed ``ca.pem``.

    Args:
      directory: created when missing.
      name: the CA's common name.
      days: validity.
      force: replace an existing CA (every certificate it signed stops being trusted).

    Returns:
      The path of ``ca.pem``.

    Raises:
      ConfigError: a CA is already there (without ``force``), or the directory is unusable.
    """
    path = _directory(directory)
    if days < 1:
        raise ConfigError(f"days must be >= 1, got {days}")
    if not force and ((path / CA_CERT).exists() or (path / CA_KEY).exists()):
        raise ConfigError(f"{path / CA_CERT} already exists (use --force to replace the CA)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    try:
        _write_key(path / CA_KEY, key)
        _write_cert(path / CA_CERT, cert)
    except OSError as exc:
        raise ConfigError(f"cannot write the CA in {path}: {exc.strerror or exc}") from None
    return path / CA_CERT


def _load_ca(path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        key_data = (path / CA_KEY).read_bytes()
        cert_data = (path / CA_CERT).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no CA in {path}: {exc.filename} is missing (run gossipkv certs init --dir {path})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the CA in {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError as exc:
        raise ConfigError(f"the CA in {path} does not load: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path / CA_KEY} is not an ECDSA key made by gossipkv certs init")
    # In a bundle (old and new CA while rotating), the signing CA is the one matching the key.
    for cert in certs:
        if cert.public_key() == key.public_key():
            return cert, key
    raise ConfigError(f"no certificate in {path / CA_CERT} matches {path / CA_KEY}")


def issue_certificate(
    directory: str | os.PathLike[str],
    name: str,
    role: str,
    *,
    days: int = 825,
    valid_from: datetime.datetime | None = None,
    force: bool = False,
) -> Path:
    """Issue ``NAME.pem`` and ``NAME.key`` (0600) in ``directory``, signed by its CA.

    Args:
      directory: holds ``ca.pem`` and ``ca.key`` (from :func:`create_ca`).
      name: the identity: a member name for ``peer``, any label for ``client`` and
        ``operator``.
      role: ``peer``, ``client`` or ``operator`` (the subject's OU).
      days: validity from ``valid_from``.
      valid_from: start of validity (default: now, less five minutes of clock skew); tests
        issue already-expired certificates with it.
      force: replace an existing ``NAME.pem``.

    Returns:
      The path of ``NAME.pem``.

    Raises:
      ConfigError: a bad name or role, no CA, or the certificate exists (without ``force``).
    """
    path = _directory(directory)
    check_certificate_name(name)
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if days < 1:
        raise ConfigError(f"days must be >= 1, got {days}")
    if not force and (path / f"{name}.pem").exists():
        raise ConfigError(f"{path / (name + '.pem')} already exists (use --force to replace it)")
    ca_cert, ca_key = _load_ca(path)
    key = ec.generate_private_key(ec.SECP256R1())
    start = (valid_from or _now()) - datetime.timedelta(minutes=5)
    alt_names: list[x509.GeneralName] = [x509.DNSName(name)]
    if role == "peer":
        alt_names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == "peer":
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)  # peers accept connections too
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    try:
        _write_key(path / f"{name}.key", key)
        _write_cert(path / f"{name}.pem", cert)
    except OSError as exc:
        raise ConfigError(f"cannot write {name}'s certificate: {exc.strerror or exc}") from None
    return path / f"{name}.pem"
