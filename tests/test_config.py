import re
import subprocess
import sys
from pathlib import Path

import pytest

from swarm_maint.config import Config, iter_keys, load_config, parse_listen
from swarm_maint.docgen import render
from swarm_maint.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_contract() -> None:
    cfg = load_config(None)
    assert cfg.agent.listen == "127.0.0.1:9310"
    assert cfg.monitoring.interval == 1.0
    assert "gpu" in cfg.monitoring.collectors
    assert not cfg.monitoring.collectors_explicit()


def test_state_dir_default_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert Config().agent.resolved_state_dir() == tmp_path / "swarm-maint"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert Config().agent.resolved_state_dir() == Path.home() / ".local/state/swarm-maint"


def test_valid_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[agent]
listen = "[::1]:9400"
node_name = "gpu-node-17"
[monitoring]
interval = "500ms"
collectors = ["cpu", "gpu"]
[monitoring.history]
retention = "14d"
"""))
    assert cfg.agent.node_name == "gpu-node-17"
    assert cfg.monitoring.interval == 0.5
    assert cfg.monitoring.history.retention == 14 * 86400
    assert cfg.monitoring.collectors_explicit()


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[agent]\nlisten = 'nowhere'\n", "agent.listen", "HOST:PORT"),
        ("[agent]\nlistne = '1.2.3.4:1'\n", "agent.listne", "unknown key"),
        ("[monitoring]\ninterval = 'fast'\n", "monitoring.interval", "invalid duration"),
        ("[monitoring]\ninterval = '10ms'\n", "monitoring.interval", "at least 100ms"),
        ("[monitoring.history]\nretention = '0s'\n", "monitoring.history.retention",
         "greater than zero"),
        ("[monitoring.disk]\nexclude_devices = '('\n", "monitoring.disk.exclude_devices",
         "regular expression"),
        ("[monitoring]\ncollectors = ['cpu', 'cpu']\n", "monitoring.collectors", "twice"),
        ("[monitoring]\ninterval = 5\ncollectors = 'cpu'\n", "monitoring.collectors", "list"),
        ("[nonsense]\n", "nonsense", "unknown key"),
        ("[[alerts.receivers]]\nname = 'a'\ntype = 'pager'\nurl = 'http://x'\n",
         "alerts.receivers[0]",
         "unknown type 'pager' (known: alertmanager, email, slack, webhook)"),
        ("[[alerts.receivers]]\nname = 'a'\nurl = 'u'\n", "alerts.receivers[0]",
         "needs url"),
        ("[[alerts.receivers]]\nname = 'a'\nurl = 'http://x'\n[[alerts.receivers]]\n"
         "name = 'a'\nurl = 'http://x'\n", "alerts", "used twice"),
        ("[[alerts.receivers]]\nname = 'a'\ntype = 'email'\nsmtp_host = 'h'\n",
         "alerts.receivers[0]", "needs from_address and to"),
        ("[[alerts.routes]]\nreceivers = ['nope']\n", "alerts", "names receiver 'nope'"),
        ("[[alerts.routes]]\nreceivers = []\n", "alerts.routes[0].receivers", "at least 1"),
        ("[alerts]\nmaintenance_expected = ['x=~(']\n", "alerts.maintenance_expected",
         "bad regular expression"),
        # TOML's nan passes every minimum (all comparisons are false); inf and 1e400
        # overflow the calendar and have no JSON spelling
        ("[monitoring]\ninterval = nan\n", "monitoring.interval", "not a finite duration"),
        ("[monitoring]\ninterval = inf\n", "monitoring.interval", "not a finite duration"),
        ("[schedule]\njitter = 1e400\n", "schedule.jitter", "not a finite duration"),
        ("[schedule]\njitter = '6000w'\n", "schedule.jitter", "longer than 100 years"),
        ("[schedule.jobs.health]\nschedule = '0 3 31 2 *'\n", "schedule.jobs.health.schedule",
         "never fires"),
        ("[[backup.jobs]]\nname = 'x'\npaths = ['/d']\nschedule = '0 0 30 2 *'\n",
         "backup.jobs[0].schedule", "never fires"),
        ("[backup.config_snapshots]\npaths = ['']\n", "backup.config_snapshots.paths",
         "empty path"),
        ("[health.thresholds]\ngpu_temperature_warning = nan\n",
         "health.thresholds.gpu_temperature_warning", "finite number"),
        ("[health.thresholds]\ndisk_used_warning = 0.99\ndisk_used_critical = 0.5\n",
         "health.thresholds", "disk_used_warning (0.99) is above disk_used_critical (0.5)"),
        ("[health]\ninterval = '0s'\n", "health.interval", "greater than 0"),
        ("[[alerts.receivers]]\nname = 'r'\ntype = 'alertmanager'\nurl = 'http://h:1'\n"
         "resend_interval = '0s'\n", "alerts.receivers[0].resend_interval", "greater than 0"),
        ("[[backup.jobs]]\nname = 'x'\npaths = ['data/models']\n", "backup.jobs[0].paths",
         "give an absolute path"),
    ],
)
def test_invalid_values_name_file_key_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: key {key}: "), msg
    assert problem in msg
    assert "\n" not in msg


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TOML syntax error"):
        load_config(write(tmp_path, "[agent\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(tmp_path / "bin.toml")


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9310") == ("127.0.0.1", 9310)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen("localhost:1") == ("localhost", 1)
    for bad in ("127.0.0.1", ":80", "host:0", "host:70000", "a b:1"):
        with pytest.raises(ValueError, match=r"HOST:PORT|outside"):
            parse_listen(bad)


def test_every_key_has_help_and_is_documented() -> None:
    doc = (ROOT / "docs/configuration.md").read_text()
    keys = iter_keys()
    assert len(keys) > 15
    for key, _default, help_text in keys:
        assert help_text, f"{key} has no description"
        assert f"`{key}`" in doc, f"{key} missing from docs/configuration.md"
    # the generated table is exactly what the models say (run `make docs` to refresh)
    assert render(doc) == doc


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarm_maint.cli.main", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_cli_config_check(tmp_path: Path) -> None:
    good = write(tmp_path, "[monitoring]\ninterval = '2s'\n")
    r = run_cli("config", "check", str(good))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[monitoring]\ninterval = 'often'\n")
    r = run_cli("config", "check", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0] and "monitoring.interval" in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_config_show_round_trips(tmp_path: Path) -> None:
    r = run_cli("config", "show", "--defaults")
    assert r.returncode == 0, r.stderr
    assert re.search(r'^interval = "1s"$', r.stdout, re.M)
    # what `show` prints is itself a valid config equal to the defaults
    path = write(tmp_path, r.stdout)
    assert load_config(path) == Config()
    custom = write(tmp_path, "[monitoring]\ninterval = '90s'\n")
    r = run_cli("config", "show", "--config", str(custom))
    assert 'interval = "1m30s"' in r.stdout


def test_every_command_takes_config_as_the_contract_says() -> None:
    """ARCHITECTURE.md: every command takes --config FILE (and --json where it prints
    data). The two that check a file they are given are the exceptions."""
    import typer

    from swarm_maint.cli.main import app

    def walk(cmd: object, path: list[str]) -> list[tuple[str, set[str]]]:
        subs = getattr(cmd, "commands", None)
        if subs:
            return [row for name, sub in subs.items() for row in walk(sub, [*path, name])]
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}  # type: ignore[attr-defined]
        return [(" ".join(path), opts)]

    commands = walk(typer.main.get_command(app), [])
    assert len(commands) > 40
    missing = [name for name, opts in commands if "--config" not in opts
               and name not in {"config check", "alerts rules check"}]
    assert missing == []


def test_a_leap_day_schedule_is_valid() -> None:
    from swarm_maint.schedule.cron import check_cron

    assert check_cron("0 0 29 2 *") == "0 0 29 2 *"  # every four years, but it fires


def test_print_json_writes_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from swarm_maint.cli.plain import print_json

    print_json({"a": float("nan"), "b": [1.5, float("-inf")], "c": ("x", 2)})
    out = capsys.readouterr().out
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON {c}")) == {
        "a": None, "b": [1.5, None], "c": ["x", 2]}


@pytest.mark.parametrize(("text", "problem"), [
    ('[[health.custom]]\nname="x"\ncommand=["true"]\n[[health.custom]]\nname="x"\n'
     'command=["false"]\n', "key health: two health checks share the name(s) x"),
    ('[[health.custom]]\nname="gpu_count"\ncommand=["true"]\n',
     "share the name(s) gpu_count"),  # a custom check named like a built-in one
    ('[health]\nfamilies=["nosuch"]\n', "no plugin 'nosuch'"),
    ("[health.checks.nosuch]\nenabled=false\n", "key health.checks: no such check: nosuch"),
    ('[alerts]\nrule_files=["/nonexistent.yml"]\n', "cannot read the rule file"),
])
def test_config_check_also_checks_what_the_file_names(
        tmp_path: Path, text: str, problem: str) -> None:
    """The agent would refuse these at start (or ignore a typo): `config check` says so."""
    path = write(tmp_path, text)
    r = subprocess.run([sys.executable, "-m", "swarm_maint.cli.main", "config", "check",
                        str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and problem in r.stderr, r.stderr
