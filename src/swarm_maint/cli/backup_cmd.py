"""``swarm-maint backup …``: thin commands over swarm_maint.backup."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import SwarmMaintError, UsageError
from .backup_ops import (
    PhaseProgress,
    backup_restore,
    backup_run,
    locked,
    open_repo,
    read_password,
)
from .common import ConfigOption, JsonOption, check_config, print_json
from .plain import shown_path, shown_text

app = typer.Typer(help="Deduplicated, encrypted backups.", no_args_is_help=True)
key_app = typer.Typer(help="Passwords that open a repository.", no_args_is_help=True)
app.add_typer(key_app, name="key")

RepoOption = Annotated[
    str, typer.Option("--repo", "-r", help="Repository: a path (s3:// and http:// later).")
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option("--password-file", help="File whose first line is the password "
                 "(default: $SWARM_MAINT_PASSWORD).", dir_okay=False),
]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("init")
def init(repo: RepoOption, password_file: PasswordFileOption = None,
         json_out: JsonOption = False, config: ConfigOption = None) -> None:
    """Create a new, empty, encrypted repository."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.repository import Repository
    from ..backup.storage import open_storage

    r = Repository.init(open_storage(repo), read_password(password_file, confirm=True))
    if json_out:
        print_json({"repository": r.id, "location": r.storage.location()})
    else:
        typer.echo(f"created repository {r.id[:16]} at {r.storage.location()}")


def _given_path(value: str, what: str) -> Path:
    """A path from the command line; an empty one (an unset variable in a script) would
    mean the working directory, so it is refused."""
    if not value.strip():
        raise UsageError(f"{what}: empty path")
    return Path(value)


@app.command("run")
def run(
    paths: Annotated[list[str], typer.Argument(help="Files and directories to back up.")],
    repo: RepoOption,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the snapshot.")] = None,
    exclude: Annotated[list[str] | None,
                       typer.Option("--exclude", help="Glob of paths to leave out.")] = None,
    one_file_system: Annotated[bool, typer.Option(
        "--one-file-system", help="Do not cross into other filesystems.")] = False,
    no_lease: Annotated[bool, typer.Option(
        "--no-lease", help="Do not take the node's maintenance lease (a backup of other "
        "data while a scheduled job runs).")] = False,
    password_file: PasswordFileOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Back up PATHs as a new snapshot (incremental: unchanged data is not stored again).

    Takes the node's maintenance lease like the scheduled jobs (exit 31 while an update,
    a scheduled backup or an active diagnostic holds it), unless --no-lease."""
    code = backup_run([_given_path(p, "PATH") for p in paths], repo, tag=tag or (),
                      exclude=exclude or (),
                      one_file_system=one_file_system, no_lease=no_lease,
                      password_file=password_file, config=config, json_out=json_out)
    if code:
        raise typer.Exit(code)


@app.command("snapshots")
def snapshots(repo: RepoOption, password_file: PasswordFileOption = None,
              json_out: JsonOption = False, config: ConfigOption = None) -> None:
    """List the snapshots, oldest first."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.snapshots import list_snapshots

    r = open_repo(repo, password_file)
    damaged: list[str] = []
    snaps = list_snapshots(r, damaged=damaged)
    for sid in damaged:  # the readable ones are still listed
        typer.echo(f"warning: snapshot {sid[:16]} cannot be read (damaged; run `swarm-maint "
                   "backup verify`)", err=True)
    if json_out:
        print_json([{"id": sid, **obj} for sid, obj in snaps])
    else:
        _snapshot_table(snaps)
    if damaged:
        raise typer.Exit(13)


