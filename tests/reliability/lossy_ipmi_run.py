"""Run IPMI operations through a lossy relay in this process; print a JSON result and exit hard.

A separate process because, under loss, tries abandoned by ``IpmiClient`` leave pyghmi threads
blocked (see docs/reliability.md): ``os._exit`` ends them instead of joining them forever.

    python -m tests.reliability.lossy_ipmi_run LOSS SEED OP...
"""

from __future__ import annotations

import json
import os
import sys
import time

from twisted.internet import defer, task

from lab.bmc import BmcFleet, VirtualBmc
from lab.lossy_udp import LossyUdpRelay
from steps.ipmi import BmcTarget, IpmiClient, IpmiError
from tests.support.procs import free_port

PASSWORD = "bmc-pw-Zq8xR2"
RETRIES = 30  # per operation, after the first try


async def _main(reactor, loss: float, seed: int, ops: list[str]) -> dict:
    fleet = BmcFleet()
    bmc = fleet.add(VirtualBmc("kvm1", free_port(2), "admin", PASSWORD))
    fleet.start()
    relay = LossyUdpRelay(("127.0.0.1", bmc.port), loss=loss, seed=seed).start()
    # pyghmi's own login gives up after a few lost datagrams, and at 30 % loss each way an
    # 8 s try succeeds only about one time in four or five (measured; docs/reliability.md):
    # the client's tries, each a fresh login, carry it through. 31 tries per operation: 11
    # ran out about once in ten runs (0.8^11 per operation), 31 run out a few times in a
    # thousand (0.8^31); typical runs need ~12 tries for all 3 operations, so the time stays
    ipmi = IpmiClient(timeout=8, retries=RETRIES, backoff=0.05, concurrency=2, reactor=reactor)
    t = BmcTarget("pool1-kvm1", "127.0.0.1", relay.port, "admin", PASSWORD)
    start = time.monotonic()
    states, error = [], None
    try:
        for op in ops:
            states.append(await ipmi.power(t, op))
    except IpmiError as e:
        error = str(e)
    return {
        "states": states,
        "error": error,
        "elapsed": time.monotonic() - start,
        "dropped": relay.dropped,
        "forwarded": relay.forwarded,
        "bootdev": bmc.bootdev,
        "power_history": bmc.history("power"),
        "relay": relay.endpoint,
    }


def main() -> None:
    loss, seed, ops = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    out: dict = {}

    async def run(reactor):
        out.update(await _main(reactor, loss, seed, ops))

    try:
        task.react(lambda r: defer.ensureDeferred(run(r)))
    except SystemExit:
        pass
    print(json.dumps(out), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
