"""Virtual BMCs: real IPMI-over-LAN (RMCP+) servers on 127.0.0.1, one UDP port per host.

Built on pyghmi's BMC server class. Each ``VirtualBmc`` holds a chassis power state and a
next boot device and calls overridable hooks when they change, so the fast simulated hosts
(lab/hosts.py) and the QEMU-backed BMCs (lab/qemu_bmc.py) share one implementation.

pyghmi 1.6.19 needs two fixes here (../shared/notes/lab.md §2.1):

* its server answers "OK" to a SHA-256 open-session proposal and then speaks SHA-1, so its
  own client cannot log in; :class:`_Sha1OnlyServerSession` rejects non-SHA-1 proposals with
  RMCP+ status 0x11 and the client retries with SHA-1;
* its server binds every address unless told otherwise; we always bind 127.0.0.1.

Run standalone (for tests that kill BMCs)::

    python -m lab.bmc --spec FILE.json        # [{"name", "port", "username", "password"}, ...]

It prints ``ready`` once every BMC listens and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.session as ipmisession
from pyghmi.ipmi.private import serversession

LOOPBACK = "127.0.0.1"
BOOT_DEVICES = ("default", "network", "hd", "optical", "setup", "floppy", "usb")
NOT_IN_PRESENT_STATE = 0xD5  # IPMI completion code: cannot execute in present state
_RMCP_INVALID_AUTH_ALGORITHM = 0x11
_RAKP_HMAC_SHA1 = 1

_original_server_session = serversession.ServerSession
_lock = threading.RLock()


class _Sha1OnlyServerSession(_original_server_session):
    """pyghmi's server session, refusing proposals it would not honour (it only does SHA-1)."""

    def create_open_session_response(self, request):
        request = bytearray(request)
        # byte 12 of the Open Session Request: the requested authentication algorithm
        if len(request) > 12 and request[12] != _RAKP_HMAC_SHA1:
            self.close_server_session()  # the client's SHA-1 retry must reach the BMC, not us
            return bytearray([request[0], _RMCP_INVALID_AUTH_ALGORITHM, 0, 0]) + request[4:8]
        return super().create_open_session_response(request)

    def _handle_ipmi_packet(self, data, sockaddr=None, qent=None):
        # A new client on a source port we already saw: pyghmi forgets *every* BMC's session
        # with that client address (one client often talks to several BMCs from one port);
        # forget only this BMC's and hand the packet to the BMC.
        if (
            qent is not None
            and len(data) >= 13
            and data[4] in (0, 2)
            and bytes(data[5:13]) == bytes(8)
            and qent[2] in ipmisession.Session.bmc_handlers
        ):
            self.close_server_session()
            self.bmc.pktqueue.append(qent)
            self.bmc.process_pktqueue()
            return None
        return super()._handle_ipmi_packet(data, sockaddr=sockaddr, qent=qent)

    # pyghmi never forgets a closed server session (close_server_session is a no-op), and when
    # one client address talks to several BMCs it may route a new session's first, sessionless
    # packet to such a stale session, which has no sessionless_data: the I/O thread died and
    # every BMC of the process stopped answering (seen in the demo). Forget closed sessions, and
    # hand stray sessionless packets to the BMC, as for a new client.
    def close_server_session(self):
        handlers = ipmisession.Session.bmc_handlers.get(self.sockaddr)
        if isinstance(handlers, dict) and handlers.get(self.bmc.port) is self:
            del handlers[self.bmc.port]
            if not handlers:
                ipmisession.Session.bmc_handlers.pop(self.sockaddr, None)

    def sessionless_data(self, data, sockaddr):
        self.bmc.sessionless_data(data, sockaddr)


def install_server_fix() -> None:
    """Make pyghmi's server use the SHA-1-only session (idempotent; before any BMC exists)."""
    from steps.ipmi import install_pyghmi_io_fix

    with _lock:
        install_pyghmi_io_fix()
        serversession.ServerSession = _Sha1OnlyServerSession
        if ipmisession.myself is None and not ipmisession.iosockets:
            # pyghmi wakes its I/O thread by sending a byte to ``myself`` through its first
            # socket. If that first socket were a BMC's IPv4 socket, pyghmi would pick an IPv6
            # ``myself`` it cannot reach, and closing that BMC would break the wake-up; so the
            # first socket is a permanent IPv4 waker on 127.0.0.1.
            waker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            waker.bind((LOOPBACK, 0))
            ipmisession.iosockets.append(waker)
            ipmisession.myself = LOOPBACK


@dataclass
class Event:
    """One change seen by a BMC: ``kind`` is 'power' or 'bootdev'."""

    at: float
    kind: str
    value: str


