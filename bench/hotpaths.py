"""Hot paths on real processes, each as a ratio to a baseline measured in the same run.

* gate decision: from a poll of a generated repository with >= 40,000 first-parent commits to
  the gate's decision (candidates + ``GatePolicy.handle(StagingUpdated)``) vs raw
  ``git rev-list`` of the same range;
* IPMI fan-out: next boot from PXE + power cycle (ProvisionPool's boot phase) on 1, 10 and 50
  virtual BMCs served by a separate ``python -m lab.bmc`` process, through
  ``steps.ipmi.IpmiClient`` at the configured concurrency (and variants); N=50 vs N=1;
* Cobbler: registration (+ remove_stale) + sync of 50 new systems through
  ``steps.cobbler.CobblerClient`` on a real cobblerd (``lab/cobbler.py``); 50 vs 1 system.

A path whose modules are not in the tree yet is reported as "not available" with the reason;
a path that fails is reported with its error (``run_all`` never raises). The synchronous entry
points run the asynchronous clients on one reactor thread per process (``_in_reactor``); tests
call the ``*_async`` functions on trial's reactor instead.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import secrets
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import yaml

from lab.pools import simple_pool

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
}


def make_repo(path: Path, n_master: int, n_staging: int) -> None:
    """A bare repository with ``n_master`` commits on master and ``n_staging`` more on staging,
    written in one ``git fast-import`` stream (seconds for 40,000 commits)."""
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    lines: list[str] = []
    for i in range(1, n_master + n_staging + 1):
        branch = "master" if i <= n_master else "staging"
        data = f"commit {i}\n"
        lines += [
            f"commit refs/heads/{branch}",
            f"mark :{i}",
            f"committer bench <bench@example.org> {1_600_000_000 + i} +0000",
            f"data {len(data)}",
            data.rstrip("\n"),
        ]
        if i == n_master + 1:
            lines.append(f"from :{n_master}")
        lines += [f"M 644 inline f{i % 100}", "data 2", f"{i % 10}", ""]
    stream = "\n".join(lines) + "\n"
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input=stream.encode(), check=True)


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gate_decision(n_master: int = 40_000, n_staging: int = 50, repeat: int = 5) -> dict:
    """Time a poll-to-decision of the gate vs raw ``git rev-list`` of the same range."""
    from schedulers.events import PoolAvailable, StagingUpdated
    from schedulers.policy import GatePolicy, PolicyConfig

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo.git"
        t0 = time.perf_counter()
        make_repo(repo, n_master, n_staging)
        gen = time.perf_counter() - t0
        env = {**os.environ, **GIT_ENV}
        argv = ["git", "rev-list", "--first-parent", "--reverse", "master..staging"]

        def raw() -> list[str]:
            return subprocess.run(
                argv, cwd=repo, env=env, capture_output=True, text=True, check=True
            ).stdout.split()

        try:
            gitops = importlib.import_module("schedulers.gitops")
            candidates = gitops.candidates
            via = "schedulers.gitops.candidates"
        except (ImportError, AttributeError):
            gitops, candidates = None, None
            via = "git rev-list (schedulers.gitops.candidates not available)"

        def decide() -> list:
            if candidates is not None:
                found = candidates(str(repo), "master", "staging")
                commits = tuple(getattr(found, "commits", found))
            else:
                commits = tuple(raw())
            # as the scheduler after its fetch: the ref files, git only when they do not say
            refs = gitops.read_refs(str(repo), "refs/heads/master") if gitops else None
            if refs:
                (master,) = refs
            else:
                master = subprocess.run(
                    ["git", "rev-parse", "master"], cwd=repo, capture_output=True, text=True, check=True
                ).stdout.strip()
            policy = GatePolicy(PolicyConfig())
            for i in range(3):
                policy.handle(PoolAvailable(f"pool{i + 1}"))
            return policy.handle(StagingUpdated(master=master, commits=commits))

        first_parent = len(raw())
        actions = decide()
        t_raw = _best(raw, repeat)
        try:
            t_gate = _best(decide, repeat)
        except TypeError as e:
            return {"path": "gate decision", "error": f"{via} has an unexpected signature: {e}"}
        return {
            "path": "gate decision",
            "commits": n_master + n_staging,
            "candidates": first_parent,
            "first_actions": [type(a).__name__ for a in actions],
            "repo_generation_s": gen,
            "baseline_s": t_raw,
            "measured_s": t_gate,
            "ratio": t_gate / t_raw,
            "target": 2.0,
            "via": via,
        }


def _missing(path: str, modules: list[str]) -> dict | None:
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            return {"path": path, "error": f"not available: {m} cannot be imported ({e})"}
    return None


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- the reactor, for the synchronous entry points -----------------------------------------------
_reactor_thread: threading.Thread | None = None


def _in_reactor(make: Callable[[], Awaitable[T]]) -> T:
    """Run ``make()`` on Twisted's reactor, started once in a daemon thread; block for its result.

    The asynchronous clients (steps/ipmi.py, steps/cobbler.py) need a running reactor; the bench
    is synchronous. A reactor cannot be restarted, so it stays up for the process's lifetime.
    """
    global _reactor_thread
    from twisted.internet import defer, reactor, threads

    if _reactor_thread is None:
        _reactor_thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False}, name="bench-reactor", daemon=True
        )
        _reactor_thread.start()
    return threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(make()))


# --- (b) IPMI fan-out --------------------------------------------------------------------------
# One-way BMC latencies measured (ms): 0 = loopback, CPU-bound; the others model real BMC
# firmware + network (each request/answer exchange takes twice the one-way latency).
IPMI_LATENCIES_MS = (0, 20, 100)
# The latency at which the issue #8 target (N=50 <= 1.5 x N=1) is evaluated: the low end of
# real BMCs (~20-300 ms per command), where CPU weighs most.
IPMI_TARGET_LATENCY_MS = 20


class BmcProcess:
    """``python -m lab.bmc --spec`` serving ``n`` virtual BMCs on 127.0.0.1 in its own process
    (its own GIL: the client's threads and the BMCs' I/O thread do not compete)."""

    def __init__(self, n: int, workdir: Path, ready_timeout: float = 30):
        self.password = secrets.token_urlsafe(12)
        self.ports = _free_udp_ports(n)
        self.names = [f"bench-bmc{i}" for i in range(n)]
        spec = workdir / "bmcs.json"
        spec.write_text(
            json.dumps(
                [
                    {"name": name, "port": port, "username": "admin", "password": self.password}
                    for name, port in zip(self.names, self.ports, strict=True)
                ]
            )
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.bmc", "--spec", str(spec)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        line = _readline(self.proc, ready_timeout)
        if line.strip() != "ready":
            err = self.stop()
            raise RuntimeError(
                f"virtual BMC process (lab.bmc, {n} BMCs on UDP 127.0.0.1:{self.ports[0]}..) did not "
                f"become ready within {ready_timeout:g} s: {line.strip() or 'no output'} {err}".strip()
            )

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the BMC process has used so far (Linux /proc)."""
        return _cpu_seconds(self.proc.pid)

    def targets(self, n: int, ports: list[int] | None = None) -> list:
        """The first ``n`` BMCs, reached directly or through ``ports`` (a relay's front ports)."""
        from steps.ipmi import BmcTarget

        return [
            BmcTarget(name, "127.0.0.1", port, "admin", self.password)
            for name, port in zip(self.names[:n], (ports or self.ports)[:n], strict=True)
        ]

    def stop(self) -> str:
        """Terminate the process (and wait for it); return what it wrote on stderr."""
        return _stop(self.proc).replace(self.password, "<password>").strip()


