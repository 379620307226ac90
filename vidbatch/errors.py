"""The vidbatch exception tree.

Every error vidbatch raises on purpose is a ``VidbatchError``. Vendor errors
(httpx, botocore, PyAV, provider JSON bodies) are translated into this tree once,
at the boundary where they occur; nothing above that boundary inspects a vendor
exception. Task retry conditions derive from one question: ``is it transient?``

    VidbatchError
    ├── ConfigError                  the user's input is wrong; nothing was run (exit 2)
    │   ├── ManifestError            a manifest problem, located at file:line:col
    │   ├── ManifestProblems         several of them, found together (one line each)
    │   └── CredentialsError         a credential is missing or malformed
    ├── InputError                   an input video is missing, unreadable or unsupported
    ├── StorageError                 an fsspec store refused a read/write
    ├── ProviderError                anything a provider said or did wrong
    │   ├── TransientError           retry: network, 408/409/429, gateway 5xx
    │   │   ├── RateLimitedError     429 with a Retry-After / remainingSeconds hint
    │   │   └── SubmitUncertainError request may have reached the provider (never
    │   │                            retried blindly; subclass of Transient only so
    │   │                            that the *re-check* can run)
    │   ├── PermanentError           do not retry: validation, 4xx, model failure
    │   │   ├── AuthError            401/403: bad or missing key, plan restriction
    │   │   ├── QuotaError           insufficient credits, plan limits
    │   │   └── JobGoneError         the remote job is unknown/expired (resubmit once)
    │   └── ResultError              the provider's output is unusable (not a video,
    │                                wrong size, truncated): permanent for the item
    └── VerifyError                  an output failed verification

Error messages are one line, say what is wrong and how to fix it, and never
contain secrets (see ``vidbatch.redact``).
"""

from __future__ import annotations

from typing import Any


class VidbatchError(Exception):
    """Base class. ``str(err)`` is a complete one-line message for the user."""

    #: whether a retry of the same operation may succeed
    transient: bool = False

    def __init__(self, message: str) -> None:
        from vidbatch.redact import redact

        super().__init__(redact(" ".join(str(message).split())))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(VidbatchError):
    """The user's manifest, settings or command line is invalid."""


class ManifestError(ConfigError):
    """A manifest problem with its location (``file:line:col: message``)."""

    def __init__(self, message: str, *, file: str = "", line: int = 0, col: int = 0) -> None:
        self.file, self.line, self.col = file, line, col
        where = f"{file}:{line}:{col}: " if file else ""
        super().__init__(f"{where}{message}")


class ManifestProblems(ConfigError):
    """Every problem ``vidbatch validate`` found, in the order found (``problems``).

    ``str()`` is the first problem and how many more there are; the CLI prints
    each on its own line.
    """

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = list(problems)
        more = len(self.problems) - 1
        super().__init__(str(self.problems[0]) + (f" (and {more} more problem{'s' if more > 1 else ''})"
                                                  if more > 0 else ""))


class CredentialsError(ConfigError):
    """A provider credential is missing or malformed."""


class InputError(VidbatchError):
    """An input video cannot be used (missing, empty, not a video, beyond limits)."""


class StorageError(VidbatchError):
    """An fsspec store failed a read or a write."""


class ProviderError(VidbatchError):
    """A provider call failed. ``status`` is the HTTP status where there was one."""

    def __init__(self, message: str, *, provider: str = "", status: int | None = None) -> None:
        self.provider, self.status = provider, status
        prefix = f"{provider}: " if provider and not str(message).startswith(f"{provider}:") else ""
        super().__init__(f"{prefix}{message}")


class TransientError(ProviderError):
    """Retrying the same request later may succeed."""

    transient = True

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, provider=provider, status=status)


class RateLimitedError(TransientError):
    """The provider asked us to slow down (429)."""


class SubmitUncertainError(TransientError):
    """A submit may have reached the provider (timeout after the request was sent).

    The job may exist and be billed. It is never resubmitted blindly: the caller
    re-checks where the provider allows it, otherwise the item fails as
    "unknown - not resubmitted".
    """


class PermanentError(ProviderError):
    """The same request will fail again; fail the item with this message."""


class AuthError(PermanentError):
    """Missing, invalid or insufficiently privileged credentials."""


class QuotaError(PermanentError):
    """Insufficient credits or a plan limit."""


class JobGoneError(PermanentError):
    """The remote job no longer exists (expired or unknown id)."""


class ResultError(ProviderError):
    """The provider's result cannot be used (not a video, truncated, wrong size)."""


class VerifyError(VidbatchError):
    """An output failed a verification check.

    ``facts``: everything measured before the check failed (the report's
    ``verify`` column), so a quarantined result says why it was held back.
    """

    def __init__(self, message: str, *, facts: dict[str, Any] | None = None) -> None:
        self.facts: dict[str, Any] = dict(facts or {})
        super().__init__(message)


def is_transient(exc: BaseException) -> bool:
    """The single retry predicate used by every task and client loop."""
    return isinstance(exc, VidbatchError) and exc.transient
