"""Loading and validating Prometheus alerting rule files; templates; the shipped defaults."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarm_maint.alerts.rules import (
    Template,
    humanize,
    humanize_duration,
    load_default_rules,
    load_rule_file,
    load_rules,
    parse_prom_duration,
)
from swarm_maint.errors import ConfigError

DEFAULT_FILE = (Path(__file__).parents[2] / "src" / "swarm_maint" / "alerts"
                / "default_rules.yml")

VALID = """\
groups:
  - name: gpu
    interval: 30s
    rules:
      - alert: GpuHot
        expr: swarm_gpu_temperature_celsius > 85
        for: 1h30m
        keep_firing_for: 5m
        labels:
          severity: warning
        annotations:
          summary: "GPU {{ $labels.gpu }} at {{ $value }} C"
          description: '{{ printf "%.1f" $value }} / {{ $value | humanize }}'
      - alert: GpuLost
        expr: swarm_gpu_lost == 1
  - name: node
    rules:
      - alert: GpuHot
        expr: vector(1)
"""


def write(tmp_path: Path, text: str, name: str = "rules.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_rule_file(p)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg.removeprefix(f"{p}: ")


def one_rule(body: str, group: str = "gpu") -> str:
    return f"groups:\n  - name: {group}\n    rules:\n" + body


def test_valid_file(tmp_path: Path) -> None:
    rules = load_rule_file(write(tmp_path, VALID))
    assert [(r.group, r.name) for r in rules] == [("gpu", "GpuHot"), ("gpu", "GpuLost"),
                                                  ("node", "GpuHot")]
    hot = rules[0]
    assert hot.for_seconds == 5400
    assert hot.keep_firing_for_seconds == 300
    assert hot.interval_seconds == 30
    assert hot.labels == {"severity": "warning"}
    assert hot.expr.text == "swarm_gpu_temperature_celsius > 85"
    assert hot.source == str(tmp_path / "rules.yml")
    assert hot.render_annotations({"gpu": "3"}, 91.25) == {
        "summary": "GPU 3 at 91.25 C", "description": "91.2 / 91.25"}
    assert rules[1].for_seconds == 0 and rules[1].labels == {}
    assert hot.to_json()["expr"] == hot.expr.text


def test_empty_file_has_no_rules(tmp_path: Path) -> None:
    assert load_rule_file(write(tmp_path, "")) == []
    assert load_rule_file(write(tmp_path, "groups: []\n")) == []


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("0", 0), ("0s", 0), ("1d", 86400),
    ("1w", 604800), ("500ms", 0.5), ("1y", 31536000), ("2h5s", 7205),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_prom_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1.5m", "5M", "30m1h", "m", "-1s", "5 m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_prom_duration(text)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "groups:\n  - name: gpu\n    rules: [\n  bad: }\n")
    assert msg.startswith("line 4, column ")
    assert "YAML syntax error: " in msg


def test_yaml_syntax_error_exact(tmp_path: Path) -> None:
    assert error_of(tmp_path, "groups:\n\t- name: x\n") == (
        "line 2, column 1: YAML syntax error: found character '\\t' that cannot start any token"
    )


def test_unknown_key_in_rule(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule(
        "      - alert: GpuLost\n        expr: swarm_gpu_lost == 1\n        severity: x\n"
    )) == ("group gpu, rule GpuLost: unknown key 'severity' (allowed: alert, expr, for, "
           "keep_firing_for, labels, annotations)")


def test_unknown_key_in_group_and_top(tmp_path: Path) -> None:
    assert error_of(tmp_path, "groups:\n  - name: g\n    limit: 3\n    rules: []\n") == (
        "group g: unknown key 'limit' (allowed: name, interval, rules)")
    assert error_of(tmp_path, "group: []\n") == "unknown key 'group' (allowed: groups)"


def test_bad_duration(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule(
        "      - alert: GpuLost\n        expr: swarm_gpu_lost == 1\n        for: 5 minutes\n"
    )) == ("group gpu, rule GpuLost: for: invalid duration '5 minutes'; write e.g. '30s', "
           "'5m' or '1h30m' (units y w d h m s ms, largest first)")


def test_unsupported_promql_names_rule_and_construct(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule(
        "      - alert: GpuXid\n"
        "        expr: max_over_time(rate(swarm_gpu_xid_errors_total[1m])[10m:1m]) > 0\n"
    )) == "group gpu, rule GpuXid: expr: subqueries are not supported"
    assert error_of(tmp_path, one_rule(
        "      - alert: Off\n        expr: swarm_gpu_lost offset 5m\n"
    )) == "group gpu, rule Off: expr: offset modifiers are not supported"


def test_invalid_promql(tmp_path: Path) -> None:
    msg = error_of(tmp_path, one_rule("      - alert: Bad\n        expr: 'sum(('\n"))
    assert msg.startswith("group gpu, rule Bad: expr: invalid PromQL expression 'sum((': ")


def test_scalar_expr_rejected(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule("      - alert: One\n        expr: '1'\n")) == (
        "group gpu, rule One: expr: must return an instant vector, not a scalar "
        "(wrap it in vector())")


def test_duplicate_name_in_group(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule(
        "      - alert: A\n        expr: vector(1)\n      - alert: A\n        expr: vector(2)\n"
    )) == "group gpu, rule A: duplicate alert name in the group"


def test_duplicate_group(tmp_path: Path) -> None:
    assert error_of(tmp_path, "groups:\n  - name: g\n  - name: g\n") == (
        "group g: duplicate group name")


def test_recording_rule_rejected(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule(
        "      - record: job:gpu_temp:max\n        expr: max(swarm_gpu_temperature_celsius)\n"
    )) == ("group gpu, rule job:gpu_temp:max: recording rules (record:) are not supported "
           "yet; only alerting rules (alert:)")


def test_missing_fields(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule("      - expr: vector(1)\n")) == (
        "group gpu, rule #1: alert: required, a name like GpuLost "
        "(letters, digits, underscores)")
    assert error_of(tmp_path, one_rule("      - alert: A\n")) == (
        "group gpu, rule A: expr: required, a PromQL expression string")
    assert error_of(tmp_path, "groups:\n  - rules: []\n") == (
        "group #1: name: required, a non-empty string")


def test_bad_template(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule(
        "      - alert: A\n        expr: vector(1)\n        annotations:\n"
        "          summary: 'value {{ .Value }}'\n"
    )) == "group gpu, rule A: annotations.summary: unsupported template construct '{{ .Value }}'"
    assert error_of(tmp_path, one_rule(
        "      - alert: A\n        expr: vector(1)\n        labels:\n"
        "          team: '{{ $labels.x | toUpper }}'\n"
    )) == ("group gpu, rule A: labels.team: unsupported template construct "
           "'{{ $labels.x | toUpper }}'")


def test_bad_label_value(tmp_path: Path) -> None:
    assert error_of(tmp_path, one_rule(
        "      - alert: A\n        expr: vector(1)\n        labels:\n          prio: 3\n"
    )) == "group gpu, rule A: labels.prio: expected a string, got 3"


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match=r"nope\.yml: cannot read the rule file: "):
        load_rule_file(p)


@pytest.mark.parametrize(("source", "labels", "value", "out"), [
    ("{{ $labels.gpu }}", {"gpu": "1"}, 0.0, "1"),
    ("{{$labels.gpu}}/{{ $labels.missing }}", {"gpu": "1"}, 0.0, "1/<no value>"),
    ("v={{ $value }}", {}, 3.0, "v=3"),
    ("v={{ $value }}", {}, 0.25, "v=0.25"),
    ("v={{ $value }}", {}, float("nan"), "v=NaN"),
    ("{{ $value | humanize }}", {}, 1234567.0, "1.235M"),
    ("{{ $value | humanize }}", {}, 0.0125, "12.5m"),
    ("{{ $value | humanize }}", {}, 12.0, "12"),
    ('{{ printf "%.1f" $value }}%', {}, 97.46, "97.5%"),
    ('{{ printf "%d GPUs" $value }}', {}, 7.0, "7 GPUs"),
    ('{{ printf "%5.2f|" $value }}', {}, 1.0, " 1.00|"),
    ('{{ printf "%.0f%%" $value }}', {}, 42.0, "42%"),
    ("no templates", {}, 1.0, "no templates"),
])
def test_templates_render(source: str, labels: dict[str, str], value: float, out: str) -> None:
    assert Template.compile(source).render(labels, value) == out


@pytest.mark.parametrize(("source", "problem"), [
    ("{{ .Labels.gpu }}", "unsupported template construct '{{ .Labels.gpu }}'"),
    ("{{ $value | humanizePercentage }}",
     "unsupported template construct '{{ $value | humanizePercentage }}'"),
    ("{{ $labels.gpu ", "unclosed '{{' in template '{{ $labels.gpu '"),
    ('{{ printf "%x" $value }}',
     "template construct '{{ printf \"%x\" $value }}': printf verb %x is not supported"),
    ('{{ printf "%f %f" $value }}',
     "template construct '{{ printf \"%f %f\" $value }}': "
     "printf needs exactly one verb for $value"),
])
def test_bad_templates(source: str, problem: str) -> None:
    with pytest.raises(ValueError, match="template") as ei:
        Template.compile(source)
    assert str(ei.value) == problem


def test_humanize_edges() -> None:
    assert humanize(0) == "0"
    assert humanize(-2500) == "-2.5k"
    # as Go's %.4g prints them, which Prometheus' helpers use
    assert humanize(float("inf")) == "+Inf"
    assert humanize(float("-inf")) == "-Inf"
    assert humanize(float("nan")) == "NaN"
    assert humanize_duration(float("nan")) == "NaN"
    assert humanize_duration(float("inf")) == "+Inf"


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool"
                                        if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool is not installed (apt-get install prometheus); "
                    "it is needed to check default_rules.yml")
    return path


def test_default_rules_pass_promtool() -> None:
    r = subprocess.run([promtool(), "check", "rules", str(DEFAULT_FILE)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_default_rules_load() -> None:
    rules = load_default_rules()
    names = {r.name for r in rules}
    assert {"Watchdog", "GpuXidNeedsResetOrReboot", "GpuUncorrectableEcc",
            "GpuRowRemapPending", "GpuRowRemapFailed", "GpuLost", "GpuCountBelowExpected",
            "GpuThermalThrottle", "DiskAlmostFull", "MemoryPressure",
            "HealthCheckCritical", "BackupFailed", "BackupTooOld", "MaintenanceJobFailed",
            "MaintenanceJobMissed", "SecurityPatchesPending", "UpdateFailed"} == names
    for r in rules:
        assert r.labels["severity"] in ("critical", "warning", "none"), r.name
        assert r.annotations.keys() >= {"summary", "description"}, r.name
    assert [r.name for r in load_rules([])] == [r.name for r in rules]
    assert load_rules([], include_defaults=False) == []
    assert load_rule_file(DEFAULT_FILE)[0].name == "Watchdog"
    by = {r.name: r for r in rules}
    assert by["GpuThermalThrottle"].for_seconds == 60
    assert by["DiskAlmostFull"].for_seconds == 300
    assert by["MemoryPressure"].for_seconds == 120


def test_load_rules_appends_files(tmp_path: Path) -> None:
    p = write(tmp_path, VALID)
    rules = load_rules([p])
    assert rules[0].name == "Watchdog"
    assert [r.name for r in rules[-3:]] == ["GpuHot", "GpuLost", "GpuHot"]


CLI = [sys.executable, "-m", "swarm_maint.cli.main"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_cli_rules_check(tmp_path: Path) -> None:
    good = write(tmp_path, VALID, "good.yml")
    r = run_cli("alerts", "rules", "check", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{good}: 3 rules OK\n"
    bad = write(tmp_path, one_rule("      - alert: A\n        expr: vector(1)\n"
                                   "        for: soon\n"), "bad.yml")
    r = run_cli("alerts", "rules", "check", str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith(f"swarm-maint: error: {bad}: group gpu, rule A: for: ")
    assert r.stderr.count("\n") == 1
    r = run_cli("alerts", "rules", "check", str(tmp_path / "missing.yml"))
    assert r.returncode == 2


@pytest.mark.slow
def test_cli_rules_list_has_defaults_and_configured_files(tmp_path: Path) -> None:
    import json

    mine = tmp_path / "mine.yml"
    mine.write_text("groups:\n  - name: site\n    rules:\n      - alert: Mine\n"
                    "        expr: swarm_load1 > 100\n        labels: {severity: page}\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[alerts]\nrule_files = ["{mine}"]\n')
    r = run_cli("alerts", "rules", "list", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data[0]["name"] == "Watchdog" and data[0]["labels"] == {"severity": "none"}
    assert "Mine" not in {d["name"] for d in data}
    r = run_cli("alerts", "rules", "list", "--json", "--config", str(cfg))
    assert {"Watchdog", "Mine"} <= {d["name"] for d in json.loads(r.stdout)}
    r = run_cli("alerts", "rules", "list", "--config", str(cfg))
    assert r.returncode == 0
    rows = [line.split("│") for line in r.stdout.splitlines() if "│" in line]
    cells = [[c.strip() for c in row] for row in rows]
    assert any(c[1:6] == ["gpu", "GpuLost", "critical", "0s", "swarm_gpu_lost == 1"]
               for c in cells)
    assert any(c[1:5] == ["site", "Mine", "page", "0s"] for c in cells)