class RelayProcess:
    """``python -m lab.lossy_udp`` in front of BMCs (its own process): every datagram is held
    ``delay`` seconds each way, as real BMC firmware and networks take; nothing is dropped."""

    def __init__(self, ports: list[int], delay: float, ready_timeout: float = 30):
        self.delay = delay
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.lossy_udp", "--delay", repr(delay)]
            + [f"--target=127.0.0.1:{p}" for p in ports],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        words = _readline(self.proc, ready_timeout).split()
        if len(words) != len(ports) + 1 or words[0] != "ready":
            err = self.stop()
            raise RuntimeError(
                f"UDP relay (lab.lossy_udp, {len(ports)} targets, delay {delay:g} s) did not become "
                f"ready within {ready_timeout:g} s: {' '.join(words) or 'no output'} {err}".strip()
            )
        self.ports = [int(w) for w in words[1:]]

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> str:
        return _stop(self.proc).strip()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen) -> str:
    """Terminate a child (and wait for it); return what it wrote on stderr."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    err = proc.stderr.read() if proc.stderr else ""
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()
    return err


def _free_udp_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """The child's first stdout line, or "" if it wrote none within ``timeout`` s."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


async def _boot_all(client, targets: list) -> float:
    """What ProvisionPool's PXE-boot phase does to every host at once: next boot from PXE, then
    power cycle; return the wall time."""
    from twisted.internet import defer

    async def one(t) -> None:
        await client.set_bootdev(t, "pxe")
        await client.power_cycle(t)

    t0 = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(one(t)) for t in targets], consumeErrors=True)
    return time.perf_counter() - t0


