"""What the numbers were measured on: cores, CPU model, Python, Prefect, command."""

from __future__ import annotations

import os
import platform
import shlex
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(argv: list[str] | None = None) -> dict[str, str]:
    import prefect

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    cmd = "python -m bench" + ("" if not (argv or sys.argv[1:]) else " " + shlex.join(argv or sys.argv[1:]))
    return {
        "cores": str(cores),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "command": cmd,
    }
