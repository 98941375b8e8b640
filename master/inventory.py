"""The lab inventory: pools of bare-metal hosts, each fronted by one worker (its QA VM).

Loaded once from YAML into typed objects; every problem is reported with file, line and
field, all at once, and nothing is half-loaded (``load_inventory`` either returns a whole,
valid ``Inventory`` or raises ``ConfigError``). Passwords are never written in the file:
a BMC, Cobbler or vCenter entry names the *secret* that holds its password.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from master.yamlconf import ConfigError, Located, Problem, Reader, check, load_file, ok

HYPERVISOR_TYPES = ("kvm", "xenserver", "vmware")

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SECRET = re.compile(r"^[A-Za-z0-9_.-]+$")
_VLANS = re.compile(r"^(\d{1,4})(?:-(\d{1,4}))?$")


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"not an IP address: {value!r}"
    return None


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"port must be 1-65535, got {value}"


def _name(value: str) -> str | None:
    return None if _NAME.match(value) else f"not a valid host/pool name: {value!r} (a-z, 0-9, '-')"


def _secret(value: str) -> str | None:
    return None if _SECRET.match(value) else f"not a valid secret name: {value!r}"


def _macs(value: list[str]) -> str | None:
    if not value:
        return "at least one MAC address is required"
    bad = [m for m in value if not _MAC.match(str(m).lower())]
    return f"malformed MAC address(es): {', '.join(map(repr, bad))}" if bad else None


def _subnet(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        return f"not a subnet in CIDR form: {value!r} ({e})"
    return None


def _vlans(value: str) -> str | None:
    m = _VLANS.match(value)
    if not m:
        return f"VLAN range must be 'N' or 'LO-HI', got {value!r}"
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not (1 <= lo <= hi <= 4094):
        return f"VLAN IDs must be 1-4094 with LO <= HI, got {value!r}"
    return None


def _url(schemes: tuple[str, ...]):
    def checker(value: str) -> str | None:
        if not re.match(rf"^({'|'.join(schemes)})://[^/\s]+(/\S*)?$", value):
            return f"expected a {'/'.join(schemes)} URL, got {value!r}"
        return None

    return checker


def _hypervisor(value: str) -> str | None:
    return (
        None if value in HYPERVISOR_TYPES else f"must be one of {', '.join(HYPERVISOR_TYPES)}, got {value!r}"
    )


@dataclass(kw_only=True)
class Bmc(Located):
    """The host's IPMI-over-LAN controller."""

    address: str = check(_ip)
    port: int = check(_port, default=623)
    username: str
    password_secret: str = check(_secret)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(kw_only=True)
class Host(Located):
    name: str = check(_name)
    macs: list[str] = check(_macs)
    ip: str = check(_ip)
    profile: str  # the Cobbler profile that installs this host
    bmc: Bmc
    ssh_port: int = check(_port, default=22)

    @property
    def mac(self) -> str:
        """The provisioning (PXE) MAC: the first one listed."""
        return self.macs[0].lower()


@dataclass(kw_only=True)
class ManagementServer(Host):
    """Runs cloudstack-management, usage and MySQL."""


@dataclass(kw_only=True)
class Hypervisor(Host):
    hypervisor: str = check(_hypervisor)


@dataclass(kw_only=True)
class Network(Located):
    subnet: str = check(_subnet)
    gateway: str = check(_ip)
    vlans: str = check(_vlans)
    http_proxy: str = check(_url(("http", "https")))
    netmask: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.subnet)

    @property
    def vlan_range(self) -> tuple[int, int]:
        lo, _, hi = self.vlans.partition("-")
        return int(lo), int(hi or lo)


@dataclass(kw_only=True)
class Storage(Located):
    primary: str = check(_url(("nfs",)))
    secondary: str = check(_url(("nfs",)))


@dataclass(kw_only=True)
class Cobbler(Located):
    """The Cobbler server on the pool's QA VM (XML-RPC API)."""

    url: str = check(_url(("http", "https")))
    username: str = "cobbler"
    password_secret: str = check(_secret)


@dataclass(kw_only=True)
class VCenter(Located):
    """vCenter for a pool with VMware ESXi hypervisors."""

    address: str
    datacenter: str
    cluster: str
    username: str
    password_secret: str = check(_secret)


@dataclass(kw_only=True)
class Pool(Located):
    name: str = check(_name)
    worker: str = check(_name)  # the Buildbot worker (the pool's QA VM)
    worker_password_secret: str | None = check(_secret, default=None)
    network: Network
    storage: Storage
    cobbler: Cobbler
    management: ManagementServer
    hypervisors: list[Hypervisor]
    vcenter: VCenter | None = None

    @property
    def worker_secret(self) -> str:
        return self.worker_password_secret or f"worker-{self.worker}"

    @property
    def hosts(self) -> list[Host]:
        return [self.management, *self.hypervisors]

    @property
    def hypervisor_types(self) -> list[str]:
        return sorted({h.hypervisor for h in self.hypervisors})

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"pool {self.name} has no host {name!r}")


