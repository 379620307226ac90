"""Keep secrets out of logs, reports, exceptions and artifacts.

Two kinds of secret exist: API keys (known values, registered when a provider is
configured) and URL signatures (query parameters of presigned / signed CDN URLs,
recognised by name). ``redact`` removes both from any string.
"""

from __future__ import annotations

import logging
import re
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

#: query parameters that carry signatures or credentials in presigned URLs
SIGNATURE_PARAMS = (
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "Signature",
    "Policy",
    "Key-Pair-Id",
    "AWSAccessKeyId",
    "x-goog-signature",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "sig",
    "token",
    "se",
    "sp",
)
_SIG_RE = re.compile(
    r"(?P<k>(?:[?&])(?:" + "|".join(re.escape(p) for p in SIGNATURE_PARAMS) + r")=)[^&#\s\"'<>]*",
    re.IGNORECASE,
)
_AUTH_RE = re.compile(r"(?P<k>(?:Authorization|X-Api-Key)['\"]?\s*[:=]\s*['\"]?(?:Key |Basic |Bearer )?)[^\s'\",}]+", re.I)

REDACTED = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret value (an API key) so that it is masked everywhere."""
    global _pattern
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # longest first so that a key containing another key is masked whole
        alts = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in alts))


def redact(text: str) -> str:
    """Mask registered secrets, URL signatures and auth headers in ``text``."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _SIG_RE.sub(lambda m: m.group("k") + REDACTED, text)
    return _AUTH_RE.sub(lambda m: m.group("k") + REDACTED, text)


def redact_url(url: str) -> str:
    """A URL safe to show: signatures and userinfo masked."""
    url = re.sub(r"(?<=://)[^/@\s]+:[^/@\s]+@", REDACTED + "@", url)
    return redact(url)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - a broken record is not ours to fix
            return True
        red = redact(msg)
        if red != msg:
            record.msg, record.args = red, None
        return True


def install_log_redaction() -> None:
    """Attach the filter to the root handlers and to Prefect's loggers."""
    flt = RedactingFilter()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "httpx", "vidbatch"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(flt)
        for h in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in h.filters):
                h.addFilter(flt)
