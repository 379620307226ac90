"""``python -m vidbatch.emulator --port 8787 [knobs]``: serve the provider emulator."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from vidbatch.emulator.config import parse_max_running
from vidbatch.emulator.server import main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vidbatch.emulator",
                                description="Serve the fal / Scenario / removebgvideo protocols on loopback.")
    a = p.add_argument
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8787)
    a("--api-key", help="pin the credential (Scenario: key:secret); default: any non-empty one")
    a("--job-seconds", type=float, help="minimum job run time (emulated seconds)")
    a("--queue-seconds", type=float, help="time in queue before a job may start (emulated seconds)")
    a("--max-running", type=parse_max_running, help="account concurrency: N or fal=2,scenario=3")
    a("--workers", type=int, help="engine worker threads (default 2)")
    a("--instant", "--skip-engine", dest="instant", action="store_true", default=None,
      help="benchmark mode: cached synthetic outputs, no engine")
    a("--time-scale", type=float, help="emulated seconds per wall-clock second")
    a("--seed", type=int, help="seed for fault injection")
    a("--url-ttl", type=float, help="download URL lifetime (emulated seconds)")
    a("--token-ttl", type=float, help="fal CDN token lifetime (emulated seconds)")
    a("--fal-result-ttl", type=float, help="fal result retention (emulated seconds)")
    a("--fal-deferred-validation", action="store_true", default=None,
      help="fal: validate on the runner (COMPLETED + 422) instead of at submit")
    a("--upload-import-seconds", type=float, help="Scenario upload import time (emulated seconds)")
    a("--removebgvideo-credits", type=float, help="removebgvideo credits per key (default unlimited)")
    a("--data-dir", help="where uploads and outputs live (default: a temp dir)")
    a("--public-url", help="base URL to put in absolute URLs (default: the request's)")
    f = p.add_argument_group("faults (probabilities 0..1)")
    for name, help_ in (("drop", "close the connection, request not processed"),
                        ("rate-limit", "429 with the provider's retry hint"),
                        ("server-error", "5xx in the provider's shape"),
                        ("lost-response", "process the request, then drop the response"),
                        ("truncate", "downloads stop halfway, then the connection closes"),
                        ("job-failure", "jobs fail"),
                        ("completed-with-error", "fal: COMPLETED + error, result 422"),
                        ("expired-urls", "the first download URL of an output is already expired"),
                        ("slow-jobs", "jobs run --slow-job-seconds longer"),
                        ("bad-output", "jobs succeed with a result that fails verification (no alpha, or cut short)"),
                        ("legit-deviation", "jobs succeed with a result that deviates as real providers' do "
                                            "(upscale rounded to 16, VFR re-timed, one frame short)")):
        f.add_argument(f"--{name}", type=float, help=help_)
    f.add_argument("--fail-inputs", action="append", help="sha256 or name substring (repeatable, or comma list)")
    f.add_argument("--fault-routes", help="route patterns for request faults, e.g. 'fal:submit,*:status'")
    f.add_argument("--fault-providers", help="providers for job/url faults, e.g. 'fal,scenario'")
    f.add_argument("--retry-after", type=float, help="Retry-After / remainingSeconds value (wall seconds)")
    f.add_argument("--slow-job-seconds", type=float, help="extra run time of slow jobs (emulated seconds)")
    f.add_argument("--failure-reason", help="message of injected job failures")
    a("--log-level", default="info")
    return p


def knobs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    knobs = {k: v for k, v in vars(args).items() if v is not None}
    if "fail_inputs" in knobs:
        knobs["fail_inputs"] = [s.strip() for item in knobs["fail_inputs"] for s in item.split(",") if s.strip()]
    if "fault_providers" in knobs:
        knobs["providers"] = knobs.pop("fault_providers")
    return knobs


def cli(argv: Sequence[str] | None = None) -> None:
    knobs = knobs_from_args(build_parser().parse_args(argv))
    main(**knobs)


if __name__ == "__main__":
    cli()