def _snapshot_table(snaps: list[tuple[str, dict[str, Any]]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table()
    for col in ("id", "time", "host", "tags", "paths", "files", "size", "partial"):
        t.add_column(col, no_wrap=col in ("id", "time"))
    for sid, obj in snaps:
        s = obj.get("summary", {})
        t.add_row(sid[:12], _when(obj["time"]), escape(obj.get("hostname", "")),
                  escape(",".join(obj.get("tags", []))),
                  escape("\n".join(obj.get("paths", []))),
                  str(s.get("files", "")), f"{s.get('bytes', 0) / 2**20:.1f} MiB",
                  "yes" if obj.get("partial") else "")
    Console().print(t)


@app.command("ls")
def ls(snapshot: Annotated[str, typer.Argument(help="Snapshot id, prefix or 'latest'.")],
       repo: RepoOption, password_file: PasswordFileOption = None,
       json_out: JsonOption = False, config: ConfigOption = None) -> None:
    """List the files of a snapshot."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.snapshots import list_files

    r = open_repo(repo, password_file)
    rows = [(path, node) for path, node in list_files(r, snapshot)]
    if json_out:
        print_json([{"path": p, "type": n["type"], "size": n.get("size", 0),
                     "mode": n.get("mode"), "mtime_ns": n.get("mtime_ns")} for p, n in rows])
        return
    for path, node in rows:
        typer.echo(f"{node['type'][0]} {oct(node.get('mode', 0))[2:]:>4} "
                   f"{node.get('size', 0):>12} {shown_path(path)}")


@app.command("restore")
def restore(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id, prefix or 'latest'.")],
    repo: RepoOption,
    target: Annotated[str, typer.Option("--target", help="Directory to restore into.")],
    include: Annotated[list[str] | None,
                       typer.Option("--include", help="Restore only matching paths.")] = None,
    password_file: PasswordFileOption = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Restore a snapshot into TARGET, verifying every chunk."""
    code = backup_restore(snapshot, repo, _given_path(target, "--target"),
                          include=include or (),
                          password_file=password_file, json_out=json_out, config=config)
    if code:
        raise typer.Exit(code)


@app.command("diff")
def diff(a: str, repo: RepoOption,
         b: Annotated[str | None, typer.Argument(
             help="The later snapshot; without it, A is compared with its parent.",
             show_default=False)] = None,
         password_file: PasswordFileOption = None,
         json_out: JsonOption = False, config: ConfigOption = None) -> None:
    """What changed from snapshot A to snapshot B (+ added, - removed, M modified); given
    one snapshot, what changed since its parent (the backup of the same paths before it)."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.snapshots import diff_snapshots, with_parent

    r = open_repo(repo, password_file)
    if b is None:
        a, b = with_parent(r, a)
    changes = diff_snapshots(r, a, b)
    if json_out:
        print_json([{"change": c, "path": p} for c, p in changes])
    else:
        for c, p in changes:
            typer.echo(f"{c} {shown_path(p)}")


@app.command("verify")
def verify(
    repo: RepoOption,
    read_data: Annotated[bool, typer.Option("--read-data", help="Decrypt and hash all data.")]
    = False,
    read_data_subset: Annotated[float | None, typer.Option(
        "--read-data-subset", help="Read this percentage of the packs (0-100].")] = None,
    password_file: PasswordFileOption = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Check structure and index; with --read-data also every byte. Non-zero when damaged."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.verify import verify as do_verify

    if read_data_subset is not None and not 0 < read_data_subset <= 100:
        raise UsageError("--read-data-subset must be in (0, 100]")
    if read_data and read_data_subset is not None:
        raise UsageError("give --read-data or --read-data-subset, not both")
    r = open_repo(repo, password_file)
    with locked(r, exclusive=False, reading=True), PhaseProgress(not json_out) as bar:
        report = do_verify(r, read_data=read_data, read_data_subset=read_data_subset,
                           progress=bar)
    if json_out:
        print_json(report.to_dict())
    else:
        for line in report.lines():
            typer.echo(shown_text(line))  # names under packs/ may be anyone's
    if not report.ok:
        raise typer.Exit(1)


@app.command("forget")
def forget(
    repo: RepoOption,
    snapshot_ids: Annotated[list[str] | None, typer.Argument(
        help="Snapshot ids or unique prefixes to forget instead of a keep policy (damaged "
        "snapshots too).", show_default=False)] = None,
    keep_last: Annotated[int | None, typer.Option(min=0, show_default=False)] = None,
    keep_hourly: Annotated[int | None, typer.Option(min=0, show_default=False)] = None,
    keep_daily: Annotated[int | None, typer.Option(min=0, show_default=False)] = None,
    keep_weekly: Annotated[int | None, typer.Option(min=0, show_default=False)] = None,
    keep_monthly: Annotated[int | None, typer.Option(min=0, show_default=False)] = None,
    keep_yearly: Annotated[int | None, typer.Option(min=0, show_default=False)] = None,
    keep_tag: Annotated[list[str] | None, typer.Option("--keep-tag")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Reclaim space afterwards.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    password_file: PasswordFileOption = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Remove snapshots outside the keep policy, or the ones named; --prune also frees
    their space."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.prune import prune as do_prune
    from ..backup.retention import forget as do_forget
    from ..backup.retention import forget_snapshots
    from ..backup.snapshots import resolve_snapshot_id

    policy = (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    # a keep option given as 0 is a policy too: with ids it is as ambiguous as any other
    if snapshot_ids and (any(k is not None for k in policy) or keep_tag):
        raise UsageError("give snapshot ids or a keep policy, not both")
    r = open_repo(repo, password_file)
    with locked(r, exclusive=True), PhaseProgress(prune and not json_out) as bar:
        if snapshot_ids:
            res = forget_snapshots(r, [resolve_snapshot_id(r, s) for s in snapshot_ids],
                                   dry_run=dry_run)
        else:
            # all_readable: prune would refuse an unreadable snapshot: forget nothing either
            res = do_forget(r, keep_last=keep_last or 0, keep_hourly=keep_hourly or 0,
                            keep_daily=keep_daily or 0, keep_weekly=keep_weekly or 0,
                            keep_monthly=keep_monthly or 0, keep_yearly=keep_yearly or 0,
                            keep_tags=keep_tag or [], dry_run=dry_run, all_readable=prune)
        try:
            pr = do_prune(r, dry_run=dry_run, progress=bar) if prune else None
        except SwarmMaintError as exc:
            if res.removed and not dry_run:  # say what forget did before prune stopped
                exc.args = (f"{exc} (forget had already removed {len(res.removed)} "
                            f"snapshot(s): {', '.join(s[:12] for s in res.removed)}; a later "
                            "prune frees their space)",)
            raise
    out: dict[str, Any] = {"removed": list(res.removed), "kept": [k for k, _ in res.kept],
                           "unreadable": list(res.unreadable)}
    if pr is not None:
        out["prune"] = pr.to_dict()
    if json_out:
        print_json(out)
    else:
        verb = "would remove" if dry_run else "removed"
        kept = "" if snapshot_ids else f", kept {len(res.kept)}"
        typer.echo(f"{verb} {len(res.removed)} snapshot(s){kept}")
        for sid in res.unreadable:
            typer.echo(f"warning: snapshot {sid[:16]} cannot be read: left alone (run "
                       "`swarm-maint backup verify`)", err=True)
        if pr is not None:
            typer.echo(pr.summary())


@app.command("prune")
def prune(repo: RepoOption, dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
          password_file: PasswordFileOption = None, json_out: JsonOption = False,
          config: ConfigOption = None) -> None:
    """Delete data no snapshot uses; repack packs that are mostly garbage."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.prune import prune as do_prune

    r = open_repo(repo, password_file)
    with locked(r, exclusive=True), PhaseProgress(not json_out) as bar:
        pr = do_prune(r, dry_run=dry_run, progress=bar)
    if json_out:
        print_json(pr.to_dict())
    else:
        typer.echo(pr.summary())


@app.command("repair")
def repair(repo: RepoOption, read_data: Annotated[bool, typer.Option(
    "--read-data", help="Read every pack whole and salvage the intact blobs of damaged "
    "ones (without it only pack headers are read).")] = False,
           dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
           password_file: PasswordFileOption = None, json_out: JsonOption = False,
           config: ConfigOption = None) -> None:
    """Rebuild the index from the packs, salvaging what damaged packs still hold.

    Exits 1 when snapshots still need data that no pack holds (listed, with the files):
    back up the same paths again to store what still exists, or forget those snapshots."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.repair import repair as do_repair
    from ..backup.verify import verify as do_verify

    r = open_repo(repo, password_file)
    with locked(r, exclusive=True), PhaseProgress(not json_out) as bar:
        res = do_repair(r, read_data=read_data, dry_run=dry_run, progress=bar)
        # what is left: snapshots that need data no pack holds (a dry run changed nothing)
        report = None if dry_run else do_verify(r, progress=bar)
    if json_out:
        print_json({"repair": res.to_dict(),
                    "verify": report.to_dict() if report is not None else None})
    else:
        typer.echo(shown_text(res.summary()))
        if report is not None and not report.ok:
            for line in report.lines():
                typer.echo(shown_text(line))
        elif report is not None:
            typer.echo("the repository verifies clean (structure)")
    if report is not None and not report.ok:
        raise typer.Exit(1)


@app.command("unlock")
def unlock(repo: RepoOption, remove_all: Annotated[bool, typer.Option(
    "--remove-all", help="Also remove locks that look alive.")] = False,
           config: ConfigOption = None) -> None:
    """Remove stale locks (dead process on this host, or expired)."""
    check_config(config)  # a bad --config is an error here too
    from ..backup.locks import remove_all_locks, remove_stale_locks
    from ..backup.storage import open_storage

    storage = open_storage(repo)
    if not storage.exists("config"):
        from ..backup.errors import RepositoryNotFoundError

        raise RepositoryNotFoundError(f"{storage.location()}: no repository here")
    n = remove_all_locks(storage) if remove_all else len(remove_stale_locks(storage))
    typer.echo(f"removed {n} lock(s)")


@key_app.command("add")
def key_add(repo: RepoOption, new_password_file: Annotated[Path, typer.Option(
    "--new-password-file", help="File holding the new password.", dir_okay=False)],
            password_file: PasswordFileOption = None, config: ConfigOption = None) -> None:
    """Let another password open the repository."""
    check_config(config)  # a bad --config is an error here too
    r = open_repo(repo, password_file)
    from ..backup.passwords import read_password_file

    name = r.add_password(read_password_file(new_password_file, "--new-password-file"))
    typer.echo(f"added {name}")
