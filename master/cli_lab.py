"""Lab admin commands: ``qacloud power`` and ``qacloud check``, on the steps' own IPMI/Cobbler code.

``qacloud power status|on|off|cycle|pxe --inventory FILE [--pool P] [--host H] [--secrets DIR]``
prints one line per host; ``qacloud check [--settings F]`` is a preflight of a real lab: every
BMC answers with its credentials, each Cobbler API answers and has the profiles the inventory
names, each NFS export host accepts TCP 2049. One line per problem; exit 1 if any.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from twisted.internet import defer, task, threads

from master.cli import arg, command, load_settings_and_inventory
from master.inventory import Host, Inventory, load_inventory
from master.settings import ENV_VAR, load_settings
from master.yamlconf import ConfigError
from steps.cobbler import CobblerClient, CobblerError
from steps.ipmi import BmcTarget, IpmiClient


def _secret(directory: Path, name: str) -> str:
    f = directory / name
    try:
        return f.read_text().strip()
    except OSError as e:
        raise LookupError(f"secret {name!r} not readable in {directory}: {e.strerror}") from None


def _react(coro_fn) -> int:
    """Run an async function on the Twisted reactor; return its exit code."""
    result: list[int] = []

    async def main(reactor):
        result.append(await coro_fn())

    try:
        task.react(lambda r: defer.ensureDeferred(main(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code)
    return result[0] if result else 1


def _select(inv: Inventory, pool: str | None, host: str | None) -> list[Host]:
    hosts = [h for p, h in inv.all_hosts() if pool is None or p.name == pool]
    if pool is not None and pool not in inv.pool_names:
        raise LookupError(f"no pool {pool!r} in {inv.path} (pools: {', '.join(inv.pool_names)})")
    if host is not None:
        hosts = [h for h in hosts if h.name == host]
        if not hosts:
            raise LookupError(f"no host {host!r} in {inv.path}" + (f" pool {pool}" if pool else ""))
    return hosts


@command("power", "IPMI power control of lab hosts: status, on, off, cycle, pxe (next boot from network)")
@arg("operation", choices=["status", "on", "off", "cycle", "pxe"])
@arg("--inventory", required=True, help="lab inventory YAML")
@arg("--pool", help="only this pool")
@arg("--host", help="only this host")
@arg("--secrets", help="secrets directory (default: the settings' secrets_dir)")
@arg("--timeout", type=float, default=5, help="seconds per IPMI try (default 5)")
@arg("--retries", type=int, default=2)
def cmd_power(ns: argparse.Namespace) -> int:
    try:
        inv = load_inventory(ns.inventory)
        hosts = _select(inv, ns.pool, ns.host)
        secrets = Path(ns.secrets) if ns.secrets else load_settings(None).secrets_path
        targets = [
            BmcTarget(
                h.name, h.bmc.address, h.bmc.port, h.bmc.username, _secret(secrets, h.bmc.password_secret)
            )
            for h in hosts
        ]
    except ConfigError as e:
        for p in e.problems:
            print(str(p), file=sys.stderr)
        return 1
    except LookupError as e:
        print(f"qacloud power: {e.args[0]}", file=sys.stderr)
        return 1

    async def run() -> int:
        client = IpmiClient(timeout=ns.timeout, retries=ns.retries)
        results = await defer.DeferredList(
            [defer.ensureDeferred(client.power(t, ns.operation)) for t in targets], consumeErrors=True
        )
        rc = 0
        for t, (ok, value) in zip(targets, results):
            if ok:
                extra = " (next boot: network)" if ns.operation == "pxe" else ""
                print(f"{t.host}: power {value}{extra}")
            else:
                rc = 1
                print(f"{t.host}: ERROR: {value.value}", file=sys.stderr)
        client.stop()
        return rc

    return _react(run)


def _nfs_hosts(inv: Inventory) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in inv.pools:
        for url in (p.storage.primary, p.storage.secondary):
            host = urlparse(url).hostname or ""
            out.setdefault(host, []).append(f"pool {p.name}: {url}")
    return out


def _tcp_open(host: str, port: int, timeout: float = 3) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or str(e)


@command("check", "preflight of a real lab: BMCs, Cobbler and its profiles, NFS exports")
@arg("--settings", help=f"settings YAML (default: ${ENV_VAR} or the demo settings)")
def cmd_check(ns: argparse.Namespace) -> int:
    loaded = load_settings_and_inventory(ns.settings)
    if loaded is None:
        return 1
    s, inv = loaded
    problems: list[str] = []

    async def run() -> int:
        prov = s.provisioning
        client = IpmiClient(
            timeout=prov.ipmi_timeout, retries=prov.ipmi_retries, concurrency=prov.ipmi_concurrency
        )
        jobs, names = [], []
        for _pool, h in inv.all_hosts():
            try:
                pw = _secret(s.secrets_path, h.bmc.password_secret)
            except LookupError as e:
                problems.append(f"host {h.name}: BMC {h.bmc.endpoint}: {e.args[0]}")
                continue
            t = BmcTarget(h.name, h.bmc.address, h.bmc.port, h.bmc.username, pw)
            jobs.append(defer.ensureDeferred(client.power_status(t)))
            names.append(h.name)
        for (ok, value), _name in zip(await defer.DeferredList(jobs, consumeErrors=True), names):
            if not ok:
                problems.append(str(value.value))
        client.stop()
        seen: set[str] = set()
        for p in inv.pools:
            if p.cobbler.url in seen:
                continue
            seen.add(p.cobbler.url)
            wanted = sorted({h.profile for q in inv.pools if q.cobbler.url == p.cobbler.url for h in q.hosts})
            try:
                c = CobblerClient(
                    p.cobbler.url, p.cobbler.username, _secret(s.secrets_path, p.cobbler.password_secret)
                )
                await c.login()
                have = set(await c.profiles())
            except (CobblerError, LookupError) as e:
                problems.append(
                    f"pool {p.name}: Cobbler at {p.cobbler.url}: {e}"
                    if isinstance(e, LookupError)
                    else str(e)
                )
                continue
            for prof in wanted:
                if prof not in have:
                    problems.append(f"Cobbler at {p.cobbler.url}: profile {prof!r} does not exist")
        for host, uses in _nfs_hosts(inv).items():
            err = await threads.deferToThread(_tcp_open, host, 2049)
            if err:
                problems.append(f"NFS server {host}:2049 not reachable ({err}); used by {'; '.join(uses)}")
        return 1 if problems else 0

    rc = _react(run)
    for p in problems:
        print(p)
    if not problems and rc == 0:
        print(f"{inv.path}: lab OK ({sum(len(p.hosts) for p in inv.pools)} BMCs, {len(inv.pools)} pool(s))")
    return 1 if problems else rc
