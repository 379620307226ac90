"""The suite's results as one markdown document: machine, command, tables, targets."""

from __future__ import annotations

from typing import Any

from bench.suite import Results

TARGET_BOUND = 1.05  # makespan / (N*d/c)
TARGET_BARE = 1.10  # vidbatch / bare driver at d
TARGET_CPU_MS = 25.0  # vidbatch CPU per item at d = 0 (orchestration)
TARGET_POLLS = 12


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _ms(seconds: float | None, n: int) -> str:
    return "-" if seconds is None or not n else f"{1000 * seconds / n:.1f}"


def _ok(flag: bool | None) -> str:
    return "-" if flag is None else ("met" if flag else "**missed**")


def _ratio(a: float | None, b: float | None, nd: int = 2) -> str:
    return "-" if not a or not b else f"{a / b:.{nd}f}"


HEAD = ("| driver | wall s | / bound | items phase s | / bound | / bare | status polls/job | CPU ms/item, items phase "
        "| CPU ms/item, whole flow | + Prefect server ms/item | emulator ms/item | loop lag p99 ms | failed |")


def _scenario(res: Results, d: float, lines: list[str], targets: list[tuple[str, str, str, bool | None]]) -> None:
    cfg = res.config
    bound = cfg.n * d / cfg.c
    bare = res.baselines.get(f"d{d:g}-bare")
    lines += [f"#### N = {cfg.n}, c = {cfg.c}, job time d = {d:g} s" + (f" (bound N*d/c = {bound:g} s)" if d else ""),
              "", HEAD, "|" + "---|" * (HEAD.count("|") - 1)]
    rows: list[tuple[str, dict[str, Any]]] = []
    for key, label in ((f"d{d:g}-verify", "vidbatch, with verify"),
                       (f"d{d:g}-orch", "vidbatch, orchestration only"),
                       (f"d{d:g}-orch-stage-tasks", "vidbatch, orchestration only, 5 task runs/item (old layout)"),
                       (f"d{d:g}-bare", "bare asyncio + httpx"), (f"d{d:g}-official", "official-client style")):
        r = res.vidbatch.get(key) or res.baselines.get(key)
        if r:
            rows.append((label, r))
    for label, r in rows:
        n = r["items"]
        items_wall = r.get("items_wall")
        lines.append(
            f"| {label} | {_f(r['wall'])} | {_ratio(r['wall'], bound, 3)} | {_f(items_wall)} | "
            f"{_ratio(items_wall, bound, 3)} | {_ratio(r['wall'], bare['wall'] if bare else None)} | "
            f"{_f(r.get('polls'), 1)} | {_ms(r.get('cpu_items'), n)} | {_ms(r.get('cpu'), n)} | "
            f"{_ms(r.get('cpu_server'), n)} | {_ms(r.get('cpu_emulator'), n)} | {_f(r.get('loop_lag_p99_ms'), 0)} | "
            f"{r.get('failed', 0)} |")
    lines.append("")
    orch, verify = res.vidbatch.get(f"d{d:g}-orch"), res.vidbatch.get(f"d{d:g}-verify")
    if d and verify and orch:
        targets.append((f"makespan / (N*d/c) at d = {d:g} s", f"<= {TARGET_BOUND}",
                        f"{verify['wall'] / bound:.3f} whole flow with verify ({verify['items_wall'] / bound:.3f} items "
                        f"phase); {orch['wall'] / bound:.3f} orchestration only ({orch['items_wall'] / bound:.3f})",
                        verify["wall"] / bound <= TARGET_BOUND))
    if bare and (verify or orch):
        main = verify or orch
        targets.append((f"vidbatch / bare driver at d = {d:g} s", f"<= {TARGET_BARE}" if d else "report",
                        f"{main['wall'] / bare['wall']:.2f} whole flow ({main['items_wall'] / bare['wall']:.2f} items "
                        "phase)" + (f"; orchestration only {orch['wall'] / bare['wall']:.2f}" if orch and verify else ""),
                        main["wall"] / bare["wall"] <= TARGET_BARE if d else None))
    if not d and orch:
        n = orch["items"]
        items = 1000 * (orch.get("cpu_items") or orch["cpu"]) / n
        targets.append(("CPU per item at d = 0, vidbatch process", f"<= {TARGET_CPU_MS:g} ms",
                        f"{items:.1f} ms items phase, {1000 * orch['cpu'] / n:.1f} ms whole flow (report + handoff "
                        f"included); Prefect server +{1000 * orch['cpu_server'] / n:.1f} ms" +
                        (f"; with verify {1000 * verify['cpu'] / n:.1f} ms" if verify else ""),
                        items <= TARGET_CPU_MS))


