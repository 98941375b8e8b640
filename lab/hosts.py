"""Fast simulated hosts: what a bare-metal host does when its BMC powers it on, in ~2 s.

A stand-in for a real server (the QEMU tier in lab/qemu_bmc.py boots real PXE). On power-on
with boot device *network*, a host reads the PXE config Cobbler's ``sync`` wrote for its MAC
(``pxelinux.cfg/01-<mac>``: proof that sync ran; a missing file is reported loudly and the host
never comes up), "installs" for ``install_time`` seconds, calls Cobbler's ``nopxe`` endpoint for
itself like a real installer's post-install hook, and then listens on ``ip:ssh_port`` (TCP) as
its SSH. After ``nopxe`` Cobbler's file says ``localboot``, so a later network boot boots the
installed disk. Power-off stops the listener and aborts an install in progress.

The inventory's 127.0.x.y addresses are loopback on Linux, so every host binds its own address.
"""

from __future__ import annotations

import socket
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lab.bmc import VirtualBmc

BANNER = b"SSH-2.0-qacloud-simhost\r\n"


def pxe_config_path(tftpboot: Path, mac: str) -> Path:
    """Where Cobbler's sync writes the pxelinux config of a MAC (``01-52-54-00-...``)."""
    return Path(tftpboot) / "pxelinux.cfg" / ("01-" + mac.lower().replace(":", "-"))


@dataclass
class FastHost:
    """One simulated host; thread-safe, driven by its BMC's hooks."""

    name: str
    mac: str
    ip: str
    ssh_port: int
    tftpboot: Path
    nopxe_url: str
    install_time: float = 2.0
    hang_install: bool = False  # fault: the installer never calls back
    installs: int = 0  # completed installs (nopxe called)
    boots: int = 0
    installed: bool = False
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _off: threading.Event = field(default_factory=threading.Event, repr=False)
    _listener: socket.socket | None = field(default=None, repr=False)
    _boot_thread: threading.Thread | None = field(default=None, repr=False)

    # --- driven by the BMC ------------------------------------------------------------------
    def power_on(self, bootdev: str) -> None:
        with self._lock:
            self._off = threading.Event()
            self.boots += 1
            off = self._off
            self._boot_thread = threading.Thread(
                target=self._boot, args=(bootdev, off), name=f"host-{self.name}", daemon=True
            )
            self._boot_thread.start()

    def power_off(self) -> None:
        with self._lock:
            self._off.set()
            self._stop_listening()

    # --- the boot -----------------------------------------------------------------------------
    def _fail(self, message: str) -> None:
        text = f"simulated host {self.name}: {message}"
        self.errors.append(text)
        print(text, file=sys.stderr, flush=True)

    def _boot(self, bootdev: str, off: threading.Event) -> None:
        if bootdev == "network":
            cfg = pxe_config_path(self.tftpboot, self.mac)
            try:
                text = cfg.read_text()
            except OSError:
                self._fail(
                    f"PXE boot failed: no PXE config for MAC {self.mac} at {cfg} (did Cobbler sync run?)"
                )
                return
            if "localboot" not in text:
                if not self._install(off):
                    return
        if not self.installed:
            self._fail(f"no operating system on disk (boot device {bootdev}); install it over PXE first")
            return
        with self._lock:
            if not off.is_set():
                self._listen()

    def _install(self, off: threading.Event) -> bool:
        if off.wait(self.install_time):
            return False  # powered off mid-install
        if self.hang_install:
            off.wait()  # an installer stuck forever (until power-off)
            return False
        try:
            with urllib.request.urlopen(self.nopxe_url, timeout=10) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            self._fail(f"installer call-back {self.nopxe_url} failed: {e}")
            return False
        self.installed = True
        self.installs += 1
        return True

    # --- "SSH" ---------------------------------------------------------------------------------
    def _listen(self) -> None:
        if self._listener is not None:
            return
        try:
            s = socket.create_server((self.ip, self.ssh_port), reuse_port=False)
        except OSError as e:
            self._fail(f"cannot listen on {self.ip}:{self.ssh_port}: {e.strerror or e}")
            return
        self._listener = s
        threading.Thread(target=self._serve, args=(s,), name=f"ssh-{self.name}", daemon=True).start()

    @staticmethod
    def _serve(s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return  # closed by power-off
            with conn:
                try:
                    conn.sendall(BANNER)
                except OSError:
                    pass

    def _stop_listening(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None

    @property
    def listening(self) -> bool:
        return self._listener is not None


class HostBmc(VirtualBmc):
    """A virtual BMC whose chassis is a :class:`FastHost`."""

    def __init__(self, host: FastHost, port: int, username: str, password: str):
        self.host = host
        super().__init__(host.name, port, username, password)

    def on_power(self, on: bool) -> None:
        if on:
            self.host.power_on(self.bootdev)
        else:
            self.host.power_off()


__all__ = ["BANNER", "FastHost", "HostBmc", "pxe_config_path"]
