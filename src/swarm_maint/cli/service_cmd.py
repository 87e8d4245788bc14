"""``swarm-maint service install|uninstall``: the systemd unit of the agent."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOption, JsonOption, effective_config, print_json

app = typer.Typer(help="The systemd unit that runs the agent at boot (guide: docs/deploy.md).",
                  no_args_is_help=True)

UserOption = Annotated[bool, typer.Option(
    "--user", help="A user unit (~/.config/systemd/user, `systemctl --user`) instead of the "
    "system unit; state under $XDG_STATE_HOME.")]
UnitDirOption = Annotated[Path | None, typer.Option(
    "--unit-dir", help="Directory of the unit file (default: /etc/systemd/system, or "
    "~/.config/systemd/user with --user).", file_okay=False)]
SystemctlOption = Annotated[Path, typer.Option(
    "--systemctl", help="The systemctl to run (for images and tests).", dir_okay=False)]


def _unit_dir(unit_dir: Path | None, user: bool) -> Path:
    from ..deploy import default_unit_dir

    return unit_dir if unit_dir is not None else default_unit_dir(user)


@app.command("install")
def install(
    config: ConfigOption = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="State directory of the agent (default for the system unit: "
        "/var/lib/swarm-maint unless the config sets agent.state_dir).", file_okay=False)
    ] = None,
    user: UserOption = False,
    unit_dir: UnitDirOption = None,
    no_enable: Annotated[bool, typer.Option(
        "--no-enable", help="Do not enable the unit (it will not start at boot).")] = False,
    no_start: Annotated[bool, typer.Option(
        "--no-start", help="Do not start (or restart) the agent now.")] = False,
    systemctl: SystemctlOption = Path("systemctl"),
    print_only: Annotated[bool, typer.Option(
        "--print", help="Only print the unit to stdout; write and run nothing.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Write the unit, reload systemd, enable it and start the agent."""
    from .. import deploy

    if config is None and os.environ.get("SWARM_MAINT_CONFIG"):
        config = Path(os.environ["SWARM_MAINT_CONFIG"])
    state = deploy.unit_state_dir(state_dir, config, user)  # loads (validates) the config
    executable = deploy.default_executable()
    if print_only:
        if config is not None:
            from ..config import load_config

            load_config(config)  # the same check as install
        sys.stdout.write(deploy.render_unit(executable, config, state, user))
        return
    result = deploy.install(_unit_dir(unit_dir, user), executable, config, state,
                            systemctl=[str(systemctl)], enable=not no_enable,
                            start=not no_start, user=user)
    for warning in result.warnings:
        sys.stderr.write(f"swarm-maint: warning: {warning}\n")
    if json_out:
        print_json(result.to_json())
        return
    done = [w for w, on in (("enabled", result.enabled), ("started", result.started)) if on]
    typer.echo(f"{'replaced' if result.replaced else 'wrote'} {result.unit_path}"
               + (f"; {' and '.join(done)} {deploy.UNIT_NAME}" if done else ""))
    scope = "--user " if user else ""
    typer.echo(f"check it: systemctl {scope}status swarm-maint; "
               f"journalctl {'--user-unit' if user else '-u'} swarm-maint -f")


@app.command("uninstall")
def uninstall(
    user: UserOption = False,
    unit_dir: UnitDirOption = None,
    systemctl: SystemctlOption = Path("systemctl"),
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop and disable the agent's unit, remove the file, reload systemd (state is kept).
    ``--config`` is accepted like everywhere and only validated."""
    from .. import deploy

    if config is not None:
        effective_config(config)
    result = deploy.uninstall(_unit_dir(unit_dir, user), systemctl=[str(systemctl)], user=user)
    if json_out:
        print_json(result.to_json())
        return
    typer.echo(f"stopped, disabled and removed {result.unit_path} (the state directory is kept)")
