"""The e-mail notifier against a real aiosmtpd SMTP server on 127.0.0.1.

The main server requires STARTTLS (a self-signed certificate for 127.0.0.1/localhost made
here) and AUTH over TLS, as a real relay would.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarm_maint.alerts.notifiers import Batch, NotifyError, build_notifier
from swarm_maint.alerts.notifiers.email import EmailNotifier
from swarm_maint.alerts.outbox import ZERO_TIME
from swarm_maint.config import ReceiverConfig
from tests.live_server import free_port

USER, PASSWORD = "alerts", "s3cret pass"
FROM, TO = "swarm@gpu.example", ["ops@example.org", "oncall@example.org"]


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Mailbox:
    """What the SMTP server saw: accepted messages and the state of their sessions."""

    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope, msg))
        # the TLS layer of this connection, whether from STARTTLS or implicit TLS
        transport = server.transport
        self.tls.append(transport is not None
                        and transport.get_extra_info("ssl_object") is not None)
        return "250 OK"

    def authenticator(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode()))
        if ok:
            self.logins.append(USER)
        return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    port: int
    mailbox: Mailbox
    ca: Path


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {n: make_cert(tmp_path, n) for n in ("server", "other")}


@contextmanager
def smtp_server(mailbox: Mailbox, **kwargs: Any) -> Iterator[int]:
    port = free_port()
    # server_hostname: aiosmtpd would otherwise call socket.getfqdn(), which can block on DNS
    controller = Controller(mailbox, hostname="127.0.0.1", port=port,
                            server_hostname="smtp.test", **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def secure_smtp(certs: dict[str, tuple[Path, Path]]) -> Iterator[SmtpServer]:
    """STARTTLS required, AUTH required (only over TLS), one valid user."""
    mailbox = Mailbox()
    cert, key = certs["server"]
    with smtp_server(mailbox, tls_context=server_context(cert, key), require_starttls=True,
                     auth_required=True, auth_require_tls=True,
                     authenticator=mailbox.authenticator) as port:
        yield SmtpServer(port, mailbox, cert)


@pytest.fixture
def plain_smtp(certs: dict[str, tuple[Path, Path]]) -> Iterator[SmtpServer]:
    """No TLS offered, no AUTH: a local relay."""
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        yield SmtpServer(port, mailbox, certs["server"][0])


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n")  # as `echo secret > file` writes it
    return path


def batch(*statuses: str) -> Batch:
    alerts = []
    for i, status in enumerate(statuses):
        alerts.append({
            "status": status,
            "labels": {"alertname": "GpuLost", "node": "gpu-node-17", "gpu": str(i),
                       "severity": "critical"},
            "annotations": {"summary": f"GPU {i} fell off the bus",
                            "description": "nvidia-smi no longer lists it.\nXid 79 logged."},
            "startsAt": "2027-01-15T08:00:00.000Z",
            "endsAt": "2027-01-15T08:30:00.000Z" if status == "resolved" else ZERO_TIME,
            "fingerprint": f"fp{i}",
        })
    return Batch("ops", alerts, {"alertname": "GpuLost"}, '{}:{alertname="GpuLost"}')


def text(msg: EmailMessage) -> str:
    """The body with SMTP's CRLF line ends turned back into newlines."""
    content = msg.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def notifier(server: SmtpServer, **kw: Any) -> EmailNotifier:
    args: dict[str, Any] = {"from_address": FROM, "to": TO, "timeout": 5.0, "name": "mail"}
    args.update(kw)
    return EmailNotifier("127.0.0.1", server.port, **args)


def test_build_notifier_loads_the_email_entry_point(tmp_path: Path) -> None:
    n = build_notifier(ReceiverConfig(
        name="mail", type="email", smtp_host="smtp.example.org", smtp_port=2525,
        security="tls", username=USER, password_file=str(tmp_path / "pw"),
        ca_file=str(tmp_path / "ca.pem"), from_address=FROM, to=TO, timeout=3.0))
    assert isinstance(n, EmailNotifier)
    assert (n.name, n.host, n.port, n.security, n.username, n.from_address, n.to,
            n.timeout) == ("mail", "smtp.example.org", 2525, "tls", USER, FROM, TO, 3.0)
    assert n.ca_file == str(tmp_path / "ca.pem")