async def ipmi_fanout_async(
    bmcs: BmcProcess,
    sizes: tuple[int, ...] = (1, 10, 50),
    concurrencies: tuple[int, ...] | None = None,
    repeat: int = 5,
    *,
    relay: RelayProcess | None = None,
) -> dict:
    """Set PXE + power cycle on N BMCs of ``bmcs`` through ``IpmiClient`` (median of ``repeat``
    rounds, each with a fresh client: no session carried over); N = 1 is the baseline.

    ``concurrencies``: the client's bound; the first is the configured one
    (``provisioning.ipmi_concurrency``), others are reported as variants (default: the old
    default 16 and 1, serial). ``relay``: reach the BMCs through it (its latency), else directly.
    """
    from master.settings import Provisioning
    from steps.ipmi import IpmiClient, retransmissions

    if max(sizes) > len(bmcs.ports):
        raise ValueError(f"IPMI fan-out: N={max(sizes)} but the BMC process serves {len(bmcs.ports)} BMCs")
    prov = Provisioning()
    if concurrencies is None:
        concurrencies = (prov.ipmi_concurrency, 16, 1)
    concurrencies = tuple(dict.fromkeys(concurrencies))
    ports = relay.ports if relay is not None else None
    latency_ms = relay.delay * 1000 if relay is not None else 0.0
    base, big = min(sizes), max(sizes)
    runs: dict[int, dict[int, dict]] = {}
    for conc in concurrencies:
        runs[conc] = {}
        for n in sizes:
            times, cpu_client, cpu_bmcs, cpu_relay, resent = [], [], [], [], []
            for _ in range(repeat):
                client = IpmiClient(
                    timeout=prov.ipmi_timeout,
                    retries=prov.ipmi_retries,
                    concurrency=conc,
                    backoff=prov.ipmi_backoff,
                    reuse=prov.ipmi_session_reuse,
                )
                c0, b0, x0 = time.process_time(), bmcs.cpu_seconds(), retransmissions()
                r0 = relay.cpu_seconds() if relay is not None else 0.0
                try:
                    times.append(await _boot_all(client, bmcs.targets(n, ports)))
                finally:
                    client.stop()
                cpu_client.append(time.process_time() - c0)
                cpu_bmcs.append(bmcs.cpu_seconds() - b0)
                cpu_relay.append(relay.cpu_seconds() - r0 if relay is not None else 0.0)
                resent.append(retransmissions() - x0)
            runs[conc][n] = {
                "median_s": _median(times),
                "min_s": min(times),
                "runs_s": times,
                # CPU seconds per round: the client process (reactor + IPMI threads), the BMCs,
                # the latency relay (0 without one)
                "cpu_client_s": _median(cpu_client),
                "cpu_bmcs_s": _median(cpu_bmcs),
                "cpu_relay_s": _median(cpu_relay),
                # datagrams the client sent again (no answer within pyghmi's 0.5-1.5 s), all rounds
                "retransmits": sum(resent),
            }
        # rounds slower than the baseline by pyghmi's first retransmission timeout (>= 0.5 s):
        # a datagram was lost, or an answer was not noticed (the stall of issue #8)
        limit = runs[conc][base]["median_s"] + 0.5
        for n in sizes:
            runs[conc][n]["stalled_rounds"] = sum(t > limit for t in runs[conc][n]["runs_s"])
    # the BMCs really changed state: every one of the largest N is on and boots from the network
    check = IpmiClient(
        timeout=prov.ipmi_timeout, retries=prov.ipmi_retries, concurrency=prov.ipmi_concurrency
    )
    try:
        states = [(await check.power_status(t), await check.get_bootdev(t)) for t in bmcs.targets(big)]
    finally:
        check.stop()
    verified = sum(s == ("on", "network") for s in states)
    conf = concurrencies[0]
    best = min(concurrencies, key=lambda c: runs[c][big]["median_s"] / runs[c][base]["median_s"])
    measured, baseline = runs[conf][big]["median_s"], runs[conf][base]["median_s"]
    where = f", {latency_ms:g} ms one-way BMC latency" if relay is not None else ""
    return {
        "path": f"IPMI fan-out (N={big} vs N={base}{where})",
        "latency_ms": latency_ms,
        "sizes": list(sizes),
        "repeat": repeat,
        "configured_concurrency": conf,
        "by_concurrency": {str(c): {str(n): r for n, r in rows.items()} for c, rows in runs.items()},
        "ratios": {
            str(c): {str(n): runs[c][n]["median_s"] / runs[c][base]["median_s"] for n in sizes}
            for c in concurrencies
        },
        "best_concurrency": best,
        "best_ratio": runs[best][big]["median_s"] / runs[best][base]["median_s"],
        "verified_bmcs": verified,
        "baseline_s": baseline,
        "measured_s": measured,
        "ratio": measured / baseline,
        "target": 1.5,
        "via": f"steps.ipmi.IpmiClient, concurrency {conf}, BMCs in a separate lab.bmc process"
        + (f" behind a lab.lossy_udp relay holding each datagram {latency_ms:g} ms" if relay else ""),
    }


