"""vidbatch benchmarks.

``python -m bench`` (``make bench``) runs the orchestration suite in one go and
prints a markdown table (issue 8): makespan against the lower bound N*d/c,
vidbatch against a bare asyncio driver and an official-client-style driver,
CPU per item, poll economy, dispatch ceiling. Every party runs in its own
process on loopback (emulator, each driver), so CPU figures are per party.

Modules:

    machine        cores, CPU model, Python, Prefect version, the command
    emu            the provider emulator as a child process, its control API
    workload       N distinct tiny input clips and a manifest per scenario
    baseline       bare asyncio + httpx driver; official-client-style driver
    orchestration  vidbatch's flow in a child process: wall time, CPU, profile
    polls          poll economy: pipeline.poll on an emulated clock
    suite          the scenarios and the table

Other benchmarks here (own commands): ``local_engine.py``, ``quality.py``,
``streaming.py``. None of this runs in CI (not under ``tests/``; the smoke test
``tests/test_bench_smoke.py`` only checks that the table is produced).
"""