def test_starttls_auth_delivers_the_message(secure_smtp: SmtpServer,
                                            password_file: Path) -> None:
    n = notifier(secure_smtp, security="starttls", username=USER,
                 password_file=str(password_file), ca_file=str(secure_smtp.ca))
    n.send(batch("firing", "firing"))

    box = secure_smtp.mailbox
    [(envelope, msg)] = box.messages
    assert box.tls == [True]
    assert box.logins == [USER]  # the trailing newline of the file was not sent
    assert envelope.mail_from == FROM
    assert envelope.rcpt_tos == TO
    assert msg["From"] == FROM
    assert [a.addr_spec for a in msg["To"].addresses] == TO
    assert msg["Subject"] == "[FIRING:2] GpuLost (gpu-node-17)"
    assert abs(msg["Date"].datetime.timestamp() - time.time()) < 60
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@gpu.example>")
    body = text(msg)
    assert body.startswith("[FIRING:2] GpuLost (gpu-node-17)\nReceiver: ops\n")
    assert "Firing (2):" in body and "Resolved" not in body
    for i in (0, 1):
        assert f"gpu = {i}" in body
        assert f"summary = GPU {i} fell off the bus" in body
    assert body.count("status: firing") == 2
    assert body.count("node = gpu-node-17") == 2
    assert body.count("startsAt: 2027-01-15T08:00:00.000Z") == 2
    assert "endsAt" not in body  # a firing alert has no end yet
    assert "description = nvidia-smi no longer lists it.\n" in body
    assert "Xid 79 logged." in body


def test_resolved_batch_subject_and_end_time(secure_smtp: SmtpServer,
                                             password_file: Path) -> None:
    n = notifier(secure_smtp, username=USER, password_file=str(password_file),
                 ca_file=str(secure_smtp.ca))
    n.send(batch("resolved"))
    [(_, msg)] = secure_smtp.mailbox.messages
    assert msg["Subject"] == "[RESOLVED] GpuLost (gpu-node-17)"
    body = text(msg)
    assert "Resolved (1):" in body and "Firing" not in body
    assert "status: resolved" in body
    assert "endsAt: 2027-01-15T08:30:00.000Z" in body


def test_mixed_batch_counts_only_firing_alerts(secure_smtp: SmtpServer,
                                               password_file: Path) -> None:
    n = notifier(secure_smtp, username=USER, password_file=str(password_file),
                 ca_file=str(secure_smtp.ca))
    n.send(batch("firing", "resolved", "firing"))
    [(_, msg)] = secure_smtp.mailbox.messages
    assert msg["Subject"] == "[FIRING:2] GpuLost (gpu-node-17)"
    body = text(msg)
    assert body.index("Firing (2):") < body.index("Resolved (1):")


def test_label_values_with_newlines_keep_the_subject_one_line(plain_smtp: SmtpServer) -> None:
    b = batch("firing")
    b.alerts[0]["labels"]["node"] = "gpu-node-17\r\nBcc: evil@example.org"
    notifier(plain_smtp, security="none").send(b)
    [(envelope, msg)] = plain_smtp.mailbox.messages
    assert msg["Subject"] == "[FIRING:1] GpuLost (gpu-node-17 Bcc: evil@example.org)"
    assert msg["Bcc"] is None
    assert envelope.rcpt_tos == TO


