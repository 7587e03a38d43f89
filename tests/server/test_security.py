"""TLS, mutual TLS and bearer-token permissions, end to end through the SDK and the CLI, with
real certificates made for the test: a CA, a server certificate for localhost/127.0.0.1, a client
certificate from the CA, and a client certificate from another CA that must be refused."""

from __future__ import annotations

import asyncio
import datetime
import importlib
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import statekeeper as sk
from statekeeper._cli import main as cli
from statekeeper_server.app.config import Config
from statekeeper_server.app.security import ConfigError, load_tokens
from statekeeper_server.entrypoints.grpc.auth import (
    PERMISSIONS,
    AuthInterceptor,
    Permission,
    TokenTable,
    required_permission,
)
from tests.conftest import ORDER
from tests.support import ServerProcess

# -- certificates ----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
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
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("statekeeper test CA", ca_key, None, ca=True)
    _write(d, "ca", ca, ca_key)
    issuer = (ca.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    server = _cert("localhost", server_key, issuer, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans)
    _write(d, "server", server, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("worker-1", client_key, issuer, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(d, "client", client, client_key)
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, ca=True)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert(
        "intruder", rogue_key, (rogue_ca.subject, rogue_ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    _write(d, "rogue", rogue, rogue_key)
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "rogue.pem",
        d / "rogue.key",
    )


# -- servers -----------------------------------------------------------------------------------------

READ, WRITE, ADMIN = "r-" + "a" * 30, "w-" + "b" * 30, "adm-" + "c" * 28


def _port(proc: ServerProcess) -> str:
    return proc.address.rpartition(":")[2]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("tls")
    proc = ServerProcess(
        d / "data", "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)
    ).start()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    """Mutual TLS, and tokens on top."""
    d = tmp_path_factory.mktemp("mtls")
    proc = ServerProcess(
        d / "data",
        "--tls-cert-file",
        str(pki.server_cert),
        "--tls-key-file",
        str(pki.server_key),
        "--tls-client-ca-file",
        str(pki.ca),
        env={"STATEKEEPER_TOKENS": f"{ADMIN} admin ops"},
    ).start()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Tokens from a JSON file and from the environment together; no TLS."""
    d = tmp_path_factory.mktemp("tokens")
    tokens = d / "tokens.json"
    tokens.write_text(json.dumps([{"token": READ, "permissions": ["read"], "name": "dashboards"}]))
    proc = ServerProcess(
        d / "data",
        "--tokens-file",
        str(tokens),
        env={"STATEKEEPER_TOKENS": f"{WRITE} read,write workers; {ADMIN} admin ops"},
    ).start()
    with sk.SyncClient.connect(proc.address, token=ADMIN) as admin:
        admin.register_machine_type(ORDER)
    yield proc
    proc.terminate()


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


# -- TLS -----------------------------------------------------------------------------------------------


def test_tls_end_to_end_through_the_sdk(tls_server: ServerProcess, pki: Pki) -> None:
    with sk.SyncClient.connect(f"localhost:{_port(tls_server)}", tls_ca=pki.ca) as client:
        client.register_machine_type(ORDER)
        root = client.create_root("order", "tls-1", b"{}")
        assert client.transition(root, "pay").node.state == "paid"

    async def over_async() -> str:
        # The CA as bytes, and the certificate's IP address SAN instead of its DNS name.
        creds = sk.tls_credentials(ca=pki.ca.read_bytes())
        async with await sk.Client.connect(tls_server.address, credentials=creds) as client:
            return (await client.get_node("tls-1")).state

    assert asyncio.run(over_async()) == "paid"


def test_tls_refuses_plaintext_and_an_unknown_ca(tls_server: ServerProcess, pki: Pki) -> None:
    target = f"localhost:{_port(tls_server)}"
    with (
        sk.SyncClient.connect(target, wait_ready=None, timeout=5) as plain,
        pytest.raises(sk.UnavailableError),
    ):
        plain.get_node("tls-1")
    with (
        sk.SyncClient.connect(target, tls_ca=pki.rogue_cert, wait_ready=None, timeout=5) as wrong,
        pytest.raises(sk.UnavailableError),
    ):
        wrong.get_node("tls-1")
    with pytest.raises(ConnectionError):
        sk.SyncClient.connect(target, wait_ready=1.0)


def test_tls_health_without_credentials(tls_server: ServerProcess, pki: Pki) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{_port(tls_server)}", creds) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_mtls_accepts_a_client_certificate_from_the_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    target = f"localhost:{_port(mtls_server)}"
    with sk.SyncClient.connect(
        target, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key, token=ADMIN
    ) as client:
        client.register_machine_type(ORDER)
        assert client.create_root("order", "mtls-1").state == "new"


def test_mtls_refuses_clients_without_a_valid_certificate(mtls_server: ServerProcess, pki: Pki) -> None:
    target = f"localhost:{_port(mtls_server)}"
    attempts: list[dict[str, Any]] = [
        {"tls_ca": pki.ca},  # no client certificate
        {"tls_ca": pki.ca, "tls_cert": pki.rogue_cert, "tls_key": pki.rogue_key},  # another CA's
    ]
    for kwargs in attempts:
        with (
            sk.SyncClient.connect(target, token=ADMIN, wait_ready=None, timeout=5, **kwargs) as client,
            pytest.raises(sk.UnavailableError),
        ):
            client.list_machine_types()


def test_cli_over_mtls_with_a_token(
    mtls_server: ServerProcess, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"localhost:{_port(mtls_server)}"
    flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    assert cli(["types", "list", "--server", target, "--token", ADMIN, "--json", *flags]) == 0
    assert "order" in {t["name"] for t in json.loads(capsys.readouterr().out)}
    # The same from the environment; without the token the server says why.
    monkeypatch.setenv("STATEKEEPER_TLS_CA", str(pki.ca))
    monkeypatch.setenv("STATEKEEPER_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("STATEKEEPER_TLS_KEY", str(pki.client_key))
    assert cli(["types", "list", "--server", target]) == 1
    assert "UNAUTHENTICATED BEARER_TOKEN_REQUIRED" in capsys.readouterr().err
    monkeypatch.setenv("STATEKEEPER_TOKEN", ADMIN)
    assert cli(["types", "show", "order", "--server", target]) == 0
    assert "initial:  new" in capsys.readouterr().out


# -- tokens ----------------------------------------------------------------------------------------------


def _details(e: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(e.trailing_metadata() or ())["grpc-status-details-bin"]  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_no_token_or_an_unknown_one_is_unauthenticated(token_server: ServerProcess) -> None:
    with (
        sk.SyncClient.connect(token_server.address) as anonymous,
        pytest.raises(sk.UnauthenticatedError) as e,
    ):
        anonymous.list_machine_types()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and e.value.reason == "BEARER_TOKEN_REQUIRED"
    with (
        sk.SyncClient.connect(token_server.address, token="not-a-token") as bad,
        pytest.raises(sk.UnauthenticatedError) as e,
    ):
        bad.get_node("anything")
    assert e.value.reason == "TOKEN_INVALID"
    # A rich status: google.rpc.Status with an ErrorInfo in the trailers.
    with grpc.insecure_channel(token_server.address) as channel:
        call = channel.unary_unary("/statekeeper.v1.NodeService/GetNode")
        with pytest.raises(grpc.RpcError) as raw:
            call(b"", timeout=5, metadata=(("authorization", "Basic dXNlcjpwYXNz"),))
        info = _details(raw.value)
        assert (info.reason, info.domain) == ("BEARER_TOKEN_REQUIRED", "statekeeper.v1")


def test_read_token_reads_but_cannot_write(token_server: ServerProcess) -> None:
    with sk.SyncClient.connect(token_server.address, token=WRITE) as writer:
        writer.create_root("order", "perm-r")
    with sk.SyncClient.connect(token_server.address, token=READ) as reader:
        assert reader.get_node("perm-r").state == "new"
        assert [n.ref.root_id for n in reader.walk("perm-r")] == ["perm-r"]
        assert "order" in {t.name for t in reader.list_machine_types()}
        assert reader.render_diagram("order").startswith("stateDiagram")
        with pytest.raises(sk.PermissionDeniedError) as e:
            reader.transition("perm-r", "pay")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.reason == "INSUFFICIENT_PERMISSION"
        assert e.value.metadata["required_permission"] == "write"
        assert e.value.metadata["granted_permission"] == "read"
        with pytest.raises(sk.PermissionDeniedError):
            reader.create_root("order", "perm-r2")
        with pytest.raises(sk.PermissionDeniedError):
            reader.register_machine_type(ORDER)
        with pytest.raises(sk.PermissionDeniedError):
            reader.execute(sk.Batch().create_root("order", "perm-r3"))
        assert reader.get_node("perm-r").transition_count == 0


def test_write_and_admin_tokens(token_server: ServerProcess) -> None:
    with sk.SyncClient.connect(token_server.address, token=WRITE) as writer:
        root = writer.create_root("order", "perm-w")
        assert writer.transition(root, "pay").node.state == "paid"
        writer.execute(sk.Batch().create_root("order", "perm-w2"))
        assert writer.get_node("perm-w").state == "paid"
    with sk.SyncClient.connect(token_server.address, token=ADMIN) as admin:
        admin.register_machine_type(ORDER)
        assert admin.transition("perm-w", "ship").node.state == "shipped"
        admin.delete_node("perm-w2")
        assert admin.get_node("perm-w").terminal


def test_health_and_reflection_need_no_token(token_server: ServerProcess) -> None:
    assert token_server.health() == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(token_server.address) as channel:
        assert "statekeeper.v1.NodeService" in set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_unknown_methods_stay_unimplemented(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary("/statekeeper.v1.NodeService/NoSuchMethod")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


# -- the permission rule -----------------------------------------------------------------------------------


def _api_methods() -> list[str]:
    """Every method of every service in the generated API (statekeeper.v1.*_pb2)."""
    import pkgutil

    import statekeeper.v1

    found = []
    for info in pkgutil.iter_modules(statekeeper.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"statekeeper.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            found += [f"/{service.full_name}/{method.name}" for method in service.methods]
    return found


def test_every_rpc_of_the_api_has_an_explicit_permission() -> None:
    methods = _api_methods()
    assert len(methods) >= 45  # the six services are all found
    missing = [
        m
        for m in methods
        if m.lstrip("/").partition("/")[2] not in PERMISSIONS.get(m[1:].partition("/")[0], {})
    ]
    assert not missing, f"add these methods to PERMISSIONS (entrypoints/grpc/auth.py): {missing}"
    # ... and the table names no method that does not exist (a renamed RPC left behind).
    listed = {f"/{service}/{name}" for service, names in PERMISSIONS.items() for name in names}
    assert listed <= set(methods), listed - set(methods)


def test_permissions_of_the_api() -> None:
    readers = {
        "MachineTypeService": ["GetMachineType", "ListMachineTypes", "RenderMachineTypeDiagram"],
        "NodeService": ["GetNode", "ListChildren", "WalkTree", "ListNodes"],
        "TaskService": ["GetTask", "ListTasks", "ListDeadLetters", "ListTimers"],
        "SavepointService": ["GetRun", "ListRuns", "LoadSavepoint", "ListSavepoints", "ListTreeSnapshots"],
        "EventService": ["Watch", "ListEvents", "GetConsumer", "ListConsumers"],
        "AdminService": ["GetServerInfo"],
    }
    read = {f"/statekeeper.v1.{s}/{m}" for s, names in readers.items() for m in names}
    for method in _api_methods():
        need = required_permission(method)
        if method in read:
            assert need is Permission.READ, method
        elif method.startswith("/statekeeper.v1.AdminService/"):
            assert need is Permission.ADMIN, method
        elif method in read:
            assert need is Permission.READ, method
        else:
            assert need is Permission.WRITE, method
    # Consuming changes a consumer's state: a reader must not take or acknowledge deliveries.
    assert required_permission("/statekeeper.v1.EventService/Subscribe") is Permission.WRITE
    assert required_permission("/statekeeper.v1.EventService/Ack") is Permission.WRITE
    assert required_permission("/statekeeper.v1.TaskService/LeaseTasks") is Permission.WRITE


def test_a_method_without_an_entry_needs_admin() -> None:
    assert required_permission("/statekeeper.v1.BackupService/ListBackups") is Permission.ADMIN
    assert required_permission("/statekeeper.v1.AdminService/GetStats") is Permission.ADMIN
    assert required_permission("/statekeeper.v1.NodeService/Compact") is Permission.ADMIN
    assert required_permission("/statekeeper.v1.NodeService/GetNodeSecrets") is Permission.ADMIN
    assert required_permission("/grpc.health.v1.Health/Watch") is Permission.NONE
    assert required_permission("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is (
        Permission.NONE
    )


def test_a_read_token_cannot_subscribe_or_ack(token_server: ServerProcess) -> None:
    """A reader acking a consumer's events would move its position past events its subscribers
    never saw; subscribing would take their deliveries. Both need write."""
    with sk.SyncClient.connect(token_server.address, token=WRITE) as writer:
        writer.create_consumer("perm-consumer", start="earliest")
        revision = writer.create_root("order", "perm-c").update_revision
        before = writer.get_consumer("perm-consumer")
    with sk.SyncClient.connect(token_server.address, token=READ) as reader:
        assert reader.get_consumer("perm-consumer").acked_revision == before.acked_revision
        with pytest.raises(sk.PermissionDeniedError) as e:
            reader.ack("perm-consumer", up_to_revision=revision)
        assert e.value.metadata["required_permission"] == "write"
        with pytest.raises(sk.PermissionDeniedError):
            next(iter(reader.subscribe("perm-consumer")))
    with sk.SyncClient.connect(token_server.address, token=WRITE) as writer:
        assert writer.get_consumer("perm-consumer").acked_revision == before.acked_revision
        writer.ack("perm-consumer", up_to_revision=revision)  # a writer may
        writer.delete_consumer("perm-consumer")


def test_token_table_and_configuration() -> None:
    table = TokenTable([("alpha", "a", Permission.READ), ("beta", "b", Permission.ADMIN)])
    assert table.lookup("beta") == table.grants()[1] and table.lookup("alph") is None
    cfg = Config(tokens="t1 read; t2 read,write svc # comment\n t3 admin")
    grants = {g.name: g.permission for g in load_tokens(cfg).grants()}
    assert grants["svc"] is Permission.WRITE and Permission.ADMIN in grants.values()
    assert len(load_tokens(Config())) == 0  # no tokens: auth off
    for bad in ("t1 superuser", "t1", "t1 read; t1 write"):
        with pytest.raises(ConfigError):
            load_tokens(Config(tokens=bad))


def test_a_bad_token_configuration_stops_the_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "statekeeper_server",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "127.0.0.1:0",
        ],
        env={"STATEKEEPER_TOKENS": "t0k3n superuser", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "unknown permission 'superuser'" in result.stderr
    assert not (tmp_path / "d").exists()  # refused before the store was opened


# -- the interceptor on streaming and admin-only methods (in process) ------------------------------------------


def test_interceptor_guards_streaming_and_admin_methods() -> None:
    async def scenario() -> list[tuple[str, str]]:
        async def purge(request: bytes, context: Any) -> bytes:
            return b"purged"

        async def watch_things(request: bytes, context: Any) -> Any:
            for item in (b"a", b"b"):
                yield item

        handlers = {
            "test.v1.AdminService": {"Purge": grpc.unary_unary_rpc_method_handler(purge)},
            "test.v1.ThingService": {"WatchThings": grpc.unary_stream_rpc_method_handler(watch_things)},
        }
        tokens = TokenTable(
            [(READ, "r", Permission.READ), (WRITE, "w", Permission.WRITE), (ADMIN, "a", Permission.ADMIN)]
        )
        seen: list[tuple[str, str]] = []
        permissions = {"test.v1.ThingService": {"WatchThings": Permission.READ}}  # Purge: no entry
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(tokens, [lambda m, c, s: seen.append((m, c))], permissions)]
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(name, h) for name, h in handlers.items()]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        results: list[tuple[str, str]] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                purge_call = channel.unary_unary("/test.v1.AdminService/Purge")
                watch_call = channel.unary_stream("/test.v1.ThingService/WatchThings")
                for token in (None, READ, WRITE, ADMIN):
                    md = (("authorization", f"Bearer {token}"),) if token else ()
                    for label, run in (
                        ("purge", lambda md=md: purge_call(b"", metadata=md, timeout=5)),
                        ("watch", lambda md=md: _collect(watch_call(b"", metadata=md, timeout=5))),
                    ):
                        try:
                            await run()
                            results.append((label, "OK"))
                        except grpc.aio.AioRpcError as e:
                            results.append((label, e.code().name))
        finally:
            await server.stop(0)
        assert ("/test.v1.AdminService/Purge", "PERMISSION_DENIED") in seen
        return results

    assert asyncio.run(scenario()) == [
        ("purge", "UNAUTHENTICATED"),
        ("watch", "UNAUTHENTICATED"),
        ("purge", "PERMISSION_DENIED"),
        ("watch", "OK"),
        ("purge", "PERMISSION_DENIED"),
        ("watch", "OK"),
        ("purge", "OK"),
        ("watch", "OK"),
    ]


async def _collect(call: Any) -> list[bytes]:
    return [item async for item in call]
