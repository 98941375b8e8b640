"""Hot paths on real processes, each as a ratio to a baseline measured in the same run.

* gate decision: from a poll of a generated repository with >= 40,000 first-parent commits to
  the gate's decision (candidates + ``GatePolicy.handle(StagingUpdated)``) vs raw
  ``git rev-list`` of the same range;
* IPMI fan-out: power cycle + PXE boot device on 1, 10 and 50 virtual BMCs (``lab/bmc.py`` +
  ``steps/ipmi.py``) vs one BMC;
* Cobbler: registration + sync of 50 systems (``lab/cobbler.py`` + ``steps/cobbler.py``).

A path whose modules are not in the tree yet is reported as "not available" with the reason.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

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
            candidates = None
            via = "git rev-list (schedulers.gitops.candidates not available)"

        def decide() -> list:
            if candidates is not None:
                found = candidates(str(repo), "master", "staging")
                commits = tuple(getattr(found, "commits", found))
            else:
                commits = tuple(raw())
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


def ipmi_fanout(sizes: tuple[int, ...] = (1, 10, 50)) -> dict:
    """Power cycle + PXE boot device on N virtual BMCs; ratio of N=50 to N=1."""
    miss = _missing("IPMI fan-out", ["lab.bmc", "steps.ipmi"])
    if miss:
        return miss
    bench_ipmi = importlib.import_module("bench.ipmi_fanout") if _has("bench.ipmi_fanout") else None
    if bench_ipmi is None:
        return {"path": "IPMI fan-out", "error": "not available: the harness for steps.ipmi is not wired yet"}
    return bench_ipmi.run(sizes)


def cobbler_sync(n: int = 50) -> dict:
    """Register + sync ``n`` systems on a real cobblerd."""
    miss = _missing("Cobbler sync", ["lab.cobbler", "steps.cobbler"])
    if miss:
        return miss
    return {"path": "Cobbler sync", "error": "not available: the harness for steps.cobbler is not wired yet"}


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def run_all() -> list[dict]:
    """Every hot path; a failing path is reported, never raised."""
    out = []
    for fn in (gate_decision, ipmi_fanout, cobbler_sync):
        try:
            out.append(fn())
        except Exception as e:
            out.append({"path": fn.__name__, "error": f"{type(e).__name__}: {e}"})
    return out
