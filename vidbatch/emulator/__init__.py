"""Provider emulator: fal.ai, Scenario and removebgvideo.com on one loopback server.

Provider clients written against the real APIs work unchanged except for the
base URLs (``EmulatorServer.urls`` / ``provider_urls(base)``)::

    fal_queue      {base}/fal/queue        instead of https://queue.fal.run
    fal_rest       {base}/fal/rest         instead of https://rest.fal.ai
    fal_cdn        {base}/fal/cdn          instead of https://v3.fal.media
    scenario       {base}/scenario/v1      instead of https://api.cloud.scenario.com/v1
    removebgvideo  {base}/removebgvideo    instead of https://api.removebgvideo.com

Public API::

    with EmulatorServer(job_seconds=2, instant=True) as emu:   # or EmulatorServer(EmulatorConfig(...))
        emu.base_url / emu.urls
        emu.stats() / emu.jobs(provider) / emu.reset()
        emu.faults() / emu.set_faults(**FaultConfig fields) / emu.configure(**runtime knobs)
    create_app(config) -> Starlette         # the ASGI app, for any server
    main(host="127.0.0.1", port=8787, **knobs)   # blocking CLI server; python -m vidbatch.emulator

Knobs are ``EmulatorConfig`` fields (``config.py``: api_key, job_seconds,
queue_seconds, max_running, workers, instant/skip_engine, time_scale, seed,
url_ttl, token_ttl, fal_result_ttl, fal_deferred_validation,
upload_import_seconds, scenario_min_part_size, removebgvideo_max_upload,
removebgvideo_credits, data_dir, public_url, fetch_timeout, engine) plus
``FaultConfig`` fields (drop, rate_limit, server_error, lost_response,
truncate, rules, retry_after, job_failure, completed_with_error,
expired_urls, slow_jobs, slow_job_seconds, fail_inputs, providers,
failure_reason, not_video_outputs, wrong_size_outputs, bad_output,
legit_deviation; ``fault_routes`` =
``routes``; rules also take ``respond`` (a canned status/body) and ``delay``
(a held response) faults).

Jobs run on the local engine (``vidbatch.engine``) in ``workers`` threads and
produce real files in the requested container; ``instant=True`` serves cached
synthetic outputs of the right container, size, fps and frame count instead
(benchmarks). ``max_running`` is an *account* limit, i.e. per (provider,
credential): jobs beyond it stay queued (fal's behaviour, used for all three).
Full URL layouts and the choices made where the provider reference says
UNKNOWN are in the docstrings of ``fal``, ``scenario`` and ``removebgvideo``;
timing semantics (``time_scale``) in ``config``; faults in
``config.FaultConfig``; control endpoints (``/_emulator/...``) in ``app``.

Auth: fal ``Authorization: Key <k>`` (CDN uploads: ``Bearer <storage token>``),
Scenario ``Authorization: Basic base64(key:secret)``, removebgvideo
``X-Api-Key``. Any non-empty credential is accepted unless ``api_key`` pins
one. removebgvideo and Scenario objects are visible only to the credential
that created them; fal requests to anyone holding the URL. Downloads (CDN
URLs) need no credential, as in production.

Route names (for ``requests`` stats and fault ``routes`` patterns, fnmatch)::

    fal:submit fal:status fal:status_stream fal:result fal:cancel fal:token
    fal:upload_initiate fal:upload fal:multipart_create fal:multipart_part
    fal:multipart_complete fal:download
    scenario:upload_create scenario:upload_part scenario:upload_action
    scenario:upload_status scenario:submit scenario:status scenario:jobs
    scenario:cancel scenario:asset scenario:asset_download scenario:download
    removebgvideo:upload removebgvideo:submit removebgvideo:start
    removebgvideo:status removebgvideo:list removebgvideo:download_url
    removebgvideo:pricing removebgvideo:usage removebgvideo:health
    removebgvideo:download

``GET /_emulator/stats`` layout (``{p}`` = fal | scenario | removebgvideo)::

    submissions             {p: n}          accepted jobs (not validation failures, not dryRun)
    submissions_by_content  {p: {sha256: n}} input video bytes per submission (known when the
                                             job has its input: at submit for uploads to the
                                             emulator, at job start for foreign URLs)
    submissions_by_key      {p: {key_id: n}} key_id = "k_" + sha256(credential)[:12] (state.key_id)
    in_flight / max_in_flight {p: n}        submit .. terminal (removebgvideo drafts from /start)
    running / max_running   {p: n}          holding an account slot (after queue_seconds)
    jobs                    {p: {state: n}} queued | running | succeeded | failed | canceled | draft
    requests                {route: n}      every request, faulted ones included
    responses               {route: {status: n}}
    polls_per_job           {p: {jobs, total, mean, max, min}}  status requests per job
    faults_injected         {"<route>:<fault>" or "<p>:job:<fault>" or "<p>:url:expired": n}
    validation_errors       {route: n}
    uploads, upload_bytes, downloads, download_bytes   {p: n}
    engine_calls            {op: n}  ("instant" in instant mode)
    uptime_seconds
"""

from __future__ import annotations

from vidbatch.emulator.app import create_app, provider_urls
from vidbatch.emulator.config import EmulatorConfig, FaultConfig, FaultRule
from vidbatch.emulator.server import EmulatorServer, main
from vidbatch.emulator.state import key_id

__all__ = [
    "EmulatorConfig",
    "EmulatorServer",
    "FaultConfig",
    "FaultRule",
    "create_app",
    "key_id",
    "main",
    "provider_urls",
]
