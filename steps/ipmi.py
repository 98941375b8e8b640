"""IPMI power and boot-device control of lab hosts, with pyghmi's client, off the reactor thread.

pyghmi's client is synchronous, so every call runs on a dedicated, bounded thread pool
(``deferToThreadPool``); a ``DeferredSemaphore`` bounds how many BMCs are talked to at once.
Each try has a deadline; failed tries are retried with exponential back-off. Failures raise
:class:`IpmiError`, which names the host, the BMC address:port and the reason, never the
password. A wrong password is not retried (it would only lock the BMC account sooner).

Each call logs in afresh (about 5 ms on a LAN): pyghmi caches sessions per BMC and reuses a
cached session even after the BMC went away, which then takes ~50 s to fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

POWER_OPERATIONS = ("status", "on", "off", "cycle")
BOOT_DEVICES = {"pxe": "network", "network": "network", "disk": "hd", "hd": "hd"}

_AUTH_MARKERS = ("password", "unauthorized", "authentication", "integrity check", "invalid user")


class IpmiError(Exception):
    """An IPMI operation on one host's BMC failed; ``str()`` is meant for people."""

    def __init__(self, host: str, endpoint: str, reason: str, *, auth: bool = False):
        self.host = host
        self.endpoint = endpoint
        self.reason = reason
        self.auth = auth
        super().__init__(f"host {host}: BMC {endpoint}: {reason}")


@dataclass(frozen=True)
class BmcTarget:
    """Where and how to reach one host's BMC. The password is never printed."""

    host: str
    address: str
    port: int
    username: str
    password: str = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


def _sendto_keeping_mode(mysocket, packet, sockaddr) -> None:
    try:
        mysocket.sendto(packet, sockaddr)
    except OSError:
        pass


def install_pyghmi_io_fix() -> None:
    """Stop pyghmi 1.6.19 from flipping its shared UDP sockets to blocking mode on every send.

    Its ``_io_sendto`` calls ``setblocking(1)`` while its I/O thread's ``_io_recvfrom`` calls
    ``setblocking(0)`` then ``recvfrom``; when a send from another thread lands in between, the
    I/O thread blocks in ``recvfrom`` forever and every IPMI call in the process hangs. UDP
    ``sendto`` does not need blocking mode, so the socket is left as it is.
    """
    from pyghmi.ipmi.private import session as ipmisession

    ipmisession._io_sendto = _sendto_keeping_mode


class _Unanswered(Exception):
    pass


class _AuthFailed(Exception):
    pass


def _purge_cached_sessions(address: str, port: int) -> None:
    """Forget pyghmi's cached client sessions to this BMC so the next call logs in afresh.

    This also drops the session of an abandoned (timed-out) try still blocked on its thread,
    so a retry never joins a login that is already failing.
    """
    from pyghmi.ipmi.private import session as ipmisession

    doomed = []
    for handlers in list(ipmisession.Session.bmc_handlers.values()):
        if isinstance(handlers, dict):
            doomed += [(handlers, key, sess) for key, sess in list(handlers.items())]
    for key, sess in list(ipmisession.Session.initting_sessions.items()):
        doomed.append((ipmisession.Session.initting_sessions, key, sess))
    for container, key, sess in doomed:
        if getattr(sess, "servermode", False) or getattr(sess, "port", None) != port:
            continue
        if getattr(sess, "bmc", None) != address:
            continue
        try:
            sess._mark_broken()
        except Exception:
            sess.broken = True
        container.pop(key, None)


def _classify(exc: Exception) -> Exception:
    text = str(exc) if str(exc) not in ("", "None") else ""
    low = text.lower()
    if any(m in low for m in _AUTH_MARKERS):
        return _AuthFailed(text)
    if not text or "timeout" in low or "no longer connected" in low or "failed to initialize" in low:
        return _Unanswered(text or "no answer")
    return exc


_purge_lock = threading.Lock()


def _blocking_call(target: BmcTarget, fn: Callable[[Any], T]) -> T:
    """Log in to the BMC and run ``fn(command)``; runs on a pool thread."""
    from pyghmi.exceptions import IpmiException
    from pyghmi.ipmi import command

    install_pyghmi_io_fix()
    with _purge_lock:
        _purge_cached_sessions(target.address, target.port)
    try:
        cmd = command.Command(
            bmc=target.address,
            userid=target.username,
            password=target.password,
            port=target.port,
            keepalive=False,
        )
        return fn(cmd)
    except IpmiException as e:
        raise _classify(e) from None
    except OSError as e:
        raise _Unanswered(f"network error: {e.strerror or e}") from None


