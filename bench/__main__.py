"""``python -m bench`` (``make bench``): the orchestration suite and its table.

    python -m bench [--n 300] [--c 10] [--d 1] [--dispatch-n 1000] [--dispatch-c 200]
                    [--durations 5,60,600] [--k 3] [--quick] [--json out.json] [--workdir DIR]

Takes about 8 minutes on 2 cores; ``--quick`` (N = 10, d = 0) about a minute.
Not a test: nothing fails on a slow machine. Prints markdown to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bench import machine
from bench.suite import Config, run_suite
from bench.table import render


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=10, d=0: a smoke run")
    ap.add_argument("--n", type=int)
    ap.add_argument("--c", type=int)
    ap.add_argument("--d", type=float)
    ap.add_argument("--dispatch-n", type=int)
    ap.add_argument("--dispatch-c", type=int)
    ap.add_argument("--durations", help="poll economy job durations, e.g. 5,60,600")
    ap.add_argument("--k", type=int, help="poll economy: jobs per provider per wave")
    ap.add_argument("--no-stage-tasks", action="store_true", help="skip the 5-task-runs-per-item comparison")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    kw = {k: v for k, v in dict(n=args.n, c=args.c, d=args.d, dispatch_n=args.dispatch_n, dispatch_c=args.dispatch_c,
                                 k=args.k, workdir=args.workdir).items() if v is not None}
    if args.durations is not None:
        kw["durations"] = tuple(float(x) for x in args.durations.split(",") if x.strip())
    if args.no_stage_tasks:
        kw["stage_tasks"] = False
    cfg = Config.quick(**kw) if args.quick else Config(**kw)
    res = run_suite(cfg, machine.describe(argv))
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(res), default=str, indent=1))
    sys.stdout.write(render(res))


if __name__ == "__main__":
    main()