class VirtualBmc(pyghmi_bmc.Bmc):
    """One host's BMC on 127.0.0.1:port with in-memory power state and boot device.

    Subclasses override :meth:`on_power`, :meth:`on_reset` and :meth:`on_bootdev` to act on
    a machine; they are called on pyghmi's I/O thread and must return quickly.
    """

    def __init__(self, name: str, port: int, username: str, password: str, address: str = LOOPBACK):
        if address not in (LOOPBACK, "::1") and not address.startswith("127."):
            raise ValueError(f"virtual BMC {name}: refusing to bind {address}: loopback only")
        install_server_fix()
        self.name = name
        self.address = address
        self.power = False
        self.bootdev = "default"
        self.events: list[Event] = []
        self._state = threading.Lock()
        try:
            super().__init__({username: password}, port=port, address=address)
        except OSError as e:
            raise OSError(f"virtual BMC {name}: cannot bind UDP {address}:{port}: {e.strerror or e}") from e

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    # --- hooks -------------------------------------------------------------------------
    def on_power(self, on: bool) -> None:
        """The chassis was powered on or off."""

    def on_reset(self) -> None:
        """A reset/cycle while on: by default the host goes off and on again."""
        self.on_power(False)
        self.on_power(True)

    def on_bootdev(self, dev: str) -> None:
        """The next boot device changed ('network', 'hd', ...)."""

    # --- pyghmi Bmc interface ----------------------------------------------------------
    def _record(self, kind: str, value: str) -> None:
        self.events.append(Event(time.time(), kind, value))

    def get_power_state(self):
        return "on" if self.power else "off"

    def power_on(self):
        with self._state:
            was, self.power = self.power, True
            self._record("power", "on")
        if not was:
            self.on_power(True)
        return 0

    def power_off(self):
        with self._state:
            was, self.power = self.power, False
            self._record("power", "off")
        if was:
            self.on_power(False)
        return 0

    def power_shutdown(self):
        return self.power_off()

    def power_reset(self):
        with self._state:
            if not self.power:
                return NOT_IN_PRESENT_STATE
            self._record("power", "reset")
        self.on_reset()
        return 0

    def power_cycle(self):
        return self.power_reset()

    def get_boot_device(self):
        return self.bootdev

    def set_boot_device(self, bootdevice):
        with self._state:
            self.bootdev = str(bootdevice)
            self._record("bootdev", self.bootdev)
        self.on_bootdev(self.bootdev)

    def cold_reset(self):
        return 0

    def is_active(self):
        return self.power

    def close(self) -> None:
        """Stop answering: unregister and close the UDP socket."""
        sock = self.serversocket
        with _lock:
            ipmisession.Session.bmc_handlers.pop(sock, None)
            for handlers in list(ipmisession.Session.bmc_handlers.values()):
                if isinstance(handlers, dict) and handlers.get(self.port) is not None:
                    sess = handlers.get(self.port)
                    if getattr(sess, "bmc", None) is self:
                        handlers.pop(self.port, None)
            if sock in ipmisession.iosockets:
                ipmisession.iosockets.remove(sock)
        # pyghmi's I/O thread may be in select() on this socket: wake it so it re-reads the
        # socket list before the socket is closed (select() on a closed fd kills that thread).
        waker = ipmisession.iosockets[0] if ipmisession.iosockets else None
        if waker is not None and ipmisession.myself:
            try:
                waker.sendto(b"\x01", (ipmisession.myself, waker.getsockname()[1]))
            except OSError:
                pass
            time.sleep(0.05)
        sock.close()

    def history(self, kind: str | None = None) -> list[str]:
        return [e.value for e in self.events if kind is None or e.kind == kind]


@dataclass
class BmcSpec:
    name: str
    port: int
    username: str
    password: str


@dataclass
class BmcFleet:
    """N virtual BMCs served by one thread of this process; ``stop()`` closes them all."""

    bmcs: dict[str, VirtualBmc] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def add(self, bmc: VirtualBmc) -> VirtualBmc:
        if bmc.name in self.bmcs:
            raise ValueError(f"BMC {bmc.name} is already in the fleet")
        self.bmcs[bmc.name] = bmc
        return bmc

    def start(self) -> BmcFleet:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._serve, name="bmc-fleet", daemon=True)
            self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                ipmisession.Session.wait_for_rsp(0.2)
            except Exception as e:  # one bad packet must not silence every BMC of the process
                print(
                    f"virtual BMCs: dropped a packet pyghmi could not handle: {e!r}",
                    file=sys.stderr,
                    flush=True,
                )

    def remove(self, name: str) -> None:
        """Stop one BMC (it no longer answers: a 'BMC down' fault)."""
        self.bmcs.pop(name).close()

    def stop(self) -> None:
        for name in list(self.bmcs):
            self.remove(name)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __getitem__(self, name: str) -> VirtualBmc:
        return self.bmcs[name]


def start_fleet(specs: Iterable[BmcSpec], cls: type[VirtualBmc] = VirtualBmc) -> BmcFleet:
    fleet = BmcFleet()
    try:
        for s in specs:
            fleet.add(cls(s.name, s.port, s.username, s.password))
    except Exception:
        fleet.stop()
        raise
    return fleet.start()


def udp_port_free(port: int, address: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.bmc", description="serve virtual BMCs on 127.0.0.1")
    ap.add_argument("--spec", required=True, help='JSON list of {"name", "port", "username", "password"}')
    ns = ap.parse_args(argv)
    try:
        with open(ns.spec) as f:
            specs = [BmcSpec(**d) for d in json.load(f)]
        fleet = start_fleet(specs)
    except (OSError, ValueError, TypeError) as e:
        print(f"lab.bmc: {ns.spec}: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
