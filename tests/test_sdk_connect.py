"""Connection problems are reported at once, as ConnectionFailedError with a reason saying what
went wrong and a hint saying how to fix it: nothing listening, TLS on one side only, an untrusted
server certificate, a missing or refused client certificate. Real servers, real certificates."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import statekeeper as sk
from statekeeper._cli import main as cli
from tests.server.test_security import Pki, mtls_server, pki, tls_server  # noqa: F401  (fixtures)
from tests.support import ServerProcess

FAST = 5.0  # seconds; the causes below are known within milliseconds, this is only a safety margin


def refused(target: str, **kwargs: Any) -> sk.ConnectionFailedError:
    started = time.monotonic()
    with pytest.raises(sk.ConnectionFailedError) as failure:
        sk.SyncClient.connect(target, **kwargs)
    assert time.monotonic() - started < FAST
    return failure.value


def test_nothing_listening() -> None:
    e = refused("127.0.0.1:1")
    assert e.reason == "CONNECTION_REFUSED" and "nothing is listening" in str(e)
    assert "statekeeper serve" in e.hint
    # one exception for every way to catch it
    assert isinstance(e, sk.UnavailableError) and isinstance(e, sk.StatekeeperError)
    assert isinstance(e, ConnectionError)


def test_plaintext_client_against_a_tls_server(tls_server: ServerProcess) -> None:  # noqa: F811
    e = refused(tls_server.address)
    assert e.reason == "TLS_REQUIRED" and "it speaks TLS" in str(e) and "tls_ca" in e.hint


def test_tls_client_against_a_plaintext_server(server: ServerProcess, pki: Pki) -> None:  # noqa: F811
    e = refused(server.address, tls_ca=pki.ca)
    assert e.reason == "TLS_NOT_OFFERED" and "does not speak TLS" in str(e)


def test_untrusted_server_certificate(tls_server: ServerProcess, pki: Pki) -> None:  # noqa: F811
    e = refused(tls_server.address, tls_ca=pki.rogue_cert)
    assert e.reason == "SERVER_CERTIFICATE_UNTRUSTED" and "tls_ca" in e.hint


def test_missing_and_refused_client_certificates(mtls_server: ServerProcess, pki: Pki) -> None:  # noqa: F811
    e = refused(mtls_server.address, tls_ca=pki.ca)
    assert e.reason == "CLIENT_CERTIFICATE_REQUIRED" and "tls_cert" in e.hint
    e = refused(mtls_server.address, tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key)
    assert e.reason == "CLIENT_CERTIFICATE_REJECTED"


def test_a_call_without_the_connect_check_says_the_same(tls_server: ServerProcess) -> None:  # noqa: F811
    started = time.monotonic()
    with (
        sk.SyncClient.connect(tls_server.address, wait_ready=None) as client,
        pytest.raises(sk.ConnectionFailedError) as failure,
    ):
        client.list_machine_types()  # a read: retried only while the cause may pass
    assert failure.value.reason == "TLS_REQUIRED" and time.monotonic() - started < FAST


def test_no_answer_is_a_timeout() -> None:
    with socket.socket() as silent:  # accepts connections, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        e = refused(f"127.0.0.1:{silent.getsockname()[1]}", wait_ready=0.5)
    assert e.reason == "CONNECT_TIMEOUT"


def test_wait_for_server_waits_for_one_that_is_starting(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = ServerProcess(tmp_path / "data", "--listen", f"127.0.0.1:{port}")
    starter = threading.Timer(0.5, proc.start)
    starter.start()
    try:
        with sk.SyncClient.connect(f"127.0.0.1:{port}", wait_for_server=True, wait_ready=60) as client:
            assert client.list_machine_types() == []
    finally:
        starter.join()
        proc.terminate()


def test_cli_prints_the_cause_and_the_fix(
    tls_server: ServerProcess,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(["types", "list", "--server", tls_server.address]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot connect to {tls_server.address}: the server closed")
    assert "--tls-ca" in err and "Traceback" not in err
