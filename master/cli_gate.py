"""``qacloud gate status``: what the gate is doing and what needs a human, in a terminal or a
monitoring check.

It reads the gate dashboard's ``status.json`` from the master's web server (no login: the
same as viewing the web UI anonymously) and prints the status line, the heads, every pool and
what needs a human; ``--json`` prints the document itself. Exit status: 0 nothing needs a
human; 1 something does (promotion stopped, a block the developers' revert or fix did not
repair, a quarantined or offline pool), so it can serve as a Nagios-style check; 2 bad
settings, or the master could not be reached or answered nonsense.
"""

from __future__ import annotations

import argparse
import json

from master.cli import COMMANDS
from master.cli_pool import CliError, MasterClient, add_master_options, talking_to_master
from master.settings import load_settings

STATUS_PATH = "plugins/wsgi_dashboards/gate/status.json"
RECENT = 3  # alerts shown in the terminal (--json has the dashboard's whole list)


def fetch_status(url: str, timeout: float = 15.0) -> dict:
    """The gate's ``status.json`` from the master at ``url``."""
    client = MasterClient(url, timeout)
    raw = client.fetch(STATUS_PATH)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise CliError(f"{client.url}{STATUS_PATH} is not JSON: is this a qacloud master?") from None
    if not isinstance(doc, dict) or "state" not in doc:
        raise CliError(f"{client.url}{STATUS_PATH}: no gate status in the answer")
    return doc


def needs_human(doc: dict) -> bool:
    """Promotion stopped, or anything in the dashboard's attention list."""
    return doc.get("state") == "halted" or bool(doc.get("attention"))


def render(doc: dict) -> str:
    """The terminal view of ``status.json``."""

    def short(sha: str | None) -> str:
        return (sha or "-")[:12]

    lines = [doc.get("text") or doc["state"]]  # (the text begins with the state, in words)
    heads = f"master {short(doc.get('master'))}  staging {short(doc.get('staging'))}"
    lines.append(f"{heads}  not on master: {len(doc.get('waiting') or [])}")
    pools = doc.get("pools") or []
    if pools:
        width = max(len(p["name"]) for p in pools)
        lines.append("pools:")
        for p in pools:
            if p.get("commit"):
                what = f"{short(p['commit'])} (run {p.get('run_id')})"
            else:
                what = p.get("reason") or ""
            lines.append(f"  {p['name']:<{width}}  {p['label']:<12} {what}".rstrip())
    if needs_human(doc):
        lines.append("needs a human:")
        if doc.get("state") == "halted":
            lines.append(f"  - {doc.get('text', '')}")
        lines += [f"  - {a}" for a in doc.get("attention") or []]
    alerts = (doc.get("alerts") or [])[:RECENT]
    if alerts:
        lines.append("latest alerts:")
        for a in alerts:
            when = f"{a['when']}  " if a.get("when") else ""
            lines.append(f"  {when}{a.get('kind')}: {a.get('message', '')}")
    return "\n".join(lines)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="gate_cmd", required=True, metavar="ACTION")
    s = sub.add_parser(
        "status",
        help="what the gate is doing and what needs a human (exit 1 if something does)",
        description="Read the gate dashboard's status.json from the master and print it.",
    )
    add_master_options(s)
    s.add_argument("--json", action="store_true", help="print status.json itself")
    s.add_argument("--timeout", type=float, default=15, help="seconds to wait for the master (15)")


def cmd_gate(ns: argparse.Namespace) -> int:
    def status() -> int:
        doc = fetch_status(ns.url or load_settings(ns.settings).www.buildbot_url, ns.timeout)
        print(json.dumps(doc, indent=1) if ns.json else render(doc))
        return 1 if needs_human(doc) else 0

    return talking_to_master("qacloud gate status", status)


COMMANDS["gate"] = ("the gate: status (what it does, what needs a human)", _add_arguments, cmd_gate)