@dataclass(kw_only=True)
class Inventory(Located):
    pools: list[Pool]
    lab: str = "qacloud lab"
    path: str = field(default="", init=False)  # set after loading

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(f"no pool named {name!r} in {self.path} (pools: {', '.join(self.pool_names)})")

    @property
    def pool_names(self) -> list[str]:
        return [p.name for p in self.pools]

    def all_hosts(self) -> Iterator[tuple[Pool, Host]]:
        for p in self.pools:
            for h in p.hosts:
                yield p, h

    def secret_names(self) -> set[str]:
        names = set()
        for p in self.pools:
            names |= {p.worker_secret, p.cobbler.password_secret}
            names |= {h.bmc.password_secret for h in p.hosts}
            if p.vcenter:
                names.add(p.vcenter.password_secret)
        return names

    def summary(self) -> str:
        hosts = sum(len(p.hosts) for p in self.pools)
        hv = sorted({t for p in self.pools for t in p.hypervisor_types})
        return f"{self.path}: valid; {len(self.pools)} pool(s), {hosts} host(s), hypervisors: {', '.join(hv)}"


def _cross_check(inv: Inventory, reader: Reader) -> None:
    """Lab-wide rules: uniqueness, subnets, pool shape."""
    problems = reader.problems

    def dup(kind: str, items: list[tuple[str, Located, str, str]]) -> None:
        # items: (value, object, field, description)
        by_value: dict[str, list[tuple[Located, str, str]]] = defaultdict(list)
        for value, obj, fname, desc in items:
            by_value[value].append((obj, fname, desc))
        for value, uses in by_value.items():
            if len(uses) < 2:
                continue
            first_obj, _, first_desc = uses[0]
            for obj, fname, desc in uses[1:]:
                problems.append(
                    Problem(
                        inv._file,
                        obj.line_of(fname),
                        fname,
                        f"duplicate {kind} {value}: {desc} and {first_desc} "
                        f"(line {first_obj.line_of(fname)}) both use it",
                    )
                )

    macs, ips, names, bmcs, pools, workers = [], [], [], [], [], []
    for p in inv.pools if ok(inv.pools) else []:
        if not ok(p):
            continue
        if ok(p.name):
            pools.append((p.name, p, "name", f"pool {p.name}"))
        if ok(p.worker):
            workers.append((p.worker, p, "worker", f"pool {p.name}"))
        if p.hypervisors == []:
            problems.append(
                Problem(
                    inv._file,
                    p.line_of("hypervisors"),
                    f"pools.{p.name}.hypervisors",
                    "a pool needs at least one hypervisor host",
                )
            )
        net = p.network.network if ok(p.network) and ok(p.network.subnet) else None
        if net is not None and ok(p.network.gateway) and ipaddress.ip_address(p.network.gateway) not in net:
            problems.append(
                Problem(
                    inv._file,
                    p.network.line_of("gateway"),
                    f"pools.{p.name}.network.gateway",
                    f"gateway {p.network.gateway} is outside the pool's subnet {p.network.subnet}",
                )
            )
        hypervisors = [h for h in p.hypervisors if ok(h)] if ok(p.hypervisors) else []
        if any(h.hypervisor == "vmware" for h in hypervisors) and p.vcenter is None:
            problems.append(
                Problem(
                    inv._file,
                    p.line_of("hypervisors"),
                    f"pools.{p.name}.vcenter",
                    "the pool has VMware hypervisors but no 'vcenter' section",
                )
            )
        hosts = ([p.management] if ok(p.management) else []) + hypervisors
        for h in hosts:
            desc = f"host {h.name} (pool {p.name})"
            if ok(h.ip):
                if net is not None and ipaddress.ip_address(h.ip) not in net:
                    problems.append(
                        Problem(
                            inv._file,
                            h.line_of("ip"),
                            f"pools.{p.name}.{h.name}.ip",
                            f"IP {h.ip} of host {h.name} is outside the pool's subnet {p.network.subnet}",
                        )
                    )
                ips.append((h.ip, h, "ip", desc))
            if ok(h.macs):
                for m in h.macs:
                    macs.append((m.lower(), h, "macs", desc))
            if ok(h.name):
                names.append((h.name, h, "name", desc))
            if ok(h.bmc) and ok(h.bmc.address, h.bmc.port):
                bmcs.append((h.bmc.endpoint, h.bmc, "address", f"the BMC of {desc}"))
    dup("pool name", pools)
    dup("worker", workers)
    dup("MAC address", macs)
    dup("IP address", ips)
    dup("host name", names)
    dup("BMC endpoint", bmcs)


def load_inventory(path: str | Path) -> Inventory:
    """Load and validate an inventory file; raise ConfigError listing every problem."""
    inv = load_file(Inventory, path, _cross_check)
    inv.path = str(path)
    return inv


__all__ = [
    "HYPERVISOR_TYPES",
    "Bmc",
    "Cobbler",
    "ConfigError",
    "Host",
    "Hypervisor",
    "Inventory",
    "ManagementServer",
    "Network",
    "Pool",
    "Storage",
    "VCenter",
    "load_inventory",
]