class IpmiClient:
    """Asynchronous IPMI client for the master: bounded pool, per-try timeout, retries."""

    def __init__(
        self,
        *,
        timeout: float = 10,
        retries: int = 3,
        concurrency: int = 16,
        backoff: float = 0.5,
        reactor=None,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.timeout = timeout
        self.tries = retries + 1
        self.backoff = backoff
        self._sem = defer.DeferredSemaphore(concurrency)
        # timed-out tries keep their thread until pyghmi gives up: leave room for them
        self._pool = ThreadPool(minthreads=0, maxthreads=concurrency * 2, name="qacloud-ipmi")
        self._started = False

    def _ensure_pool(self) -> None:
        if not self._started:
            self._pool.start()
            self._started = True
            self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._pool.stop()

    async def _call(self, target: BmcTarget, what: str, fn: Callable[[Any], T]) -> T:
        self._ensure_pool()
        await self._sem.acquire()
        try:
            last = "no answer"
            for attempt in range(1, self.tries + 1):
                d = deferToThreadPool(self.reactor, self._pool, _blocking_call, target, fn)
                d.addTimeout(self.timeout, self.reactor)
                try:
                    return await d
                except defer.TimeoutError:
                    last = "no answer"
                except _AuthFailed:
                    raise IpmiError(
                        target.host,
                        target.endpoint,
                        f"{what}: authentication failed (wrong password?)",
                        auth=True,
                    ) from None
                except _Unanswered:
                    last = "no answer"
                except Exception as e:  # a BMC completion code or a pyghmi error
                    last = f"BMC error: {e}"
                if attempt < self.tries:
                    await task.deferLater(self.reactor, self.backoff * 2 ** (attempt - 1))
            tries = f"{self.tries} {'try' if self.tries == 1 else 'tries'}"
            if last == "no answer":
                reason = f"{what}: no answer within {self.timeout:g} s after {tries}"
            else:
                reason = f"{what}: {last} (after {tries})"
            raise IpmiError(target.host, target.endpoint, reason)
        finally:
            self._sem.release()

    async def power_status(self, target: BmcTarget) -> str:
        """'on' or 'off'."""
        r = await self._call(target, "power status", lambda c: c.get_power())
        return r["powerstate"]

    async def power_on(self, target: BmcTarget) -> None:
        await self._call(target, "power on", lambda c: c.set_power("on"))

    async def power_off(self, target: BmcTarget) -> None:
        await self._call(target, "power off", lambda c: c.set_power("off"))

    async def power_cycle(self, target: BmcTarget) -> None:
        """Power on if off, reset if on: the host boots afresh either way."""
        await self._call(target, "power cycle", lambda c: c.set_power("boot"))

    async def set_bootdev(self, target: BmcTarget, device: str) -> None:
        """Next boot from 'pxe' (network) or 'disk' (hd), for the next boot only."""
        if device not in BOOT_DEVICES:
            raise ValueError(f"unknown boot device {device!r} (pxe, disk)")
        dev = BOOT_DEVICES[device]
        await self._call(target, f"set boot device {device}", lambda c: c.set_bootdev(dev, persist=False))

    async def get_bootdev(self, target: BmcTarget) -> str:
        r = await self._call(target, "get boot device", lambda c: c.get_bootdev())
        return r.get("bootdev", "default")

    async def power(self, target: BmcTarget, operation: str) -> str:
        """Run a named operation ('status', 'on', 'off', 'cycle', 'pxe'); return the power state."""
        if operation == "pxe":
            await self.set_bootdev(target, "pxe")
        elif operation == "on":
            await self.power_on(target)
        elif operation == "off":
            await self.power_off(target)
        elif operation == "cycle":
            await self.power_cycle(target)
        elif operation != "status":
            raise ValueError(f"unknown power operation {operation!r}")
        return await self.power_status(target)


def targets_for(hosts, passwords: dict[str, str]) -> list[BmcTarget]:
    """BmcTargets for inventory hosts, given secret name -> password."""
    return [
        BmcTarget(h.name, h.bmc.address, h.bmc.port, h.bmc.username, passwords[h.bmc.password_secret])
        for h in hosts
    ]


__all__ = [
    "BOOT_DEVICES",
    "POWER_OPERATIONS",
    "BmcTarget",
    "IpmiClient",
    "IpmiError",
    "install_pyghmi_io_fix",
    "targets_for",
]
