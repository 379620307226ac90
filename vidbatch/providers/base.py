"""The provider contract.

A provider turns a normalized ``JobSpec`` into a remote (or local) job and back
into downloadable ``Artifact``s. Flows and tasks never see HTTP; a provider never
sees Prefect. Implementations subclass ``Provider`` and register under a name
(see ``vidbatch.providers.registry``); the shared contract tests in
``tests/contract.py`` run every implementation through the same checks.

Lifecycle of one item::

    validate(spec)                    pure; raises ConfigError before anything runs
    staged = await stage(item)        input -> URL / asset id the provider can read
    handle = await submit(spec, staged)   one paid job; caller persists the handle
    status = await poll(handle)       queued / running / succeeded / failed
    arts   = await results(handle)    artifacts (video, mask)
    async for chunk in open_artifact(art): ...   stream bytes, bounded memory
    await cancel(handle)              best effort

Every method translates vendor errors into ``vidbatch.errors`` at this boundary.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, ClassVar, Mapping

from vidbatch.errors import ConfigError, TransientError
from vidbatch.spec import Artifact, Cost, Item, JobHandle, JobSpec, JobStatus, MediaInfo, StagedInput


class ArtifactExpiredError(TransientError):
    """An artifact's download URL expired or was revoked (403/404/410 on the file).

    Raised by ``open_artifact`` before any byte was yielded. The cure is
    ``artifact = await provider.refresh_artifact(handle, artifact)`` and a new
    download, not a retry of the same URL. (Hosted providers already refresh
    once on their own where the artifact carries what they need to.)
    """


@dataclass(frozen=True)
class ProviderSettings:
    """How to reach a provider: base URLs and credentials.

    ``base_url`` overrides the provider's production URL (``--emulator`` sets it
    for every hosted provider). ``credentials`` maps credential names (e.g.
    ``FAL_KEY``) to values; by default they come from the environment.
    """

    base_url: str | None = None
    credentials: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 60.0
    #: expected worst-case wait in the provider's queue, used for URL expiries
    queue_wait_seconds: float = 6 * 3600
    options: Mapping[str, Any] = field(default_factory=dict)

    def credential(self, name: str) -> str | None:
        value = self.credentials.get(name)
        if value is None:
            value = os.environ.get(name)
        return value or None


@dataclass(frozen=True)
class OperationInfo:
    """What a provider offers for one operation."""

    default_model: str
    models: tuple[str, ...]
    formats: tuple[str, ...]


class Provider(abc.ABC):
    """Base class of every provider. Subclasses set ``name`` and ``operations``."""

    name: ClassVar[str]
    #: operation -> models and formats offered
    operations: ClassVar[Mapping[str, OperationInfo]]
    #: credential names the provider needs (checked before anything is submitted)
    credential_names: ClassVar[tuple[str, ...]] = ()
    #: whether a job costs money (the local engine does not)
    paid: ClassVar[bool] = True
    #: whether a re-check after an uncertain submit can find the job
    can_recheck_submit: ClassVar[bool] = False
    #: the vendor's suggested poll cadence: the floor of ``poll_interval`` for long
    #: jobs. The poll loop bounds requests per job instead (``vidbatch.polling``).
    min_poll_interval: ClassVar[float] = 2.0
    #: whether ``watch`` can push a job's statuses (a status stream) so the poll
    #: loop need not schedule polls at all
    pushes_status: ClassVar[bool] = False

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        self.settings = settings or ProviderSettings()

    # -- validation -------------------------------------------------------
    def default_model(self, operation: str) -> str:
        info = self.operation_info(operation)
        return info.default_model

    def operation_info(self, operation: str) -> OperationInfo:
        try:
            return self.operations[operation]
        except KeyError:
            offered = ", ".join(self.operations) or "none"
            raise ConfigError(
                f"provider {self.name!r} does not offer {operation!r} (it offers: {offered})"
            ) from None

    def validate(self, spec: JobSpec) -> None:
        """Refuse impossible settings. Subclasses extend with native-param checks."""
        info = self.operation_info(spec.operation)
        if spec.model not in info.models:
            raise ConfigError(
                f"{self.name} {spec.operation}: unknown model {spec.model!r}; "
                f"choose one of: {', '.join(info.models)}"
            )
        if spec.format not in info.formats:
            raise ConfigError(
                f"{self.name} {spec.operation}: format {spec.format!r} is not offered; "
                f"choose one of: {', '.join(info.formats)}"
            )

    def check_credentials(self) -> None:
        """Raise ``CredentialsError`` when a needed credential is missing."""
        from vidbatch.errors import CredentialsError

        missing = [n for n in self.credential_names if not self.settings.credential(n)]
        if missing:
            raise CredentialsError(
                f"{self.name}: missing credential {' and '.join(missing)}; "
                f"set the environment variable{'s' if len(missing) > 1 else ''} "
                f"or name a Prefect Secret block under credentials.{self.name} in the manifest"
            )

    def check_input(self, spec: JobSpec, media: MediaInfo) -> None:
        """Refuse inputs beyond the provider's documented limits (default: none)."""

    # -- the job protocol -------------------------------------------------
    @abc.abstractmethod
    async def stage(self, item: Item) -> StagedInput: ...

    @abc.abstractmethod
    async def submit(self, spec: JobSpec, staged: StagedInput) -> JobHandle: ...

    @abc.abstractmethod
    async def poll(self, handle: JobHandle) -> JobStatus: ...

    @abc.abstractmethod
    async def results(self, handle: JobHandle) -> list[Artifact]: ...

    @abc.abstractmethod
    def open_artifact(self, artifact: Artifact) -> AsyncIterator[bytes]:
        """Stream an artifact's bytes (an async generator)."""

    async def refresh_artifact(self, handle: JobHandle, artifact: Artifact) -> Artifact:
        """Return a fresh download URL for an artifact whose URL expired."""
        for art in await self.results(handle):
            if art.kind == artifact.kind:
                return art
        return artifact

    async def cancel(self, handle: JobHandle) -> bool:
        """Best-effort cancel. Returns True if the provider accepted it."""
        return False

    async def recheck_submit(
        self, spec: JobSpec, staged: StagedInput, since: float, hint: Mapping[str, Any] | None = None
    ) -> JobHandle | None:
        """After an uncertain submit, find the job if it exists (where possible).

        ``hint`` is what ``submit_hint`` returned for the submit being checked:
        after a crash the input is staged again (a new upload URL / asset id),
        so the hint, saved in the write-ahead intent, is what identifies the job.
        Returns None when the provider's listing shows no such job; raises
        ``ProviderError`` when it cannot tell.
        """
        return None

    def submit_hint(self, spec: JobSpec, staged: StagedInput) -> dict[str, Any]:
        """Non-secret facts that let ``recheck_submit`` find this submit later.

        Persisted in the write-ahead intent on the state store, so it must never
        hold a credential or a presigned URL (a hash of one is fine).
        """
        return {}

    def estimate(self, spec: JobSpec, media: MediaInfo) -> Cost:
        return Cost(usd=None, basis="no published price")

    def poll_interval(self, elapsed: float, expected: float) -> float:
        """Seconds to wait before the next poll of a job expected to take ``expected`` s.

        The poll loop itself uses ``vidbatch.polling.PollSchedule``, which also
        reads progress and the pace learned in the run; this is its answer for
        a known duration (10 % margin), with ``min_poll_interval`` as the floor
        for jobs long enough that the floor cannot delay detection.
        """
        from vidbatch.polling import legacy_interval

        return legacy_interval(elapsed, expected, self.min_poll_interval)

    async def wait(self, handle: JobHandle, seconds: float) -> None:
        """Wait before the next poll. Providers that can be told of completion
        (the local engine) return early; hosted ones just sleep."""
        import asyncio

        await asyncio.sleep(seconds)

    async def watch(
        self, handle: JobHandle, timeout: float, on_status: Callable[[JobStatus], None] | None = None
    ) -> bool:
        """Follow the job's status stream until it ends or ``timeout`` seconds pass.

        Only for providers with ``pushes_status``. Reports each pending status to
        ``on_status``. True: the stream was followed (to the job's end, the
        timeout, or a late close); the caller then polls once for the
        authoritative status. False: the stream cannot be used for this job, and
        the caller polls on its schedule instead. Never raises a provider error.
        """
        return False

    async def aclose(self) -> None:
        """Release connections."""

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
