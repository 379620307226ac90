"""When to ask a remote job for its status: few requests, completion seen soon.

Targets (issue 8): about a dozen status requests per job at any duration, and
completion detected within 5 % of the job time + 1 s. A fixed or purely
geometric schedule cannot do both for an unknown duration (waits of 5 % of the
elapsed time from 1 s to 600 s alone are ~130 polls), so the schedule spends
its polls where the end is expected, from what is known, best first:

1. progress the provider reports (Scenario 0-1, removebgvideo 0-100): two
   readings bound the rate from above (readings are taken as rounded either
   way by their resolution, so a clamped "1 %" or an unchanged value still
   counts), hence the time left from below: a safe place to sleep to. Every
   reading tightens it, so the jumps grow geometrically (x40 or more);
2. the pace learned in this run for the provider and operation (seconds of job
   per second of video, with its spread), read live, so jobs still running
   re-plan as soon as a sibling finishes (and seeded from earlier runs on the
   same state store, see ``StateStore.read_pace``);
3. nothing (a first job on fal, or one progress reading whose start is
   unknown): a geometric schedule whose every wait stays inside the bound,
   dense up to the duration prior (short jobs are seen early), then
   ``BLIND_RATE * elapsed + 0.8 s``, as close to the bound as the request's
   own time allows. This case cannot meet a dozen polls (~35 at 60 s, ~80 at
   600 s: even waits at the bound itself need ~28 and ~69); the next run
   starts from the pace this one saved. fal, the provider without progress,
   pushes statuses instead (``Provider.watch``): the loop follows its stream and
   uses this schedule only when the stream cannot be used.

From an estimate ``(low, mid, high)`` of the elapsed time at completion: before
``low`` the loop sleeps straight to it (at least one fine step); between
``low`` and ``high`` it polls every ``FINE`` of the job (at most ~8 steps across
the window); past ``high``, and
without any estimate, the wait is ``SLACK_RATE * elapsed + base``: the bound
with room for the request itself (``base`` is 20 % of the expected job, at
most 0.8 s, so short jobs are not left waiting most of a second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from vidbatch.spec import JobState, JobStatus

SLACK_RATE = 0.04
SLACK_BASE_MAX = 0.8
#: step around the expected end, as a fraction of the expected job time
FINE = 0.01
#: the shortest wait between two status requests of one job (seconds)
MIN_WAIT = 0.01
#: blind waits past the prior: 4.5 % of the elapsed time + 0.8 s (bound: 5 % + 1 s)
BLIND_RATE = 0.045
#: relative uncertainty kept around a time-left estimate from progress
PROGRESS_MARGIN = 0.15


@dataclass(frozen=True)
class Pace:
    """A learned job time: ``total`` seconds from start to done, ``margin`` relative (0.1 = 10 %)."""

    total: float
    margin: float


@dataclass
class PollSchedule:
    """The waits of one job's poll loop. ``observe`` every status, then ``next_wait``.

    Times are seconds since submit. ``prior`` is a weak guess of the job time
    (from the video duration), used only to size the first waits; ``learned``
    returns the current learned pace of this kind of job, or None.
    """

    prior: float
    learned: Callable[[], Pace | None] = lambda: None
    samples: list[tuple[float, float]] = field(default_factory=list)
    #: last elapsed time the job was seen queued: its run started after it
    queued_until: float = 0.0
    #: elapsed time of the last status that was not terminal (brackets the end)
    last_pending: float = 0.0

    def observe(self, elapsed: float, status: JobStatus) -> None:
        if status.state.terminal:
            return
        self.last_pending = elapsed
        if status.state == JobState.QUEUED:
            self.queued_until = elapsed
            self.samples.clear()  # progress of a queued job says nothing about its run
            return
        p = status.progress
        if p is not None and 0.0 < p < 1.0:
            self.samples.append((elapsed, float(p)))

    def pushed_end(self, elapsed: float) -> None:
        """The job's end was pushed (a status stream) at ``elapsed``: it ended then, not
        somewhere since the last poll, so the learned pace is not halved."""
        self.last_pending = max(self.last_pending, elapsed)

    def run_seconds(self, elapsed: float) -> float:
        """For a job seen done at ``elapsed``: its run time (from the last time it was
        seen queued to the middle of the last bracket): the sample to learn the pace from."""
        return max(0.0, (self.last_pending + elapsed) / 2.0 - self.queued_until)

    def _resolution(self) -> float:
        """Progress resolution: 1 % when every reading is a whole percent, else 0.1 %."""
        if all(abs(p * 100 - round(p * 100)) < 1e-6 for _, p in self.samples):
            return 0.01
        return 0.001

    def _from_progress(self) -> tuple[float, float, float] | None:
        s = self.samples
        if len(s) < 2 or s[-1][0] <= s[0][0]:
            return None
        q = self._resolution()
        t2, p2 = s[-1]
        lefts_lo, lefts_mid = [], []
        for t1, p1 in {s[0], s[-2]}:
            if t2 <= t1:
                continue
            dp = p2 - p1
            # the true change is at most dp + 2q: the fastest rate, hence the least time left
            lefts_lo.append(max(0.0, 1.0 - p2 - q) * (t2 - t1) / (dp + 2 * q))
            if dp > 0:
                lefts_mid.append((1.0 - p2) * (t2 - t1) / dp)
        if not lefts_lo:
            return None
        left_lo = min(lefts_lo)
        left = max(left_lo, min(lefts_mid)) if lefts_mid else left_lo
        return t2 + (1 - PROGRESS_MARGIN) * left_lo, t2 + left, t2 + (1 + PROGRESS_MARGIN) * left

    def estimate(self) -> tuple[float, float, float] | None:
        """``(low, mid, high)``: elapsed time at completion, or None when nothing is known."""
        est = self._from_progress()
        if est is not None:
            return est
        pace = self.learned()
        if pace is not None:
            start = self.queued_until
            return (start + pace.total * (1 - pace.margin), start + pace.total,
                    start + pace.total * (1 + pace.margin))
        return None

    def _base(self, ref: float) -> float:
        # 20 % of the expected job, at most 0.8 s: a blind 5 s job takes ~10 polls,
        # a 1 s job is seen done within ~0.2 s
        return min(SLACK_BASE_MAX, max(MIN_WAIT, 0.2 * ref))

    def next_wait(self, elapsed: float) -> float:
        t = max(0.0, elapsed)
        est = self.estimate()
        ref = est[1] if est else self.prior
        slack = SLACK_RATE * t + self._base(ref)
        if est is None:
            if t < self.prior:
                return max(MIN_WAIT, slack)  # blind, within the duration prior: short jobs are seen early
            # blind past the prior: as close to the bound as the request's own time allows
            return BLIND_RATE * t + SLACK_BASE_MAX
        low, mid, high = est
        # ~1 % of the job, and at most ~8 steps across the window (a wide margin)
        fine = max(MIN_WAIT, FINE * mid, (high - low) / 8)
        if self.queued_until and self.queued_until == self.last_pending:
            # still queued: it cannot be done before it starts and runs the learned time
            pace = self.learned()
            return max(MIN_WAIT, slack, pace.total * (1 - pace.margin) if pace else 0.0)
        if t < low:
            return max(low - t, min(fine, slack))
        if t <= high:
            return max(MIN_WAIT, min(fine, slack))
        return max(MIN_WAIT, slack)


def legacy_interval(elapsed: float, expected: float, floor: float) -> float:
    """``Provider.poll_interval``: the wait of a schedule that expects ``expected`` seconds (10 % margin)."""
    sched = PollSchedule(prior=expected, learned=lambda: Pace(expected, 0.1))
    wait = sched.next_wait(elapsed)
    return max(floor, wait) if expected >= 20 * floor else wait
