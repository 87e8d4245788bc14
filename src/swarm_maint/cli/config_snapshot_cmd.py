"""``swarm-maint config-snapshot create|list|diff|restore``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import UsageError
from .common import ConfigOption, JsonOption, effective_config, print_json

app = typer.Typer(help="Snapshots of system and workload configuration.",
                  no_args_is_help=True)


def _warn(errors: list[dict[str, str]]) -> None:
    for e in errors:
        typer.echo(f"warning: {e['path']}: {e['error']}", err=True)


@app.command("create")
def create(
    path: Annotated[list[str] | None, typer.Option(
        "--path", help="Snapshot these paths instead of the configured ones.")] = None,
    reason: Annotated[str, typer.Option(help="Why: manual, pre-update, periodic…")] = "manual",
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Snapshot the configured configuration paths now (exit 3: some could not be read)."""
    from ..backup.config_snapshots import create_config_snapshot, open_config_repo, snapshot_paths

    cfg = effective_config(config)
    paths = snapshot_paths(cfg, config) if not path else snapshot_paths(
        cfg, None, only=path, given=True)
    if not paths:
        raise UsageError("none of the configuration paths exists: "
                         + ", ".join(cfg.backup.config_snapshots.paths))
    res = create_config_snapshot(open_config_repo(cfg), paths, reason=reason)
    if json_out:
        print_json({"snapshot": res.snapshot_id, "paths": paths, "files": res.files,
                    "added_bytes": res.added_bytes, "partial": res.partial,
                    "errors": res.errors})
    else:
        _warn(res.errors)
        typer.echo(f"config snapshot {res.snapshot_id[:16]}: {res.files} files from "
                   f"{', '.join(paths)}"
                   + (" (PARTIAL: some files could not be read)" if res.partial else ""))
    if res.partial:
        raise typer.Exit(3)


@app.command("list")
def list_(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """The configuration snapshots, oldest first."""
    from ..backup.config_snapshots import existing_config_repo, list_config_snapshots

    repo = existing_config_repo(effective_config(config))
    snaps = list_config_snapshots(repo) if repo is not None else []
    if json_out:
        print_json([{"id": sid, **obj} for sid, obj in snaps])
        return
    t = Table()
    for col in ("id", "time", "reason", "paths", "files"):
        t.add_column(col)
    for sid, obj in snaps:
        reason = next((x.split(":", 1)[1] for x in obj.get("tags", [])
                       if x.startswith("reason:")), "")
        # Text: names and reasons are data, never Rich markup
        t.add_row(sid[:12], datetime.fromtimestamp(obj["time"], UTC).strftime(
            "%Y-%m-%d %H:%M:%S"), Text(reason), Text("\n".join(obj.get("paths", []))),
                  str(obj.get("summary", {}).get("files", "")))
    Console().print(t)


@app.command("diff")
def diff(a: str, b: str, config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Unified diff of the configuration between snapshots A and B ('latest' works)."""
    from ..backup.config_snapshots import config_diff, existing_config_repo

    repo = existing_config_repo(effective_config(config))
    if repo is None:
        raise UsageError("there are no configuration snapshots yet")
    d = config_diff(repo, a, b)
    if json_out:
        print_json({"a": d.a, "b": d.b, "changes": d.changes, "diff": d.text})
    else:
        typer.echo(d.text, nl=False)


@app.command("restore")
def restore(
    snapshot: str,
    include: Annotated[list[str] | None, typer.Option(
        "--include", help="Restore only these paths (globs).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Put configuration files back in place; takes a safety snapshot first."""
    from ..backup.config_snapshots import existing_config_repo, restore_config_snapshot

    repo = existing_config_repo(effective_config(config))
    if repo is None:
        raise UsageError("there are no configuration snapshots yet")
    if not yes and not typer.confirm("overwrite configuration files in place?"):
        raise typer.Abort()
    res = restore_config_snapshot(repo, snapshot, includes=include or [])
    if json_out:
        print_json({"snapshot": res.snapshot_id, "safety_snapshot": res.safety_snapshot,
                    "written": res.written, "unsaved": res.unsaved, "errors": res.errors})
    else:
        if res.safety_snapshot:
            left = (f" (partial: {len(res.unsaved)} path(s) it could not save are left "
                    "as they are)" if res.unsaved else "")
            typer.echo(f"safety snapshot {res.safety_snapshot[:16]} taken first{left}")
        typer.echo(f"restored {len(res.written)} file(s) from {res.snapshot_id[:16]}")
        for e in res.errors:
            typer.echo(f"error: {e['path']}: {e['error']}", err=True)
    if res.errors:
        raise typer.Exit(3)
