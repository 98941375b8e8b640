"""The simulated lab of a whole inventory: one virtual BMC and one fast host per inventory host.

``SimLab(inventory, secrets, workdir, cobbler)`` uses an already running Cobbler
(``lab.cobbler.CobblerServer``: its ``tftpboot`` and ``/cblr/svc`` URL). Every BMC binds
127.0.0.1 on the port the inventory gives it and takes its credentials from the secrets, so
qacloud's steps reach it exactly as they would reach a real lab. Tests read the records:
each BMC's power/boot-device history and each host's install count.

CLI (the demo): ``python -m lab.simlab --settings F`` starts Cobbler and the lab for the
settings' inventory and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from lab.bmc import BmcFleet
from lab.hosts import FastHost, HostBmc
from lab.secrets import read_secret
from master.inventory import Inventory


class CobblerLike(Protocol):
    tftpboot: Path
    svc_url: str


class SimLab:
    """Virtual BMCs + fast hosts for every host of ``inventory`` (or of ``pools``)."""

    def __init__(
        self,
        inventory: Inventory,
        secrets: Mapping[str, str] | str | Path,
        workdir: str | Path,
        cobbler: CobblerLike,
        install_time: float = 2.0,
        pools: list[str] | None = None,
    ):
        self.inventory = inventory
        self._secrets = secrets
        self.workdir = Path(workdir)
        self.cobbler = cobbler
        self.install_time = install_time
        self.pool_names = pools or inventory.pool_names
        self.fleet = BmcFleet()
        self.hosts: dict[str, FastHost] = {}

    def _password(self, name: str) -> str:
        if isinstance(self._secrets, Mapping):
            return self._secrets[name]
        return read_secret(self._secrets, name)

    def start(self) -> SimLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for pool_name in self.pool_names:
                pool = self.inventory.pool(pool_name)
                for h in pool.hosts:
                    host = FastHost(
                        name=h.name,
                        mac=h.mac,
                        ip=h.ip,
                        ssh_port=h.ssh_port,
                        tftpboot=Path(self.cobbler.tftpboot),
                        nopxe_url=f"{self.cobbler.svc_url}/op/nopxe/system/{h.name}",
                        install_time=self.install_time,
                    )
                    self.hosts[h.name] = host
                    self.fleet.add(
                        HostBmc(host, h.bmc.port, h.bmc.username, self._password(h.bmc.password_secret))
                    )
        except Exception:
            self.stop()
            raise
        self.fleet.start()
        return self

    def stop(self) -> None:
        self.fleet.stop()
        for h in self.hosts.values():
            h.power_off()

    def __enter__(self) -> SimLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- records and faults for tests ------------------------------------------------------
    def bmc(self, host: str) -> HostBmc:
        return self.fleet[host]  # type: ignore[return-value]

    def power_history(self, host: str) -> list[str]:
        return self.bmc(host).history("power")

    def bootdev_history(self, host: str) -> list[str]:
        return self.bmc(host).history("bootdev")

    def installs(self, host: str) -> int:
        return self.hosts[host].installs

    def is_on(self, host: str) -> bool:
        return host in self.fleet.bmcs and self.bmc(host).power

    def kill_bmc(self, host: str) -> None:
        """Fault: the host's BMC stops answering."""
        self.fleet.remove(host)

    def hang_installer(self, host: str, hang: bool = True) -> None:
        """Fault: the host's installer never calls back."""
        self.hosts[host].hang_install = hang


def main(argv: list[str] | None = None) -> int:
    from lab.cobbler import CobblerServer
    from master.inventory import load_inventory
    from master.settings import load_settings
    from master.yamlconf import ConfigError

    ap = argparse.ArgumentParser(
        prog="python -m lab.simlab", description="run the simulated lab until SIGTERM"
    )
    ap.add_argument("--settings", help="settings YAML (default: $QACLOUD_SETTINGS or the demo settings)")
    ap.add_argument("--workdir", default=None, help="state directory (default: var/simlab next to the repo)")
    ap.add_argument("--install-time", type=float, default=2.0)
    ns = ap.parse_args(argv)
    try:
        s = load_settings(ns.settings)
        inv = load_inventory(s.inventory_path)
    except ConfigError as e:
        for p in e.problems:
            print(str(p), file=sys.stderr)
        return 1
    workdir = Path(ns.workdir) if ns.workdir else Path(__file__).resolve().parent.parent / "var" / "simlab"
    cobbler_users = {p.cobbler.username for p in inv.pools}
    cobbler_secret = inv.pools[0].cobbler.password_secret
    cobbler = CobblerServer(
        workdir / "cobbler",
        username=sorted(cobbler_users)[0],
        password=read_secret(s.secrets_path, cobbler_secret),
    )
    try:
        cobbler.start()
        cobbler.ensure_profiles(sorted({h.profile for _, h in inv.all_hosts()}))
        lab = SimLab(inv, s.secrets_path, workdir, cobbler, install_time=ns.install_time).start()
    except Exception as e:
        cobbler.stop()
        print(f"lab.simlab: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"simulated lab up: {len(lab.hosts)} host(s); Cobbler API at {cobbler.url}", flush=True)
    done.wait()
    lab.stop()
    cobbler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
