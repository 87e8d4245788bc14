"""``swarm-maint status``: the node summary, from the running agent or read locally."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import Config, parse_listen
from ..config.base import is_http_url
from ..errors import UsageError
from .common import ConfigOption, JsonOption, effective_config, print_json


def _agent_url(cfg: Config) -> str:
    host, port = parse_listen(cfg.agent.listen)
    if host in {"0.0.0.0", ""}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def agent_base(cfg: Config, url: str | None) -> str:
    """The agent's base URL: ``--url`` when given (it must be one), else the config's."""
    if url is None:
        return _agent_url(cfg)
    if not is_http_url(url):
        raise UsageError(f"--url {url!r}: give http://HOST:PORT (or https://)")
    return url.rstrip("/")


_NOT_JSON = object()


def ask_agent(base: str, path: str) -> Any:
    """The JSON the agent at ``base`` answers for ``path``: None when nothing answers
    there, ``_NOT_JSON`` when something that is not a swarm-maint agent does."""
    import httpx

    try:
        resp = httpx.get(f"{base}{path}", timeout=3.0)
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    try:
        return resp.json()
    except ValueError:
        return _NOT_JSON


def fetch_or_collect(cfg: Config, url: str | None) -> dict[str, Any]:
    """Ask the running agent; when none answers, read the node directly (two samples)."""
    from ..monitoring.oneshot import local_hub
    from ..monitoring.summary import node_summary

    base = agent_base(cfg, url)
    answer = ask_agent(base, "/api/v1/status")
    if isinstance(answer, dict) and "version" in answer:
        answer["source"] = f"agent at {base}"
        return answer
    hub = local_hub(cfg)
    try:
        data = node_summary(hub)
    finally:
        hub.close()
    data.setdefault("health", None)  # known to the agent only: null, as documented
    data.setdefault("jobs", [])
    why = "no agent answered" if answer is None else "no swarm-maint agent answered"
    data["source"] = f"read locally ({why} at {base})"
    return data


def _bytes(v: float | None) -> str:
    if v is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return "-"  # unreachable


def _time(ts: float | None) -> str:
    from datetime import datetime

    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime(
        "%Y-%m-%d %H:%M")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f} %"


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(data: dict[str, Any], console: Console) -> None:
    head = Table(title=f"swarm-maint · node {data['node']}", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    cpu, mem, net, disk = data["cpu"], data["memory"], data["network"], data["disk"]
    head.add_row("source", escape(data.get("source", "")))
    head.add_row("version", escape(data["version"]))
    head.add_row("CPU", f"{_pct(cpu['utilization'])} of {_num(cpu['count'], '{:.0f}')} cores, "
                 f"load {_num(cpu['load1'])} {_num(cpu['load5'])} {_num(cpu['load15'])}")
    head.add_row("memory", f"{_bytes(mem['used_bytes'])} / {_bytes(mem['total_bytes'])} "
                 f"({_pct(mem['used_ratio'])}), swap {_bytes(mem['swap_used_bytes'])} / "
                 f"{_bytes(mem['swap_total_bytes'])}")
    head.add_row("network", f"rx {_bytes(net['receive_bytes_per_second'])}/s, "
                 f"tx {_bytes(net['transmit_bytes_per_second'])}/s")
    head.add_row("disk I/O", f"read {_bytes(disk['read_bytes_per_second'])}/s, "
                 f"write {_bytes(disk['write_bytes_per_second'])}/s")
    gpu = data["gpu"]
    detail = f": {gpu['message']}" if gpu["message"] else ""
    head.add_row("GPUs", escape(f"{gpu['count']} ({gpu['state']}{detail})"))
    health = data.get("health")
    if health:
        colour = {"OK": "green", "WARNING": "yellow", "CRITICAL": "bold red",
                  "UNKNOWN": "magenta"}.get(health["status"], "")
        lines = [f"[{colour}]{health['status']}[/]"] + [
            escape(f"{p['status']} {p['check']}: {p['message']}")
            for p in health["problems"]]
        head.add_row("health", "\n".join(lines))
    console.print(head)

    if gpu["devices"]:
        t = Table(title="GPUs")
        for col in ("#", "name", "util", "memory", "temp", "power", "state"):
            t.add_column(col)
        for d in gpu["devices"]:
            t.add_row(
                str(d["index"]), escape(d.get("name", "")), _pct(d.get("utilization")),
                f"{_bytes(d.get('memory_used_bytes'))} / {_bytes(d.get('memory_total_bytes'))}",
                _num(d.get("temperature_celsius"), "{:.0f} °C"),
                _num(d.get("power_watts"), "{:.0f} W"),
                "LOST" if d.get("lost") else "ok",
            )
        console.print(t)

    if data["filesystems"]:
        t = Table(title="filesystems")
        for col in ("mount", "type", "size", "available", "used", "ro"):
            t.add_column(col)
        for f in data["filesystems"]:
            t.add_row(escape(f["mountpoint"]), escape(f["fstype"]), _bytes(f["size_bytes"]),
                      _bytes(f["avail_bytes"]), _pct(f["used_ratio"]),
                      "yes" if f["readonly"] else "")
        console.print(t)

    jobs = data.get("jobs") or []
    if jobs:
        t = Table(title="maintenance jobs")
        for col in ("job", "state", "last result", "next run", "summary"):
            t.add_column(col, overflow="fold")
        result_colour = {"succeeded": "green", "failed": "bold red", "missed": "yellow",
                  "interrupted": "magenta"}
        for j in jobs:
            last = j.get("last_status") or "-"
            shade = result_colour.get(last)
            t.add_row(escape(j["name"]), escape(j["state"]),
                      f"[{shade}]{last}[/]" if shade else escape(last),
                      _time(j.get("next_run")), escape(j.get("summary") or ""))
        console.print(t)

    t = Table(title="collectors")
    for col in ("collector", "state", "time", "message"):
        t.add_column(col)
    for c in data["collectors"]:
        style = {"ok": "green", "degraded": "yellow", "unavailable": "dim", "error": "red"}
        t.add_row(escape(c["name"]), f"[{style.get(c['state'], '')}]{escape(c['state'])}",
                  _num(c["duration_seconds"] and c["duration_seconds"] * 1000, "{:.1f} ms"),
                  escape(c["message"]))
    console.print(t)


def status(
    config: ConfigOption = None,
    json_out: JsonOption = False,
    url: Annotated[
        str | None, typer.Option("--url", help="Agent base URL (default: from the config).")
    ] = None,
) -> None:
    """Node summary: CPU, memory, network, disks, GPUs, health, maintenance jobs and the
    collectors' state."""
    cfg = effective_config(config)
    data = fetch_or_collect(cfg, url)
    if json_out:
        print_json(data)
    else:
        render(data, Console())
