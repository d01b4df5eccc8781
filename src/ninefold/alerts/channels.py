"""Sending a notice to a channel, retried with a backoff.

- webhook: `POST url` with a JSON list of alerts in Alertmanager's v2 format
  (`labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`), so
  `http://alertmanager:9093/api/v2/alerts` as the URL lets an existing
  Alertmanager route them; any 2xx is a success.
- email: one message per notice over SMTP (aiosmtplib), with STARTTLS or TLS
  and a login when the spec says so; the password is read from its file or
  variable at each send, never kept in the spec.
- command: the program runs with the notice as JSON on its standard input and
  `NINEFOLD_ALERT_*` variables; exit 0 is a success.

`send` raises `ChannelError` (one line) when every try failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx

from ninefold.decide.alerts import Notice, ends_at_for_receiver
from ninefold.spec.alerts import ChannelSpec, CommandSpec, EmailSpec, WebhookSpec
from ninefold.supervisor.process import child_environment

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
OUTPUT_KEEP = 300
"""Characters of a failed command's output kept in the error."""


class ChannelError(Exception):
    """A notice that could not be sent: the last try's reason, one line."""


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_alert(notice: Notice, generator_url: str = "") -> dict[str, Any]:
    """One alert of Alertmanager's `POST /api/v2/alerts` body."""
    annotations = {"summary": notice.text, "value": notice.value, "notice": notice.kind}
    return {
        "labels": notice.labels,
        "annotations": annotations,
        "startsAt": _rfc3339(notice.starts_at),
        "endsAt": _rfc3339(ends_at_for_receiver(notice)),
        "generatorURL": generator_url,
    }


def subject_of(notice: Notice) -> str:
    status = {"firing": "FIRING", "repeat": "FIRING", "resolved": "RESOLVED", "healed": "HEALED"}
    return f"[{status[notice.kind]}:{notice.severity}] {notice.rule}: {notice.text}"


def body_of(notice: Notice, generator_url: str = "") -> str:
    lines = [
        notice.text,
        "",
        f"status:   {notice.status} ({notice.kind})",
        f"rule:     {notice.rule}",
        f"severity: {notice.severity}",
        f"since:    {_rfc3339(notice.starts_at)}",
    ]
    if notice.ends_at is not None:
        lines.append(f"ended:    {_rfc3339(notice.ends_at)}")
    if notice.value:
        lines.append(f"value:    {notice.value}")
    lines += ["", "labels:"] + [f"  {k}={v}" for k, v in sorted(notice.labels.items())]
    lines += ["", f"alert id: {notice.alert}"]
    if generator_url:
        lines.append(generator_url)
    return "\n".join(lines) + "\n"


async def send_webhook(spec: WebhookSpec, notice: Notice, generator_url: str = "") -> None:
    body = [alertmanager_alert(notice, generator_url)]
    headers = {"content-type": "application/json", **spec.headers}
    try:
        async with httpx.AsyncClient(timeout=spec.timeout) as client:
            response = await client.post(spec.url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ChannelError(f"POST {spec.url}: {str(exc) or type(exc).__name__}") from None
    if not response.is_success:
        text = " ".join(response.text.split())[:OUTPUT_KEEP]
        raise ChannelError(f"POST {spec.url}: {response.status_code} {text}".rstrip())


def smtp_password(spec: EmailSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """The SMTP password from its file (first line) or variable; None without a login."""
    if spec.password_file is not None:
        try:
            return Path(spec.password_file).read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            why = getattr(exc, "strerror", None) or "empty"
            raise ChannelError(f"password_file {spec.password_file}: {why}") from None
    if spec.password_env is not None:
        value = (os.environ if environ is None else environ).get(spec.password_env)
        if value is None:
            raise ChannelError(f"password_env {spec.password_env} is not set for the agent")
        return value
    return None


def email_message(spec: EmailSpec, notice: Notice, generator_url: str = "") -> EmailMessage:
    message = EmailMessage()
    message["From"] = spec.from_
    message["To"] = ", ".join(spec.to)
    message["Subject"] = subject_of(notice)
    message["Date"] = formatdate(notice.at, usegmt=True)
    message["Message-ID"] = make_msgid("ninefold")
    message["X-Ninefold-Alert"] = notice.alert
    message.set_content(body_of(notice, generator_url))
    return message


async def send_email(spec: EmailSpec, notice: Notice, generator_url: str = "") -> None:
    password = smtp_password(spec)
    try:
        await aiosmtplib.send(
            email_message(spec, notice, generator_url),
            hostname=spec.host,
            port=spec.port,
            use_tls=spec.tls,
            start_tls=spec.starttls,
            username=spec.username,
            password=password,
            timeout=spec.timeout,
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise ChannelError(f"SMTP {spec.host}:{spec.port}: {exc}") from None


async def send_command(spec: CommandSpec, notice: Notice, generator_url: str = "") -> None:
    env = child_environment({  # without the SMTP and restic passwords
        "NINEFOLD_ALERT_ID": notice.alert,
        "NINEFOLD_ALERT_STATUS": notice.status,
        "NINEFOLD_ALERT_NOTICE": notice.kind,
        "NINEFOLD_ALERT_RULE": notice.rule,
        "NINEFOLD_ALERT_SEVERITY": notice.severity,
        "NINEFOLD_ALERT_TEXT": notice.text,
        "NINEFOLD_ALERT_VALUE": notice.value,
    })  # fmt: skip
    data = json.dumps({**notice.model_dump(mode="json"), "generator_url": generator_url})
    try:
        process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise ChannelError(f"{spec.argv[0]}: {exc.strerror or exc}") from None
    try:
        output, _ = await asyncio.wait_for(process.communicate(data.encode()), spec.timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ChannelError(f"{spec.argv[0]}: still running after {spec.timeout:g}s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.shield(process.wait())
        raise
    if process.returncode != 0:
        tail = " ".join(output.decode(errors="replace").split())[-OUTPUT_KEEP:]
        raise ChannelError(f"{spec.argv[0]} exited with {process.returncode}: {tail}".rstrip())


Sleep = Callable[[float], Awaitable[None]]


async def send(
    channel: ChannelSpec,
    notice: Notice,
    generator_url: str = "",
    sleep: Sleep = asyncio.sleep,
) -> int:
    """Send `notice`, trying again after 1, 2, 4... s (at most 60) up to the
    channel's `retries`; returns the number of tries it took. Raises
    ChannelError with the last try's reason."""
    if channel.webhook is not None:
        spec: WebhookSpec | EmailSpec | CommandSpec = channel.webhook
    elif channel.email is not None:
        spec = channel.email
    else:
        assert channel.command is not None
        spec = channel.command
    delay = BACKOFF_FIRST
    tries = 0
    while True:
        tries += 1
        try:
            if isinstance(spec, WebhookSpec):
                await send_webhook(spec, notice, generator_url)
            elif isinstance(spec, EmailSpec):
                await send_email(spec, notice, generator_url)
            else:
                await send_command(spec, notice, generator_url)
            return tries
        except ChannelError as exc:
            if tries > spec.retries:
                raise ChannelError(f"{exc} (after {tries} tries)") from None
        await sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)
