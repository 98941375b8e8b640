"""The demo's lab process: the real Cobbler daemon plus the simulated lab, with records on disk.

``python -m lab.demo_lab --settings F --workdir D`` starts cobblerd (its front end on the port
the inventory's ``cobbler.url`` names), seeds the inventory's profiles, starts one virtual BMC
and one fast simulated host per inventory host (lab/simlab.py), prints ``ready`` and runs until
SIGTERM/SIGINT. While it runs, and once more when it stops, it writes the lab's own records to
``D/records.json`` so anyone (the demo's CI check, tests) can audit what really happened:

* per host: the BMC's power and boot-device histories and the host's completed installs;
* Cobbler's front-end call log (``D/cobbler/svc.log``: every ``nopxe`` call-back) stays on disk.

The PIDs of cobblerd and its front end go to ``D/pids`` so ``make demo-stop`` can end them even
if this process died.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from lab.cobbler import CobblerLabError, CobblerServer
from lab.secrets import read_secret
from lab.simlab import SimLab
from master.inventory import Inventory, load_inventory
from master.settings import load_settings
from master.yamlconf import ConfigError

RECORDS = "records.json"


def cobbler_port(inventory: Inventory) -> int:
    """The front-end port every pool's ``cobbler.url`` names (one Cobbler serves the demo lab)."""
    ports = {urllib.parse.urlsplit(p.cobbler.url).port for p in inventory.pools}
    if len(ports) != 1 or None in ports:
        raise ValueError(
            f"the demo lab runs one Cobbler: every pool's cobbler.url must name the same port, got {ports}"
        )
    return ports.pop()  # type: ignore[return-value]


def records(lab: SimLab) -> dict:
    """The lab's own records: BMC histories and installs per host."""
    out = {}
    for name, host in lab.hosts.items():
        bmc = lab.fleet.bmcs.get(name)
        events = [{"at": e.at, "kind": e.kind, "value": e.value} for e in (bmc.events if bmc else [])]
        out[name] = {
            "power": [e["value"] for e in events if e["kind"] == "power"],
            "bootdev": [e["value"] for e in events if e["kind"] == "bootdev"],
            "events": events,
            "installs": host.installs,
            "errors": list(host.errors),
        }
    return {"written_at": time.time(), "hosts": out}


def write_records(lab: SimLab, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records(lab), indent=1))
    os.replace(tmp, path)


def _write_pid(pids: Path, name: str, pid: int) -> None:
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"{name}.pid").write_text(f"{pid}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.demo_lab", description="the demo's lab until SIGTERM")
    ap.add_argument("--settings", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--pids", help="directory for cobblerd's and its front end's PID files")
    ap.add_argument("--install-time", type=float, default=1.0, help="seconds a simulated install takes")
    ns = ap.parse_args(argv)
    workdir = Path(ns.workdir).resolve()
    try:
        s = load_settings(ns.settings)
        inv = load_inventory(s.inventory_path)
        port = cobbler_port(inv)
    except ConfigError as e:
        print("\n".join(str(p) for p in e.problems), file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"lab.demo_lab: {s.inventory_path}: {e}", file=sys.stderr)
        return 1
    pool = inv.pools[0].cobbler
    cobbler = CobblerServer(
        workdir / "cobbler",
        username=pool.username,
        password=read_secret(s.secrets_path, pool.password_secret),
        svc_port=port,
    )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    lab = None
    try:
        cobbler.start(timeout=60)
        if ns.pids:
            for name, proc in (("cobblerd", cobbler._cobblerd), ("cobbler-svc", cobbler._svc)):
                if proc is not None:
                    _write_pid(Path(ns.pids), name, proc.pid)
        cobbler.ensure_profiles(sorted({h.profile for _, h in inv.all_hosts()}))
        lab = SimLab(inv, s.secrets_path, workdir, cobbler, install_time=ns.install_time).start()
    except (CobblerLabError, OSError, KeyError, ValueError) as e:
        cobbler.stop()
        print(f"lab.demo_lab: the lab did not start: {e}", file=sys.stderr)
        return 1
    out = workdir / RECORDS
    print(f"ready: {len(lab.hosts)} simulated hosts, Cobbler API at {cobbler.url}", flush=True)
    try:
        while not done.wait(0.5):
            write_records(lab, out)
    finally:
        write_records(lab, out)
        lab.stop()
        cobbler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
