"""IPMI test helpers."""

from __future__ import annotations

import steps.ipmi


def count_tries(case) -> list[str]:
    """Record every IPMI try (one pyghmi login + command) ``case`` makes, by host, until its
    cleanup: the list it returns grows as tries run (``case`` is a trial TestCase)."""
    tries: list[str] = []
    real = steps.ipmi._blocking_call

    def counted(target, fn, attempt):
        tries.append(target.host)
        return real(target, fn, attempt)

    case.patch(steps.ipmi, "_blocking_call", counted)
    return tries


def udp_bindings() -> list[str]:
    """The local addresses this process's open UDP sockets are bound to, from /proc: IPv4 as
    ``a.b.c.d``, IPv6 in ``ipaddress`` notation (``::ffff:127.0.0.1``, ``::``)."""
    import ipaddress
    import os

    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = []
    for table, size in (("/proc/net/udp", 4), ("/proc/net/udp6", 16)):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[9] not in inodes:
                    continue
                hexaddr = cols[1].split(":")[0]
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(bytes.fromhex(hexaddr[i : i + 8])[::-1] for i in range(0, 2 * size, 8))
                addr = ipaddress.ip_address(raw)
                mapped = getattr(addr, "ipv4_mapped", None)
                found.append(f"::ffff:{mapped}" if mapped else str(addr))
    return found