def test_wrong_password_is_an_authentication_error(secure_smtp: SmtpServer,
                                                   tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    n = notifier(secure_smtp, username=USER, password_file=str(wrong),
                 ca_file=str(secure_smtp.ca))
    with pytest.raises(NotifyError) as err:
        n.send(batch("firing"))
    msg = str(err.value)
    assert msg.startswith(f"smtp 127.0.0.1:{secure_smtp.port}: authentication failed: 535")
    assert "\n" not in msg
    assert secure_smtp.mailbox.messages == []


def test_certificate_from_another_ca_fails_starttls(
    secure_smtp: SmtpServer, password_file: Path, certs: dict[str, tuple[Path, Path]]
) -> None:
    n = notifier(secure_smtp, username=USER, password_file=str(password_file),
                 ca_file=str(certs["other"][0]))
    with pytest.raises(NotifyError) as err:
        n.send(batch("firing"))
    msg = str(err.value)
    assert msg.startswith(f"smtp 127.0.0.1:{secure_smtp.port}: STARTTLS failed: ")
    assert "certificate verify failed" in msg and "\n" not in msg
    assert secure_smtp.mailbox.messages == []


def test_system_cas_do_not_trust_a_self_signed_certificate(secure_smtp: SmtpServer,
                                                           password_file: Path) -> None:
    n = notifier(secure_smtp, username=USER, password_file=str(password_file))
    with pytest.raises(NotifyError, match=r"STARTTLS failed: .*certificate verify failed"):
        n.send(batch("firing"))


def test_unreadable_password_file_names_the_file(secure_smtp: SmtpServer,
                                                 tmp_path: Path) -> None:
    missing = tmp_path / "no-such-password"
    n = notifier(secure_smtp, username=USER, password_file=str(missing),
                 ca_file=str(secure_smtp.ca))
    with pytest.raises(NotifyError, match=re.escape(f"password_file {missing}: FileNotFoundError")):
        n.send(batch("firing"))


def test_password_is_read_at_each_send(secure_smtp: SmtpServer, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("old")
    n = notifier(secure_smtp, username=USER, password_file=str(pw),
                 ca_file=str(secure_smtp.ca))
    with pytest.raises(NotifyError, match="authentication failed"):
        n.send(batch("firing"))
    pw.write_text(PASSWORD)  # rotated, no trailing newline this time
    n.send(batch("firing"))
    assert len(secure_smtp.mailbox.messages) == 1


def test_server_down_is_a_connect_error() -> None:
    port = free_port()
    n = EmailNotifier("127.0.0.1", port, from_address=FROM, to=TO, security="none",
                      timeout=2.0)
    with pytest.raises(NotifyError) as err:
        n.send(batch("firing"))
    assert str(err.value).startswith(f"smtp 127.0.0.1:{port}: connect failed: "
                                     "ConnectionRefusedError")


def test_security_none_delivers_to_a_plain_server(plain_smtp: SmtpServer) -> None:
    n = notifier(plain_smtp, security="none", to=["ops@example.org"])
    n.send(batch("resolved"))
    [(envelope, msg)] = plain_smtp.mailbox.messages
    assert plain_smtp.mailbox.tls == [False]
    assert envelope.rcpt_tos == ["ops@example.org"]
    assert msg["To"] == "ops@example.org"
    assert msg["Subject"] == "[RESOLVED] GpuLost (gpu-node-17)"


def test_starttls_never_falls_back_to_plain_text(plain_smtp: SmtpServer) -> None:
    n = notifier(plain_smtp, security="starttls", ca_file=str(plain_smtp.ca))
    with pytest.raises(NotifyError, match=r"STARTTLS failed: .*STARTTLS extension not supported"):
        n.send(batch("firing"))
    assert plain_smtp.mailbox.messages == []


def test_implicit_tls_delivers(certs: dict[str, tuple[Path, Path]], password_file: Path) -> None:
    mailbox = Mailbox()
    cert, key = certs["server"]
    # aiosmtpd only counts STARTTLS as TLS for AUTH (it would not offer AUTH on an
    # implicit-TLS connection), so AUTH is offered here without requiring TLS; the
    # connection is TLS all the same (asserted below).
    with smtp_server(mailbox, ssl_context=server_context(cert, key), auth_require_tls=False,
                     authenticator=mailbox.authenticator) as port:
        n = EmailNotifier("127.0.0.1", port, from_address=FROM, to=TO, security="tls",
                          username=USER, password_file=str(password_file),
                          ca_file=str(cert), timeout=5.0)
        n.send(batch("firing"))
    [(_, msg)] = mailbox.messages
    assert mailbox.tls == [True]
    assert mailbox.logins == [USER]
    assert msg["Subject"] == "[FIRING:1] GpuLost (gpu-node-17)"
