"""Raw inventory dicts of simple lab pools, for tests and benchmarks (before ``load_inventory``).

One builder so tests (``tests.support.procs.simple_pool``) and ``bench/hotpaths.py`` describe
pools the same way: a management server plus N KVM hosts on ``127.0.<index>.0/24``; host ``k``
(0 = management) has IP ``127.0.<index>.<10 + k>`` and MAC ``52:54:00:<index>:00:<10 + k>`` (hex).
"""

from __future__ import annotations

# Nothing listens here (the discard port on loopback): for pools that never talk to Cobbler.
# Tests that provision pass their ``cobbler_server.url`` instead.
NO_COBBLER_URL = "http://127.0.0.1:9/cobbler_api"


def simple_pool(
    name: str,
    index: int,
    bmc_ports: list[int] | None = None,
    ssh_port: int = 22,
    cobbler_url: str = NO_COBBLER_URL,
    hypervisors: int = 2,
) -> dict:
    """A pool of 1 management server + ``hypervisors`` KVM hosts on 127.0.<index>.0/24.

    ``bmc_ports``: one UDP port per host, management server first (default: fixed numbers
    ``16000 + index * 10 + k``, for pools whose BMCs are never contacted).
    """
    if not 0 < index < 255:
        raise ValueError(f"simple_pool {name}: index must be 1-254 (127.0.<index>.0/24), got {index}")
    if not 1 <= hypervisors <= 240:
        raise ValueError(f"simple_pool {name}: hypervisors must be 1-240, got {hypervisors}")
    n_hosts = 1 + hypervisors
    ports = bmc_ports or [16000 + index * 10 + k for k in range(n_hosts)]
    if len(ports) != n_hosts:
        raise ValueError(f"simple_pool {name}: {n_hosts} hosts need {n_hosts} BMC ports, got {len(ports)}")
    net = f"127.0.{index}"

    def host(hname: str, k: int, hv: str | None = None) -> dict:
        last = 10 + k
        h = {
            "name": f"{name}-{hname}",
            "macs": [f"52:54:00:{index:02x}:00:{last:02x}"],
            "ip": f"{net}.{last}",
            "profile": "qacloud-kvm" if hv else "qacloud-mgmt",
            "ssh_port": ssh_port,
            "bmc": {
                "address": "127.0.0.1",
                "port": ports[k],
                "username": "admin",
                "password_secret": f"bmc-{name}",
            },
        }
        if hv:
            h["hypervisor"] = hv
        return h

    return {
        "name": name,
        "worker": f"{name}-qavm",
        "network": {
            "subnet": f"{net}.0/24",
            "gateway": f"{net}.1",
            "vlans": "100-199",
            "http_proxy": f"http://{net}.2:3128",
        },
        "storage": {
            "primary": f"nfs://{net}.2/export/primary",
            "secondary": f"nfs://{net}.2/export/secondary",
        },
        "cobbler": {"url": cobbler_url, "username": "cobbler", "password_secret": "cobbler"},
        "management": host("mgmt", 0),
        "hypervisors": [host(f"kvm{k}", k, "kvm") for k in range(1, n_hosts)],
    }
