"""The pool's worker is SIGKILLed while a gate BVT build provisions the pool (simulated lab).

Real master, real worker, the simulated lab (virtual BMCs over real IPMI/UDP, fast hosts
PXE-installed through the session's real cobblerd). A commit goes to staging; once the gate's
build is in its ``provision`` step and the BMCs have started powering hosts (not earlier:
Buildbot hangs if the worker dies during the build-start ping), the worker process is killed.
Then: the build ends as RETRY (Buildbot re-queues its build request, so the gate's run simply
waits for the retried build) and nobody is blamed, every host of the pool is powered off
before the pool is provisioned again, and once the worker is back the commit is tested and
promoted.
"""

from __future__ import annotations

import time

from buildbot.process.results import EXCEPTION, RETRY, SUCCESS

from lab.simlab import SimLab
from master.inventory import load_inventory
from tests.reliability.test_master_crash import fast_reconnect
from tests.support.procs import GitProject, free_port, gate_state, make_deployment, simple_pool, wait_for

SUITE = {"run-tests.sh": "#!/bin/sh\necho 'ran the suite'\nexit 0\n"}
POOL = "lostpool"


def _step_logs(m, build) -> str:
    """The lost build's step logs, for a failure message."""
    out = []
    for step in m.api(f"builds/{build['buildid']}/steps")["steps"]:
        for log in m.api(f"steps/{step['stepid']}/logs")["logs"]:
            lines = m.api(f"logs/{log['logid']}/contents")["logchunks"]
            out.append(f"--- {step['name']}/{log['name']}\n" + "".join(c["content"] for c in lines))
    return "\n".join(out)


def _powered(history: list[str]) -> bool:
    return any(v in ("on", "reset") for v in history)


def test_worker_lost_mid_provisioning(tmp_path, cobbler_server, reliability):
    t0 = time.monotonic()
    proj = GitProject.create(tmp_path / "repo", SUITE)
    pool = simple_pool(
        POOL,
        8,
        bmc_ports=[free_port(2) for _ in range(3)],
        ssh_port=free_port(),
        cobbler_url=cobbler_server.url,
    )
    pool["cobbler"]["username"] = cobbler_server.username
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        [pool],
        extra={
            "gate": {"confirm_runs": 1},
            "provisioning": {
                "enabled": True,
                "install_timeout": 60,
                "install_poll_interval": 0.3,
                # generous for a loaded CI machine: the pool must end up off after the kill
                "ipmi_timeout": 4,
                "ipmi_retries": 2,
                "ipmi_backoff": 0.1,
                "cobbler_timeout": 10,
            },
        },
        extra_secrets={"cobbler": cobbler_server.password},
    )
    fast_reconnect(dep)
    inv = load_inventory(dep.root / "inventory.yaml")
    lab = SimLab(inv, dict(dep.master.secrets), tmp_path / "simlab", cobbler_server, install_time=4)
    lab.start()
    m = dep.master
    (worker,) = dep.workers
    survived = False
    blamed: list = []
    try:
        dep.start()
        dep.wait_workers()
        wait_for(
            lambda: (gate_state(dep) or {}).get("master") == proj.head("master"), 30, "the gate to start"
        )
        sha = proj.commit("a change", {"change.txt": "x\n"}, author="Dev <dev@example.org>")
        proj.push_staging()

        # provisioning has begun: the build is in 'provision' and a BMC has powered a host
        def provisioning():
            builds = m.builds()
            if not builds:
                return None
            steps = m.api(f"builds/{builds[0]['buildid']}/steps")["steps"]
            current = [s for s in steps if s["started_at"] and not s["complete"]]
            hosts_on = [h for h in lab.hosts if _powered(lab.power_history(h))]
            return builds[0] if current and current[0]["name"] == "provision" and hosts_on else None

        b1 = wait_for(provisioning, 120, "the gate's build to start provisioning the pool")
        worker.kill()
        mark = {h: len(lab.power_history(h)) for h in lab.hosts}

        def first_done():
            (b,) = [b for b in m.builds() if b["buildid"] == b1["buildid"]]
            return b if b["complete"] else None

        lost = wait_for(first_done, 120, "the build to end after the worker was killed")
        assert lost["results"] in (RETRY, EXCEPTION), lost
        # every host is off when the lost build ends: each host that had been powered was
        # powered off after the kill (an IPMI call already sent when the worker died may still
        # land after the kill: it finishes first); a host the build had not powered yet is still
        # off (pyghmi's power off of a host that is off sends no command, so nothing is recorded)
        at_end = {h: lab.power_history(h) for h in lab.hosts}
        assert any(_powered(hist) for hist in at_end.values()), at_end
        for h, hist in at_end.items():
            assert not lab.is_on(h), (h, hist, _step_logs(m, b1))
            if _powered(hist):
                assert "off" in hist[mark[h] :] and hist[-1] == "off", (h, hist, mark[h], _step_logs(m, b1))
        # RETRY: Buildbot re-queues the same build request; the gate fed nothing for it
        log = (m.basedir / "twistd.log").read_text()
        assert f"of {sha[:12]} on {POOL}: fail" not in log, m.log_tail(60)

        # the worker comes back; the gate retries the commit on the same pool
        worker.start()
        wait_for(lambda: proj.head("master") == sha, 180, "the commit promoted after the worker returned")
        view = gate_state(dep)
        blamed = view.get("culprits", [])
        builds = m.builds()
        assert [b["results"] for b in builds if b["buildid"] != b1["buildid"]][-1] == SUCCESS, builds
        # so the retried build found every host off: its power cycle is an "on", not a "reset"
        for h in lab.hosts:
            after = lab.power_history(h)[len(at_end[h]) :]
            assert after[:1] == ["on"], (h, lab.power_history(h), len(at_end[h]))
        assert not any(lab.is_on(h) for h in lab.hosts)  # and off again after the passing build
        assert blamed == [], blamed
        survived = True
    finally:
        reliability.record(
            "worker SIGKILLed mid-provisioning (gate BVT build)",
            area="gate",
            injected=1,
            survived=int(survived),
            data_lost=len(blamed),
            detail=(
                "build ended RETRY (worker lost), request re-queued, no commit blamed; every host"
                " powered off before the pool was provisioned again; the commit promoted later"
                if survived
                else "FAILED: after the worker was killed, ProvisionPool (it runs in the master) went on"
                " powering hosts, no TeardownPool ran, and the re-queued build reset hosts that were"
                " never powered off (steps/provision.py)"
            ),
            test="test_worker_lost.py::test_worker_lost_mid_provisioning",
            seconds=time.monotonic() - t0,
        )
        dep.stop()
        lab.stop()
