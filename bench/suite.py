"""The orchestration suite of issue 8: scenarios, side by side, and the table.

Every party runs in its own process on loopback: the emulator (instant mode:
real tiny output videos, job time ``d`` set per run), vidbatch (one child for
all its runs, so Prefect's ephemeral server starts once; that server is a
subprocess whose CPU is reported apart), each baseline driver (one child per
run). Scenarios:

1. makespan: N items, job time d, concurrency c -> wall / (N*d/c)
2. vidbatch / bare driver at d and at 0 (pure overhead); the official-style driver too
3. CPU per item at d = 0, with verify and orchestration only (verify stubbed)
4. poll economy (``bench.polls``)
5. dispatch ceiling: instant jobs, high concurrency -> items per second
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import workload
from bench.emu import EmulatorProcess

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Config:
    n: int = 300
    c: int = 10
    d: float = 1.0
    dispatch_n: int = 1000
    dispatch_c: int = 200
    durations: tuple[float, ...] = (5.0, 60.0, 600.0)
    k: int = 3
    interval: float = 0.1  # the baselines' fixed poll interval (fal_client's default)
    poll_wall: float = 6.0  # wall seconds per emulated job in the poll-economy runs
    stage_tasks: bool = True  # also measure the flow with one task run per stage (the old layout)
    workdir: Path | None = None
    #: vidbatch in this process (tests: a Prefect backend is already up) instead of a child
    inprocess: bool = False

    @classmethod
    def quick(cls, **kw: Any) -> "Config":
        base = dict(n=10, c=4, d=0.0, dispatch_n=20, dispatch_c=10, durations=(60.0,), k=1, stage_tasks=False,
                    poll_wall=0.5)
        return cls(**{**base, **kw})


@dataclass
class Results:
    config: Config
    machine: dict[str, str]
    vidbatch: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: list[dict[str, Any]] = field(default_factory=list)
    poll_rows: list[dict[str, Any]] = field(default_factory=list)
    startup: float | None = None
    #: 1-minute load average before and after (other processes on the box skew every figure)
    load: tuple[float, float] = (0.0, 0.0)


def _env(workdir: Path) -> dict[str, str]:
    (workdir / "prefect-home").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)  # ephemeral, as `vidbatch run` on a laptop
    return env


def _last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


def _child(args: list[str], env: dict[str, str]) -> Any:
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{res.stderr[-4000:]}")
    return _last_json(res.stdout)


def _plan(cfg: Config, work: Path, inputs: list[Path]) -> dict[str, Any]:
    warm = workload.manifest(work, "warmup", workload.make_inputs(work / "warm", 2), cfg.c)
    runs = []

    def add(name: str, n: int, c: int, d: float, no_verify: bool, **params: Any) -> None:
        man = workload.manifest(work, name, inputs[:n], c)
        runs.append({"name": name, "manifest": str(man), "job_seconds": d, "no_verify": no_verify,
                     "params": params})

    for d in dict.fromkeys((cfg.d, 0.0)):
        add(f"d{d:g}-verify", cfg.n, cfg.c, d, False)
        add(f"d{d:g}-orch", cfg.n, cfg.c, d, True)
        if cfg.stage_tasks:
            add(f"d{d:g}-orch-stage-tasks", cfg.n, cfg.c, d, True, task_runs="stage")
    add("dispatch-orch", cfg.dispatch_n, cfg.dispatch_c, 0.0, True)
    return {"warmup": str(warm), "runs": runs}


def _baseline(emu: EmulatorProcess, style: str, inputs: list[Path], c: int, d: float, cfg: Config, work: Path,
              env: dict[str, str], name: str) -> dict[str, Any]:
    emu.prepare(d)
    lst = work / f"{name}.txt"
    lst.write_text("\n".join(map(str, inputs)))
    e0 = emu.cpu_seconds()
    res = _child(["-m", "bench.baseline", "--style", style, "--emulator", emu.base_url, "--inputs", str(lst),
                  "--outdir", str(work / name), "-c", str(c), "--interval", str(cfg.interval)], env)
    stats = emu.stats()
    res.update(cpu_emulator=emu.cpu_seconds() - e0, polls=stats["polls_per_job"]["fal"]["mean"],
               max_in_flight=stats["max_in_flight"]["fal"], failed=res["items"] - res["done"])
    return res


def run_suite(cfg: Config, machine: dict[str, str]) -> Results:
    work = cfg.workdir or Path(tempfile.mkdtemp(prefix="vidbatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = _env(work)
    out = Results(cfg, machine)
    load0 = os.getloadavg()[0]
    inputs = workload.make_inputs(work / "clips", max(cfg.n, cfg.dispatch_n))
    with EmulatorProcess() as emu:
        plan = _plan(cfg, work, inputs)
        if cfg.inprocess:
            import asyncio

            from bench.orchestration import run_plan

            vid = asyncio.run(run_plan(plan, emu.base_url, emu.proc.pid if emu.proc else None))
        else:
            (work / "plan.json").write_text(json.dumps(plan))
            vid = _child(["-m", "bench.orchestration", "--plan", str(work / "plan.json"), "--emulator", emu.base_url,
                          "--emulator-pid", str(emu.proc.pid if emu.proc else 0)], env)
        out.startup = vid["startup"]
        out.vidbatch = {r["name"]: r for r in vid["runs"]}
        for d in dict.fromkeys((cfg.d, 0.0)):
            for style in ("bare", "official"):
                name = f"d{d:g}-{style}"
                out.baselines[name] = _baseline(emu, style, inputs[:cfg.n], cfg.c, d, cfg, work, env, name)
        for style in ("bare", "official"):
            name = f"dispatch-{style}"
            out.baselines[name] = _baseline(emu, style, inputs[:cfg.dispatch_n], cfg.dispatch_c, 0.0, cfg, work,
                                            env, name)
        if cfg.durations:
            polls = _child(["-m", "bench.polls", "--emulator", emu.base_url, "-k", str(cfg.k),
                            "--durations", ",".join(f"{d:g}" for d in cfg.durations),
                            "--wall-per-job", str(cfg.poll_wall)], env)
            out.polls, out.poll_rows = polls["summary"], polls["rows"]
    out.load = (load0, os.getloadavg()[0])
    return out
