"""Sends alert notifications as plain-text e-mail over SMTP.

One message per batch, From ``from_address`` to every address of ``to``::

    Subject: [FIRING:2] GpuLost (gpu-node-17)        ([RESOLVED] ... when none fires)
    Date: <now>, Message-ID: <...@from-domain>, Auto-Submitted: auto-generated

    [FIRING:2] GpuLost (gpu-node-17)
    Receiver: ops

    Firing (2):

    1. GpuLost
       status: firing
       startsAt: 2027-01-15T08:00:00.000Z
       labels:
         alertname = GpuLost
         ...
       annotations:
         summary = ...

``security``: "starttls" (EHLO, STARTTLS, EHLO again; a server without STARTTLS is an
error, never a silent plain-text fallback), "tls" (implicit TLS, usually port 465) or
"none". Certificates are verified against ``ca_file`` when set, else the system's CAs.
With ``username`` set, AUTH uses the password read from ``password_file`` at each send,
so a rotated password needs no restart.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any

from ...hostname import local_hostname
from ..outbox import ZERO_TIME
from . import Batch, NotifyError, one_line
from .slack import batch_title

if TYPE_CHECKING:
    from ...config import ReceiverConfig

__all__ = ["EmailNotifier", "build_message", "create"]


def _alert_text(n: int, alert: dict[str, Any]) -> list[str]:
    labels: dict[str, str] = alert.get("labels", {})
    annotations: dict[str, str] = alert.get("annotations", {})
    lines = [f"{n}. {labels.get('alertname', 'alert')}",
             f"   status: {alert['status']}",
             f"   startsAt: {alert['startsAt']}"]
    if alert.get("endsAt") not in (None, "", ZERO_TIME):
        lines.append(f"   endsAt: {alert['endsAt']}")
    lines.append("   labels:")
    lines += [f"     {k} = {v}" for k, v in sorted(labels.items())]
    if annotations:
        lines.append("   annotations:")
        for k, v in sorted(annotations.items()):
            first, *rest = str(v).splitlines() or [""]
            lines.append(f"     {k} = {first}")
            lines += [f"       {line}" for line in rest]
    return lines


def _body(batch: Batch, title: str) -> str:
    lines = [title, f"Receiver: {batch.receiver}"]
    n = 0
    for status, heading in (("firing", "Firing"), ("resolved", "Resolved")):
        alerts = [a for a in batch.alerts if a["status"] == status]
        if not alerts:
            continue
        lines += ["", f"{heading} ({len(alerts)}):"]
        for a in alerts:
            n += 1
            lines += ["", *_alert_text(n, a)]
    return "\n".join(lines) + "\n"


def build_message(batch: Batch, from_address: str, to: list[str]) -> EmailMessage:
    """The e-mail for ``batch``."""
    title = batch_title(batch)
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = ", ".join(to)
    msg["Subject"] = title
    msg["Date"] = formatdate(usegmt=True)
    # the sender's domain, not getfqdn(): that can block on DNS for seconds
    msg["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2] or "localhost")
    # RFC 3834: vacation responders and the like must not answer it
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_body(batch, title))
    return msg


def _smtp_error(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        first = str(text).strip().splitlines()
        return f"{exc.smtp_code} {first[0] if first else ''}".strip()
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "recipients refused: " + ", ".join(
            f"{addr}: {code} {msg.decode('utf-8', 'replace') if isinstance(msg, bytes) else msg}"
            for addr, (code, msg) in exc.recipients.items()
        )
    return one_line(exc)


class EmailNotifier:
    """Sends each batch as one e-mail through the SMTP server ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        from_address: str,
        to: list[str],
        security: str = "starttls",
        username: str = "",
        password_file: str = "",
        ca_file: str = "",
        timeout: float = 5.0,
        name: str = "email",
    ) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ValueError(f"security must be starttls, tls or none, not {security!r}")
        self.host = host
        self.port = port
        self.server = f"smtp {host}:{port}"
        self.from_address = from_address
        self.to = list(to)
        self.security = security
        self.username = username
        self.password_file = password_file
        self.ca_file = ca_file
        self.timeout = timeout
        self.name = name

    def _password(self) -> str:
        try:
            with open(self.password_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeError) as exc:
            raise NotifyError(f"{self.server}: cannot read password_file "
                              f"{self.password_file}: {one_line(exc)}") from None
        return text[:-1] if text.endswith("\n") else text

    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ValueError) as exc:
            raise NotifyError(f"{self.server}: cannot load ca_file {self.ca_file}: "
                              f"{one_line(exc)}") from None

    def send(self, batch: Batch) -> None:
        password = self._password() if self.username else ""
        context = self._context() if self.security != "none" else None
        try:
            msg = build_message(batch, self.from_address, self.to)
        except ValueError as exc:  # an address or header the email library refuses
            raise NotifyError(f"{self.server}: cannot build the message: {exc}") from None
        # Alertmanager greets with the plain host name as well; getfqdn() may block on DNS.
        local = local_hostname()
        step = "connect"
        smtp: smtplib.SMTP | None = None
        try:
            # The constructor connects (and sets the host name TLS verifies against);
            # smtplib closes the socket itself when that fails.
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(self.host, self.port, local_hostname=local,
                                        timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, local_hostname=local,
                                    timeout=self.timeout)
            step = "EHLO"
            smtp.ehlo()
            if self.security == "starttls":
                step = "STARTTLS"
                smtp.starttls(context=context)
                step = "EHLO"
                smtp.ehlo()
            if self.username:
                step = "authentication"
                smtp.login(self.username, password)
            step = "sending"
            smtp.send_message(msg, self.from_address, self.to)
            # The server has accepted the message: a failing QUIT must not make the
            # outbox send it again.
            with contextlib.suppress(OSError):
                smtp.quit()
        except (OSError, UnicodeError) as exc:  # smtplib and ssl errors are OSErrors
            detail = " ".join(_smtp_error(exc).split())  # one line, whatever the server said
            raise NotifyError(f"{self.server}: {step} failed: {detail}"[:500]) from None
        finally:
            # not ``with smtp``: its QUIT after a timeout would wait for another timeout
            if smtp is not None:
                smtp.close()


def create(cfg: ReceiverConfig) -> EmailNotifier:
    return EmailNotifier(cfg.smtp_host, cfg.smtp_port, from_address=cfg.from_address,
                         to=cfg.to, security=cfg.security, username=cfg.username,
                         password_file=cfg.password_file, ca_file=cfg.ca_file,
                         timeout=cfg.timeout, name=cfg.name)
