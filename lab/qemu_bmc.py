"""A virtual BMC whose chassis is a QEMU VM: IPMI power maps to QMP (../shared/notes/lab.md §4.4).

The VM is started paused (``-S -no-shutdown``, without ``-no-reboot``), so "off" is a paused,
freshly reset machine and "on" is ``cont``. A guest that powers itself off (``poweroff -f``)
stays alive in QMP state ``shutdown``, which reads as "off"; powering on again resets it first.
One short QMP connection per IPMI request, as virtualbmc does with libvirt.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from lab.bmc import VirtualBmc


class QmpError(RuntimeError):
    """A QMP command failed (the message names the socket and the command)."""


class Qmp:
    """A minimal synchronous QMP client over a unix socket (one connection per use)."""

    def __init__(self, path: Path, timeout: float = 5) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def _connect(self) -> tuple[socket.socket, object]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(str(self.path))
        f = s.makefile("rwb")
        json.loads(f.readline())  # greeting
        self._send(f, "qmp_capabilities")
        self._reply(f, "qmp_capabilities")
        return s, f

    @staticmethod
    def _send(f, cmd: str, **args) -> None:
        msg = {"execute": cmd, **({"arguments": args} if args else {})}
        f.write(json.dumps(msg).encode() + b"\n")
        f.flush()

    def _reply(self, f, cmd: str, events: list | None = None):
        while True:
            line = f.readline()
            if not line:
                raise QmpError(f"QMP {self.path}: connection closed during {cmd}")
            msg = json.loads(line)
            if "event" in msg:
                if events is not None:
                    events.append(msg["event"])
                continue
            if "error" in msg:
                raise QmpError(f"QMP {self.path}: {cmd}: {msg['error'].get('desc')}")
            return msg.get("return")

    def run(self, *commands: str, wait_event: str | None = None) -> list:
        """Run commands in order; with ``wait_event``, wait for that event after the last one."""
        s, f = self._connect()
        try:
            events: list[str] = []
            results = []
            for cmd in commands:
                self._send(f, cmd)
                results.append(self._reply(f, cmd, events))
            deadline = time.monotonic() + self.timeout
            while wait_event and wait_event not in events:
                if time.monotonic() > deadline:
                    raise QmpError(f"QMP {self.path}: no {wait_event} event after {commands[-1]}")
                msg = json.loads(f.readline() or b'{"event": "EOF"}')
                events.append(msg.get("event", ""))
            return results
        finally:
            f.close()
            s.close()

    def status(self) -> str:
        return self.run("query-status")[0]["status"]


class QemuBmc(VirtualBmc):
    """A VirtualBmc (lab/bmc.py) driving a QEMU VM through its QMP socket."""

    def __init__(self, name: str, port: int, username: str, password: str, qmp_socket: Path) -> None:
        self.qmp = Qmp(qmp_socket)
        super().__init__(name, port, username, password)

    def _running(self) -> bool:
        return self.qmp.status() == "running"

    def get_power_state(self):
        self.power = self._running()
        return "on" if self.power else "off"

    def power_on(self):
        self.power = self._running()  # the guest may have powered itself off
        return super().power_on()

    def power_off(self):
        self.power = self._running()
        return super().power_off()

    def on_power(self, on: bool) -> None:
        status = self.qmp.status()
        if on:
            if status == "shutdown":  # guest powered off: reset first, then run
                self.qmp.run("system_reset", wait_event="RESET")
            self.qmp.run("cont")
        elif status != "prelaunch":
            # hard off: stop the CPU and reset, so the next "on" boots from the firmware
            self.qmp.run("stop", "system_reset", wait_event="RESET")

    def on_reset(self) -> None:
        self.qmp.run("system_reset", wait_event="RESET")
