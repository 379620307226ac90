"""``vidbatch status`` and ``vidbatch deploy``, registered on the main Typer app.

Imported at the end of ``vidbatch/cli.py`` so the commands join the app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vidbatch.cli import app, fail, guarded, out

COLOURS = {"done": "green", "in_flight": "cyan", "failed": "red", "not_started": "yellow"}


@app.command("status")
def status_cmd(
    manifest: str = typer.Argument(..., help="Manifest path or fsspec URL."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (every item that is not done)."),
    show: int = typer.Option(20, "--show", help="List up to this many items per state (0: counts only)."),
) -> None:
    """Done / in flight / failed / not started, from the shared state. Runs nothing."""

    def body() -> int:
        from vidbatch.manifest import load_manifest
        from vidbatch.status import STATES, compute

        m = load_manifest(manifest)
        st = compute(m)
        if as_json:
            typer.echo(json.dumps(st.to_json(), indent=2, default=str))
            return 0
        counts = Table(title=f"status: {m.name}")
        for s in STATES:
            counts.add_column(s.replace("_", " "), justify="right")
        counts.add_row(*(f"[{COLOURS[s]}]{st.counts[s]}[/]" for s in STATES))
        out.print(counts)
        for state in ("in_flight", "failed", "not_started"):
            rows = [i for i in st.items if i.state == state]
            if not rows or show <= 0:
                continue
            t = Table(title=f"{state.replace('_', ' ')} ({len(rows)})", title_justify="left")
            t.add_column("input", overflow="fold")
            t.add_column("provider")
            t.add_column("detail", overflow="fold")
            for i in rows[:show]:
                detail = i.detail
                if i.request_id:
                    detail = f"{detail}: job {i.request_id}"
                if i.age_seconds is not None:
                    detail += f" ({int(i.age_seconds)} s ago)"
                t.add_row(i.input, i.provider, detail)
            if len(rows) > show:
                t.add_row(f"... {len(rows) - show} more (--show N, --json)", "", "")
            out.print(t)
        out.print(f"state: {st.state_root}")
        out.print(f"last report: {st.report}" + ("" if st.report_found else " (none yet)"))
        if st.backfill:
            b = st.backfill
            out.print(f"last backfill: {b['run']} ({b['items']} items in {b['shards']} shards, {b['created_at']})")
        return 0

    guarded(body)


def _repo_root() -> Path:
    """The checkout this vidbatch runs from (an editable install), else the current folder."""
    import vidbatch

    here = Path(vidbatch.__file__).resolve().parent.parent
    if (here / "deployments" / "prefect.yaml").exists():
        return here
    return Path.cwd()


@app.command("deploy")
def deploy_cmd(
    prefect_file: Optional[str] = typer.Option(None, help="Default: deployments/prefect.yaml of this checkout."),
) -> None:
    """Create the `vidbatch` work pool and deploy every deployment of deployments/prefect.yaml.

    The same as `prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml`
    from the repository root, plus the automations that let backfills rerun shards
    whose worker died. Needs PREFECT_API_URL (a running server).
    """

    def body() -> int:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            fail("PREFECT_API_URL is not set; start a server (prefect server start) and export its API URL", 2)
        root = _repo_root()
        pf = Path(prefect_file).resolve() if prefect_file else root / "deployments" / "prefect.yaml"
        if not pf.exists():
            fail(f"{pf} not found; give --prefect-file", 2)
        prefect = [sys.executable, "-m", "prefect"]
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        pools = subprocess.run([*prefect, "work-pool", "inspect", "vidbatch"], cwd=root, env=env,
                               capture_output=True, text=True)
        if pools.returncode != 0:
            made = subprocess.run([*prefect, "work-pool", "create", "vidbatch", "--type", "process"], cwd=root,
                                  env=env, capture_output=True, text=True)
            if made.returncode != 0:
                fail(f"cannot create work pool vidbatch: {(made.stderr or made.stdout).strip()[-300:]}", 1)
            out.print("created work pool [bold]vidbatch[/] (process)")
        done = subprocess.run([*prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(pf)], cwd=root,
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"prefect deploy failed: {(done.stderr or done.stdout).strip()[-500:]}", 1)
        import asyncio

        from vidbatch.flows.backfill import ensure_automations

        asyncio.run(ensure_automations())
        out.print("deployed: process-manifest/nightly, backfill-manifest/backfill, process-manifest/shard")
        out.print(f"start workers from {root}: [bold]prefect worker start --pool vidbatch[/]")
        return 0

    guarded(body)
