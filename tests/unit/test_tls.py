"""Mutual TLS (issue 13): certificates, identities, and the role checks, in this process over
loopback TCP (the simulated network keeps plaintext)."""

from __future__ import annotations

import datetime
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.x509.oid import NameOID

import gossipkv
from gossipkv import (
    ConfigError,
    GossipConfig,
    HandshakeError,
    KVConfig,
    RemoteError,
    TLSConfig,
    TransportError,
    create_ca,
    issue_certificate,
    open_client,
    open_node,
)
from gossipkv._messages import (
    Hello,
    LeaveRequest,
    Message,
    ReplicaGet,
    ReplicaPut,
    StatsRequest,
)
from gossipkv.transport import TLSIdentity
from gossipkv.transport._tls import identity_of

from .._wire import raw_channel

FAST = GossipConfig(gossip_interval=0.05, leave_timeout=2.0)


def _refusal_for(
    remote: Hello, identity: TLSIdentity | None
) -> Callable[[Message], str | None] | None:
    """What a node's channel refuses from ``remote`` (the node's own routing table decides)."""
    router = gossipkv.Node(name="a", listen="127.0.0.1:0")._rt.router
    return router.refusal(remote.node_id, identity.role if identity else None)


GUARD = 10  # seconds; a guard against hangs, no assertion depends on it
# Under traffic, a loaded machine can stall a replica or a reply past the default timeouts; a
# certificate refused in a rotation fails at once instead (a handshake error), so patience
# loses none of the rotation test's power.
PATIENT = 30.0
SLOW_REPLICAS = KVConfig(replica_timeout=15.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA with peers a and b, a client, an operator, an expired client, and a foreign CA."""
    root = tmp_path_factory.mktemp("pki")
    ca = root / "ca"
    create_ca(ca)
    for name, role in [("a", "peer"), ("b", "peer"), ("app", "client"), ("ops", "operator")]:
        issue_certificate(ca, name, role)
    issue_certificate(
        ca, "stale", "client", valid_from=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), days=1
    )
    create_ca(root / "other")
    issue_certificate(root / "other", "a", "peer")
    issue_certificate(root / "other", "app", "client")
    return ca


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- issuing --------------------------------------------------------------------------------


def test_ca_and_leaf_files_names_roles_and_modes(pki: Path) -> None:
    for key in ("ca.key", "a.key", "app.key", "ops.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600, key
    ca = _cert(pki / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    peer = _cert(pki / "a.pem")
    assert peer.issuer == ca.subject
    assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a"
    assert peer.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "peer"
    sans = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["a", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    client = _cert(pki / "app.pem")
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "client"
    )
    sans = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["app"]


def test_leaf_verifies_against_the_ca_with_the_stdlib(pki: Path) -> None:
    # What the handshake does: the stdlib (OpenSSL) accepts the chain and loads the key.
    server, client = TLSConfig.from_dir(pki, "a").contexts()
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.check_hostname is False


@pytest.mark.parametrize(
    ("name", "role", "match"),
    [
        ("bad/name", "peer", "certificate name"),
        ("", "client", "certificate name"),
        ("ca", "client", "certificate name"),
        ("x", "admin", "role must be one of"),
        ("a", "peer", "already exists"),
    ],
)
def test_bad_issue_input_is_one_config_error(pki: Path, name: str, role: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        issue_certificate(pki, name, role)


def test_issue_without_a_ca_and_init_twice_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CA in"):
        issue_certificate(tmp_path, "a", "peer")
    create_ca(tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        create_ca(tmp_path)
    create_ca(tmp_path, force=True)


def test_tls_config_from_dir(pki: Path, tmp_path: Path) -> None:
    config = TLSConfig.from_dir(pki, "app")
    assert config.cert == pki / "app.pem" and config.ca == pki / "ca.pem"
    with pytest.raises(ConfigError, match="choose one with --tls-name"):
        TLSConfig.from_dir(pki)
    with pytest.raises(ConfigError, match="is missing"):
        TLSConfig.from_dir(pki, "nobody")
    with pytest.raises(ConfigError, match="does not exist"):
        TLSConfig.from_dir(tmp_path / "nowhere", "a")
    create_ca(tmp_path)
    issue_certificate(tmp_path, "solo", "client")
    assert TLSConfig.from_dir(tmp_path).cert == tmp_path / "solo.pem"


def test_identity_of_a_peer_certificate() -> None:
    cert = {"subject": ((("organizationalUnitName", "peer"),), (("commonName", "a"),))}
    assert identity_of(cert) == TLSIdentity("a", "peer")
    assert identity_of({"subject": ((("commonName", "a"),),)}) is None
    assert identity_of(None) is None
    bad_role = {"subject": ((("organizationalUnitName", "root"),), (("commonName", "a"),))}
    assert identity_of(bad_role) is None


# --- role checks ----------------------------------------------------------------------------


def _hello(name: str) -> Hello:
    return Hello(1, "gossipkv", name, 1, "")


def test_roles_decide_what_a_connection_may_send() -> None:
    replica = ReplicaGet("k")
    leave = LeaveRequest()
    stats = StatsRequest()
    client = _refusal_for(_hello("client"), TLSIdentity("app", "client"))
    assert client is not None
    assert client(replica) == "member_message_from_client"
    assert client(leave) == "operator_message_from_client"
    assert client(stats) is None
    operator = _refusal_for(_hello("client"), TLSIdentity("ops", "operator"))
    assert operator is not None
    assert operator(replica) == "member_message_from_client"
    assert operator(leave) is None
    # Plaintext: the hello's claim only (operator calls stay open, as before TLS).
    plain = _refusal_for(_hello("client"), None)
    assert plain is not None and plain(replica) and plain(leave) is None
    assert _refusal_for(_hello("a"), TLSIdentity("a", "peer")) is None


def test_the_toolbox_operator_calls_need_the_operator_role() -> None:
    from gossipkv._messages import (
        ConfigRequest,
        KeysRequest,
        LogLevelRequest,
        MonitorRequest,
        PingRequest,
        RestoreRequest,
    )

    client = _refusal_for(_hello("client"), TLSIdentity("app", "client"))
    operator = _refusal_for(_hello("client"), TLSIdentity("ops", "operator"))
    assert client is not None and operator is not None
    for message in (ConfigRequest(), LogLevelRequest("debug"), MonitorRequest(),
                    RestoreRequest("k", b"")):  # fmt: skip
        assert client(message) == "operator_message_from_client", message
        assert operator(message) is None
    for message in (PingRequest(), KeysRequest(0)):  # reads, as get and stats are
        assert client(message) is None


# --- in-process TLS peers over loopback -----------------------------------------------------


async def test_tls_cluster_client_roles_and_identity(pki: Path) -> None:
    a_tls, b_tls = TLSConfig.from_dir(pki, "a"), TLSConfig.from_dir(pki, "b")
    async with (
        open_node(name="a", listen="127.0.0.1:0", config=FAST, tls=a_tls) as a,
        open_node(name="b", listen="127.0.0.1:0", seeds=[a.address], config=FAST, tls=b_tls) as b,
    ):
        with trio.fail_after(GUARD):
            await a.wait_until(lambda n: {m.name: m.status for m in n.members()}.get("b") == "up")
            await b.wait_ready()  # b has the partition table that includes it
        async with open_client([b.address], tls=TLSConfig.from_dir(pki, "app")) as client:
            await client.put("k", "v")
            assert (await client.get("k")).values == ["v"]
            with pytest.raises(RemoteError, match="only operators may send leave"):
                await client.leave()
        assert b.statistics().refusals.get("operator_message_from_client") == 1
        async with open_client([b.address], tls=TLSConfig.from_dir(pki, "ops")) as ops:
            await ops.set_metadata("zone", "1")
        # A peer certificate used under another member's name is refused.
        async with open_node(
            name="c", listen="127.0.0.1:0", seeds=[a.address], config=FAST, tls=a_tls
        ):
            with trio.fail_after(GUARD):
                await a.wait_until(
                    lambda n: n.statistics().refused_handshakes.get("tls_identity", 0) >= 1
                )
            assert "c" not in {m.name for m in a.members()}


async def test_plaintext_and_tls_refuse_each_other(pki: Path) -> None:
    async with open_node(name="a", listen="127.0.0.1:0", tls=TLSConfig.from_dir(pki, "a")) as a:
        async with open_client([a.address]) as plain:
            with trio.fail_after(GUARD), pytest.raises(HandshakeError, match="requires TLS"):
                await plain.members()
        assert a.statistics().refused_handshakes.get("tls_required") == 1
    async with open_node(name="p", listen="127.0.0.1:0") as p:
        async with open_client([p.address], tls=TLSConfig.from_dir(pki, "app")) as tls:
            with trio.fail_after(GUARD), pytest.raises(HandshakeError, match="without TLS"):
                await tls.members()
        assert p.statistics().refused_handshakes.get("tls_not_enabled") == 1


async def test_client_certificate_cannot_speak_for_a_member(pki: Path) -> None:
    async with (
        open_node(
            name="a", listen="127.0.0.1:0", config=FAST, tls=TLSConfig.from_dir(pki, "a")
        ) as a,
        trio.open_nursery() as nursery,
    ):
        app = TLSConfig.from_dir(pki, "app")
        # Claiming a member's name with a client certificate: refused at the hello.
        with trio.fail_after(GUARD), pytest.raises(HandshakeError, match="cannot act as member"):
            await raw_channel(a.address, app, "b", nursery)
        assert a.statistics().refused_handshakes.get("tls_identity") == 1
        # As a client, a replica write (forged clock, the red team's erase) closes the connection.
        channel = await raw_channel(a.address, app, "client", nursery)
        with trio.fail_after(GUARD), pytest.raises(RemoteError, match="only members may send"):
            await channel.request(ReplicaPut("k", b"\x80"))
        with trio.fail_after(GUARD):
            await channel.wait_closed()
        assert a.statistics().refusals.get("member_message_from_client") == 1
        # The same with a peer certificate, under its own name, is a member's request.
        peer = await raw_channel(a.address, TLSConfig.from_dir(pki, "b"), "b", nursery)
        with trio.fail_after(GUARD):
            reply = await peer.request(ReplicaGet("k"))
        assert reply.TAG == "replica_state"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("tls_seed", [True, False], ids=["tls-seed", "plaintext-seed"])
async def test_tls_and_plaintext_peers_never_join(pki: Path, tls_seed: bool) -> None:
    a_tls = TLSConfig.from_dir(pki, "a") if tls_seed else None
    b_tls = None if tls_seed else TLSConfig.from_dir(pki, "b")
    reason = "tls_required" if tls_seed else "tls_not_enabled"
    async with (
        open_node(name="a", listen="127.0.0.1:0", config=FAST, tls=a_tls) as a,
        open_node(name="b", listen="127.0.0.1:0", seeds=[a.address], config=FAST, tls=b_tls) as b,
    ):
        # b keeps trying its seed, a refuses it (counted by reason), and nobody joins.
        with trio.fail_after(GUARD):
            await a.wait_until(lambda n: n.statistics().refused_handshakes.get(reason, 0) >= 2)
        assert [m.name for m in a.members()] == ["a"]
        assert [m.name for m in b.members()] == ["b"]


@pytest.mark.parametrize(
    ("cert", "match"),
    [
        ("stale", "refused this end.s TLS certificate: certificate expired"),
        ("other", "is refused here"),
    ],
)
async def test_expired_and_foreign_certificates_refused(pki: Path, cert: str, match: str) -> None:
    config = (
        TLSConfig.from_dir(pki.parent / "other", "app")
        if cert == "other"
        else TLSConfig.from_dir(pki, cert)
    )
    async with open_node(name="a", listen="127.0.0.1:0", tls=TLSConfig.from_dir(pki, "a")) as a:
        async with open_client([a.address], tls=config) as client:
            with trio.fail_after(GUARD), pytest.raises(HandshakeError, match=match):
                await client.members()
        with trio.fail_after(GUARD):
            await a.wait_until(
                lambda n: n.statistics().refused_handshakes.get("tls_certificate", 0) >= 1
            )


async def test_unknown_tls_peer_unreachable_is_transport_error(pki: Path) -> None:
    async with open_client(["127.0.0.1:1"], tls=TLSConfig.from_dir(pki, "app")) as client:
        with trio.fail_after(GUARD), pytest.raises(TransportError):
            await client.members()


# --- rotation -------------------------------------------------------------------------------


def _install(source: Path, names: list[str], target: Path, *, ca: bytes | None = None) -> None:
    """Copy certificates into a peer's or client's directory, each file replaced atomically."""
    target.mkdir(exist_ok=True)
    files = {
        f"{n}{ext}": (source / f"{n}{ext}").read_bytes() for n in names for ext in (".pem", ".key")
    }
    if ca is not None:
        files["ca.pem"] = ca
    for file, data in files.items():
        tmp = target / (file + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target / file)


async def test_ca_rotation_with_a_bundle_under_traffic_drops_no_request(tmp_path: Path) -> None:
    old, new = tmp_path / "old-ca", tmp_path / "new-ca"
    create_ca(old)
    create_ca(new)
    for ca in (old, new):
        for name, role in [("a", "peer"), ("b", "peer"), ("app", "client")]:
            issue_certificate(ca, name, role)
    old_ca, new_ca = (old / "ca.pem").read_bytes(), (new / "ca.pem").read_bytes()
    dirs = {n: tmp_path / n for n in ("a", "b", "app")}
    for name, directory in dirs.items():
        _install(old, [name], directory, ca=old_ca)

    ok = 0
    failures: list[BaseException] = []
    goal: list[tuple[int, trio.Event]] = []

    async def traffic(address: str, fresh: bool) -> None:
        # One long-lived connection, or a new connection (a new TLS handshake) per request.
        nonlocal ok
        i = 0
        async with open_client(
            [address], tls=TLSConfig.from_dir(dirs["app"], "app"), request_timeout=PATIENT
        ) as client:
            while True:
                i += 1
                try:
                    if fresh:
                        tls = TLSConfig.from_dir(dirs["app"], "app")
                        async with open_client([address], tls=tls, request_timeout=PATIENT) as once:
                            await once.put(f"f{i % 50}", i)
                    else:
                        await client.put(f"k{i % 50}", i)
                        await client.get(f"k{i % 50}")
                    ok += 1
                    if goal and ok >= goal[0][0]:
                        goal.pop()[1].set()
                except Exception as exc:
                    failures.append(exc)
                await trio.sleep(0.005)

    async def progress(n: int) -> None:
        # Enough requests, on old and new connections alike, after each step.
        reached = trio.Event()
        goal.append((ok + n, reached))
        with trio.fail_after(PATIENT * 2):
            await reached.wait()

    async with (
        open_node(
            name="a",
            listen="127.0.0.1:0",
            config=FAST,
            kv=SLOW_REPLICAS,
            tls=TLSConfig.from_dir(dirs["a"], "a"),
        ) as a,
        open_node(
            name="b",
            listen="127.0.0.1:0",
            seeds=[a.address],
            config=FAST,
            kv=SLOW_REPLICAS,
            tls=TLSConfig.from_dir(dirs["b"], "b"),
        ) as b,
        trio.open_nursery() as nursery,
    ):
        with trio.fail_after(GUARD):
            await a.wait_until(lambda n: {m.name: m.status for m in n.members()}.get("b") == "up")
            await a.wait_ready()  # both have the partition table that includes b
            await b.wait_ready()
        for node in (a, b):
            nursery.start_soon(traffic, node.address, False)
            nursery.start_soon(traffic, node.address, True)
        await progress(40)
        # 1. Trust both CAs everywhere.
        for name, directory in dirs.items():
            _install(old, [name], directory, ca=old_ca + new_ca)
        a.reload_tls()
        b.reload_tls()
        await progress(40)
        # 2. Certificates of the new CA, peers first, then the client.
        for name in ("a", "b"):
            _install(new, [name], dirs[name])
        a.reload_tls()
        b.reload_tls()
        await progress(40)
        _install(new, ["app"], dirs["app"])
        await progress(40)
        # 3. Only the new CA.
        for directory in dirs.values():
            _install(new, [], directory, ca=new_ca)
        a.reload_tls()
        b.reload_tls()
        await progress(40)
        nursery.cancel_scope.cancel()
    assert failures == []
    # And the old CA is no longer trusted.
    async with open_node(
        name="a", listen="127.0.0.1:0", tls=TLSConfig.from_dir(dirs["a"], "a")
    ) as c:
        _install(old, ["app"], tmp_path / "stale", ca=old_ca)
        async with open_client(
            [c.address], tls=TLSConfig.from_dir(tmp_path / "stale", "app")
        ) as stale:
            with trio.fail_after(GUARD), pytest.raises(HandshakeError, match="refused"):
                await stale.members()