def render(res: Results) -> str:
    cfg, m = res.config, res.machine
    lines = [
        "### Benchmarks",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}, {m['os']}; Python {m['python']}, Prefect {m['prefect']}; "
        f"1-min load average {res.load[0]:.1f} before, {res.load[1]:.1f} after.  ",
        f"Command: `{m['command']}`  ",
        "Emulator (fal protocol, instant outputs: real 64x64 1 s videos) in its own process on loopback. "
        f"Baselines poll every {cfg.interval:g} s. vidbatch: the `process-manifest` flow as `vidbatch run` runs it, "
        f"ephemeral Prefect API server (start-up {_f(res.startup, 1)} s, excluded; its CPU in its own column). "
        "*Whole flow* = the flow call (planning .. report, Parquet/HTML handoff, artifacts); *items phase* = until "
        "the last item's row. *Orchestration only* = verify's decode/metrics and the report's thumbnails stubbed (the stage runs, "
        "the report is written).",
        "",
    ]
    targets: list[tuple[str, str, str, bool | None]] = []
    for d in dict.fromkeys((cfg.d, 0.0)):
        _scenario(res, d, lines, targets)
    disp = res.vidbatch.get("dispatch-orch")
    if disp:
        lines += [f"#### Dispatch ceiling: N = {cfg.dispatch_n}, c = {cfg.dispatch_c}, instant jobs (d = 0)", "",
                  "| driver | wall s | items/s | items/s, items phase | CPU ms/item | + Prefect server ms/item | "
                  "status polls/job | failed |", "|---|---|---|---|---|---|---|---|"]
        for label, r in (("vidbatch, orchestration only", disp),
                         ("bare asyncio + httpx", res.baselines.get("dispatch-bare")),
                         ("official-client style", res.baselines.get("dispatch-official"))):
            if r:
                iw = r.get("items_wall")
                lines.append(f"| {label} | {_f(r['wall'])} | {_f(r['items'] / r['wall'], 1)} | "
                             f"{_f(r['items'] / iw, 1) if iw else '-'} | {_ms(r.get('cpu_items') or r['cpu'], r['items'])} | "
                             f"{_ms(r.get('cpu_server'), r['items'])} | {_f(r.get('polls'), 1)} | {r.get('failed', 0)} |")
        bare = res.baselines.get("dispatch-bare")
        if bare:
            targets.append(("dispatch ceiling, items/s", "report",
                            f"vidbatch {disp['items'] / disp['wall']:.1f} whole flow "
                            f"({disp['items'] / disp['items_wall']:.1f} items phase), bare {bare['items'] / bare['wall']:.1f}",
                            None))
        lines.append("")
    if res.polls:
        lines += ["#### Poll economy (emulated clock; wave 1 = first jobs on a fresh state store, 2 = same run, pace "
                  "learned, 3 = next run, pace saved)",
                  "", "| job s | provider | wave | jobs | polls/job mean (max) | detection delay s mean (max) | "
                  "bound 5 % + 1 s | within both |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in res.polls:
            lines.append(f"| {p['duration']:g} | {p['provider']} | {p['wave']} | {p['jobs']} | "
                         f"{p['polls_mean']:.1f} ({p['polls_max']}) | {p['delay_mean']:.2f} ({p['delay_max']:.2f}) | "
                         f"{p['bound']:.2f} | {'yes' if p['ok'] else '**no**'} |")
        lines.append("")
        over = [p for p in res.polls if p["polls_max"] > TARGET_POLLS]
        late = [p for p in res.polls if p["delay_max"] > p["bound"]]
        desc = "; ".join(f"{p['provider']} {p['duration']:g} s wave {p['wave']}: {p['polls_max']}" for p in over)
        targets.append((f"<= {TARGET_POLLS} polls/job, detection <= 5 % + 1 s", "every duration",
                        f"{len(res.polls) - len(over)} of {len(res.polls)} groups within {TARGET_POLLS} polls"
                        + (f" (over: {desc})" if over else "") + f"; {len(late)} groups late",
                        not over and not late))
    lines += ["#### Targets", "", "| target | goal | measured | |", "|---|---|---|---|"]
    lines += [f"| {t} | {goal} | {got} | {_ok(ok)} |" for t, goal, got, ok in targets]
    return "\n".join(lines) + "\n"