def ipmi_fanout(
    sizes: tuple[int, ...] = (1, 10, 50),
    repeat: int = 5,
    latencies_ms: tuple[float, ...] = IPMI_LATENCIES_MS,
    target_latency_ms: float = IPMI_TARGET_LATENCY_MS,
) -> dict:
    """Power cycle + PXE boot device on N virtual BMCs at each one-way BMC latency; the result is
    the run at ``target_latency_ms`` (N=50 vs N=1, the issue's target), with every latency's run
    in ``by_latency`` (0 ms: loopback, CPU-bound, with concurrency variants)."""
    miss = _missing("IPMI fan-out", ["lab.bmc", "lab.lossy_udp", "steps.ipmi"])
    if miss:
        return miss
    from master.settings import Provisioning

    conf = Provisioning().ipmi_concurrency
    by_latency: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="qacloud-bench-bmc-") as tmp:
        bmcs = BmcProcess(max(sizes), Path(tmp))
        try:
            for ms in latencies_ms:
                if ms <= 0:
                    by_latency["0"] = _in_reactor(lambda: ipmi_fanout_async(bmcs, sizes, repeat=repeat))
                    continue
                relay = RelayProcess(bmcs.ports, ms / 1000)
                try:
                    # slow rounds: fewer of them at high latency, the configured concurrency only
                    reps = repeat if ms <= 50 else max(3, repeat // 2)
                    by_latency[f"{ms:g}"] = _in_reactor(
                        lambda relay=relay, reps=reps: ipmi_fanout_async(
                            bmcs, sizes, (conf,), reps, relay=relay
                        )
                    )
                finally:
                    relay.stop()
        finally:
            bmcs.stop()
    key = f"{target_latency_ms:g}" if target_latency_ms > 0 else "0"
    head = by_latency.get(key) or next(iter(by_latency.values()))
    return {
        **head,
        "target_latency_ms": head["latency_ms"],
        "by_latency": by_latency,
        "latency_ratios": {ms: r["ratio"] for ms, r in by_latency.items()},
    }


def _ipmi_markdown(h: dict) -> list[str]:
    """The IPMI fan-out tables for results.md: ratios per latency, then each latency's rows."""
    md: list[str] = []
    runs = list(h["by_latency"].values()) if "by_latency" in h else [h]
    sizes = [str(n) for n in h["sizes"]]
    if "by_latency" in h:
        md += [
            "",
            f"### IPMI fan-out per one-way BMC latency: median of the rounds, concurrency "
            f"{h['configured_concurrency']} (configured); the target is read at "
            f"{h['target_latency_ms']:g} ms",
            "",
            "| one-way BMC latency | "
            + " | ".join(f"N={n} ms" for n in sizes)
            + f" | ratio N={sizes[-1]}/N={sizes[0]} |",
            "|---|" + "---|" * (len(sizes) + 1),
        ]
        for r in runs:
            rows = r["by_concurrency"][str(r["configured_concurrency"])]
            md.append(
                f"| {r['latency_ms']:g} ms | "
                + " | ".join(f"{rows[n]['median_s'] * 1000:.0f}" for n in sizes)
                + f" | {r['ratio']:.2f} |"
            )
    for r in runs:
        md += ["", f"### {r['path']}: wall time (median of {r['repeat']}) per N and concurrency", ""]
        md += [
            "| concurrency | N | median ms | min ms | ratio to N=1 | client CPU ms | BMC CPU ms "
            "| relay CPU ms | retransmits | stalled rounds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c, rows in r["by_concurrency"].items():
            conf = " (configured)" if int(c) == r["configured_concurrency"] else ""
            for n, x in rows.items():
                md.append(
                    f"| {c}{conf} | {n} | {x['median_s'] * 1000:.1f} | {x['min_s'] * 1000:.1f} "
                    f"| {r['ratios'][c][n]:.2f} | {x['cpu_client_s'] * 1000:.0f} "
                    f"| {x['cpu_bmcs_s'] * 1000:.0f} | {x.get('cpu_relay_s', 0) * 1000:.0f} "
                    f"| {x.get('retransmits', 0)} | {x['stalled_rounds']}/{r['repeat']} |"
                )
        md.append(f"\nBMCs on and booting from the network afterwards: {r['verified_bmcs']}.")
    return md


# --- (c) Cobbler registration + sync -------------------------------------------------------------
BENCH_POOL = "bench-cobbler"


def cobbler_pool(name: str, index: int, n_systems: int, cobbler_url: str, workdir: Path):
    """A validated inventory pool of ``n_systems`` hosts on 127.0.<index>.0/24 (1 management
    server + KVM hosts, ``lab.pools.simple_pool``); for ``n_systems == 1`` the management server
    alone."""
    from master.inventory import load_inventory

    if not 1 <= n_systems <= 200:
        raise ValueError(f"cobbler_pool: n_systems must be 1-200, got {n_systems}")
    raw = simple_pool(name, index, cobbler_url=cobbler_url, hypervisors=max(n_systems - 1, 1))
    path = workdir / f"{name}-{n_systems}.yaml"
    path.write_text(yaml.safe_dump({"lab": "bench", "pools": [raw]}, sort_keys=False))
    pool = load_inventory(path).pool(name)
    return pool if n_systems > 1 else dataclasses.replace(pool, hypervisors=[])


async def cobbler_sync_async(
    server, workdir: Path, sizes: tuple[int, ...] = (1, 50), repeat: int = 3, pool_name: str = BENCH_POOL
) -> dict:
    """Register ``n`` systems (all new) + sync them through ``CobblerClient``, as ProvisionPool
    does (register_pool, remove_stale, then the per-system ``sync_systems`` of the pool's
    systems, not the full ``sync``); median of ``repeat`` rounds per size; the pool's
    systems are removed (untimed) before each round and at the end. N = min(sizes) is the
    baseline."""
    from steps.cobbler import CobblerClient

    server.ensure_profiles(["qacloud-mgmt", "qacloud-kvm"])
    client = CobblerClient(server.url, server.username, server.password)
    rows: dict[int, dict] = {}
    try:
        for n in sizes:
            pool = cobbler_pool(pool_name, 200, n, server.url, workdir)
            reg, sync, total = [], [], []
            for _ in range(repeat):
                await client.remove_pool(pool)
                t0 = time.perf_counter()
                names = await client.register_pool(pool)
                await client.remove_stale(pool, names)
                t1 = time.perf_counter()
                await client.sync_systems(names)
                t2 = time.perf_counter()
                reg.append(t1 - t0)
                sync.append(t2 - t1)
                total.append(t2 - t0)
            registered = len(await client.systems(pool))
            pxe = [server.tftpboot / "pxelinux.cfg" / ("01-" + h.mac.replace(":", "-")) for h in pool.hosts]
            rows[n] = {
                "register_s": _median(reg),
                "sync_s": _median(sync),
                "total_s": _median(total),
                "runs_total_s": total,
                "per_system_s": _median(total) / n,
                "registered": registered,
                "pxe_files": sum(p.exists() for p in pxe),
            }
    finally:
        await client.remove_pool(pool_name)
    base, big = min(sizes), max(sizes)
    ratio = rows[big]["total_s"] / rows[base]["total_s"]
    return {
        "path": f"Cobbler register + sync ({big} systems vs {base})",
        "sizes": list(sizes),
        "repeat": repeat,
        "by_n": {str(n): r for n, r in rows.items()},
        "register_ratio": rows[big]["register_s"] / rows[base]["register_s"],
        "sync_ratio": rows[big]["sync_s"] / rows[base]["sync_s"],
        "per_system_ratio": rows[big]["per_system_s"] / rows[base]["per_system_s"],
        "baseline_s": rows[base]["total_s"],
        "measured_s": rows[big]["total_s"],
        "ratio": ratio,
        "target": None,
        "sync": "per-system (sync_systems: Cobbler's background_syncsystems task, polled)",
        "via": "steps.cobbler.CobblerClient -> lab/cobbler.py (real cobblerd 3.3.10)",
    }


def cobbler_sync(n: int = 50, repeat: int = 3) -> dict:
    """Register + per-system sync of ``n`` systems on a real cobblerd of its own (free ports; stopped
    after)."""
    miss = _missing("Cobbler sync", ["lab.cobbler", "steps.cobbler"])
    if miss:
        return miss
    from lab.cobbler import CobblerServer

    with tempfile.TemporaryDirectory(prefix="qacloud-bench-cobbler-") as tmp:
        server = CobblerServer(Path(tmp) / "cobbler", password=secrets.token_urlsafe(12))
        server.start()
        try:
            return _in_reactor(lambda: cobbler_sync_async(server, Path(tmp), (1, n), repeat))
        finally:
            server.stop()


def details_markdown(hot: list[dict]) -> list[str]:
    """Per-size tables of the IPMI and Cobbler paths, for results.md."""
    md: list[str] = []
    for h in hot:
        if "error" in h:
            continue
        if "by_concurrency" in h:
            md += _ipmi_markdown(h)
        elif "by_n" in h:
            md += ["", f"### {h['path']}: median of {h['repeat']}", ""]
            md += [
                "| systems | register ms | sync ms | total ms | per system ms | registered | PXE files |",
                "|---|---|---|---|---|---|---|",
            ]
            for n, r in h["by_n"].items():
                md.append(
                    f"| {n} | {r['register_s'] * 1000:.0f} | {r['sync_s'] * 1000:.0f} "
                    f"| {r['total_s'] * 1000:.0f} | {r['per_system_s'] * 1000:.1f} | {r['registered']} "
                    f"| {r['pxe_files']} |"
                )
            md.append(
                f"\nRatios 50 vs 1: register {h['register_ratio']:.1f}, sync {h['sync_ratio']:.2f}, "
                f"per-system cost {h['per_system_ratio']:.2f}."
            )
    return md


def run_all() -> list[dict]:
    """Every hot path; a failing path is reported, never raised."""
    out = []
    for fn in (gate_decision, ipmi_fanout, cobbler_sync):
        try:
            out.append(fn())
        except Exception as e:
            out.append({"path": fn.__name__, "error": f"{type(e).__name__}: {e}"})
    return out
