"""Asynchronous Cobbler XML-RPC client (Twisted): register a pool's hosts as Cobbler systems.

Every call runs on the reactor (``twisted.web.client.Agent`` carrying stdlib ``xmlrpc.client``
payloads; ``twisted.web.xmlrpc.Proxy`` is built on the deprecated ``HTTPClient``), never
blocking it, with a per-call timeout. Failures raise ``CobblerError`` naming the Cobbler URL,
the object and the reason; the password never appears in any message.

Systems are tagged with their pool in Cobbler's ``comment`` field (``qacloud-pool:<name>``) so
``remove_stale``/``remove_pool`` only ever touch systems qacloud registered for that pool.
The BMC password is **not** stored in Cobbler: qacloud drives power itself over IPMI
(steps/ipmi.py), and Cobbler returns ``power_pass`` in clear to any API reader. Cobbler gets the
BMC address, port (``power_options``: ``ipport=``) and user, so ``cobbler system report`` still
tells an admin where the BMC is.

PXE files: saving a system already makes Cobbler write that system's ``pxelinux.cfg/01-<mac>``
(its "lite sync"); ``sync_systems`` re-writes the given systems' files and the PXE menu as a
background task and waits for it. It never touches other systems' files, unlike the full
``sync``, which first empties ``pxelinux.cfg`` for every system on the server: a host of another
pool sharing the Cobbler server that PXE-boots at that moment finds no config.
"""

from __future__ import annotations

import ipaddress
import re
import time
import xmlrpc.client
from collections.abc import Iterable
from io import BytesIO
from typing import Any

from twisted.internet import defer, error, reactor, task
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from master.inventory import Host, Pool

POOL_TAG = "qacloud-pool:"
POWER_TYPE = "ipmilanplus"
# a Cobbler task's status is polled at once, then after 0.1 s, the interval doubling up to 1 s
TASK_POLL_FIRST = 0.1
TASK_POLL_MAX = 1.0


class CobblerError(Exception):
    """A Cobbler call failed; the message names the Cobbler URL, the object and the reason."""


class _HttpError(Exception):
    pass


def pool_tag(pool: Pool | str) -> str:
    """The ``comment`` that marks a system as registered by qacloud for ``pool``."""
    return POOL_TAG + (pool if isinstance(pool, str) else pool.name)


class CobblerClient:
    """Talks to one Cobbler server's XML-RPC API (e.g. ``http://cobbler/cobbler_api``)."""

    def __init__(
        self, url: str, username: str, password: str, timeout: float = 30, concurrency: int = 8
    ) -> None:
        """``concurrency``: how many systems are written (or removed) at the same time."""
        if concurrency < 1:
            raise ValueError(f"CobblerClient: concurrency must be >= 1, got {concurrency}")
        self.url = url
        self.username = username
        self._password = password
        self.timeout = timeout
        self.concurrency = concurrency
        self._token: str | None = None
        self._login_lock = defer.DeferredLock()
        self._agent = Agent(reactor, connectTimeout=timeout)  # non-persistent: nothing left open

    # -- plumbing -----------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        return text.replace(self._password, "<password>") if self._password else text

    def _error(self, what: str, reason: str) -> CobblerError:
        return CobblerError(self._clean(f"Cobbler at {self.url}: {what}: {reason}"))

    async def _post(self, method: str, args: tuple) -> Any:
        body = xmlrpc.client.dumps(args, method, allow_none=True).encode()
        response = await self._agent.request(
            b"POST",
            self.url.encode(),
            Headers({b"Content-Type": [b"text/xml"]}),
            FileBodyProducer(BytesIO(body)),
        )
        data = await _read_body(response)
        if response.code != 200:
            text = data.decode(errors="replace").strip()[:200]
            raise _HttpError(
                f"HTTP {response.code} {response.phrase.decode(errors='replace')} {text}".strip()
            )
        (result,), _ = xmlrpc.client.loads(data, use_builtin_types=True)  # raises Fault
        return result

    async def _call(self, method: str, *args: Any, what: str) -> Any:
        d = defer.ensureDeferred(self._post(method, args))
        # whatever the cancelled request ended with (ResponseFailed([CancelledError])...), it timed out
        d.addTimeout(self.timeout, reactor, onTimeoutCancel=lambda _r, t: Failure(defer.TimeoutError(t)))
        try:
            return await d
        except xmlrpc.client.Fault as f:
            raise self._error(what, _fault_text(f)) from None
        except _HttpError as e:
            raise self._error(what, str(e)) from None
        except xmlrpc.client.ResponseError as e:
            raise self._error(what, f"not an XML-RPC answer: {e}") from None
        except error.ConnectionRefusedError:
            raise self._error(what, "connection refused (is Cobbler running?)") from None
        except (defer.TimeoutError, defer.CancelledError, error.TimeoutError):
            raise self._error(what, f"no answer within {self.timeout:g} s (timeout)") from None
        except error.ConnectError as e:
            raise self._error(what, f"cannot connect: {e}") from None
        except (ResponseFailed, error.ConnectionLost, error.ConnectionDone) as e:
            raise self._error(what, f"connection lost: {e}") from None

    async def _authed(self, method: str, *args: Any, what: str, after: tuple = ()) -> Any:
        """A call taking the token after ``args`` (then ``after``); logs in again, once, if it expired."""
        if self._token is None:
            await self._relogin(None)
        token = self._token
        try:
            return await self._call(method, *args, token, *after, what=what)
        except CobblerError as e:
            if "invalid token" not in str(e):
                raise
        await self._relogin(token)
        return await self._call(method, *args, self._token, *after, what=what)

    async def _relogin(self, stale: str | None) -> None:
        """Log in unless a concurrent call already replaced the ``stale`` token."""
        await self._login_lock.acquire()
        try:
            if self._token is None or self._token == stale:
                await self.login()
        finally:
            self._login_lock.release()

    # -- API ----------------------------------------------------------------------------------
    async def login(self) -> None:
        """Get a fresh API token."""
        try:
            self._token = await self._call(
                "login", self.username, self._password, what=f"login as {self.username}"
            )
        except CobblerError as e:
            if "login failed" in str(e):
                raise self._error(
                    f"login as {self.username}", "authentication failed (wrong username or password)"
                ) from None
            raise

    async def ping(self) -> bool:
        return bool(await self._call("ping", what="ping"))

    async def profiles(self) -> list[str]:
        return list(await self._call("get_item_names", "profile", what="list profiles"))

    async def systems(self, pool: Pool | str | None = None) -> list[str]:
        """Names of all systems, or of those tagged with ``pool``."""
        if pool is None:
            return list(await self._call("get_item_names", "system", what="list systems"))
        found = await self._call("get_systems", what="list systems")
        return sorted(s["name"] for s in found if s.get("comment") == pool_tag(pool))

    async def get_system(self, name: str) -> dict | None:
        s = await self._call("get_system", name, what=f"system {name}")
        return None if s == "~" else s  # Cobbler answers '~' for a missing name

    async def register_pool(self, pool: Pool) -> list[str]:
        """Create or update one system per host of ``pool``; return their names.

        One ``xapi_object_edit`` call per new single-MAC system (all fields, ``eth0`` and the save),
        systems handled ``concurrency`` at a time. All-or-nothing for what this call creates:
        profiles are checked first, and if a host fails, no further host is started and the
        systems created by this call are removed again before the (first) error is raised.
        """
        known = set(await self.profiles())
        for h in pool.hosts:
            if h.profile not in known:
                raise self._error(
                    f"system {h.name} (pool {pool.name})",
                    f"unknown profile {h.profile!r} (Cobbler has: {', '.join(sorted(known)) or 'none'})",
                )
        existing = set(await self.systems())
        created: list[str] = []

        async def save(h: Host) -> None:
            await self._save_system(pool, h, h.name not in existing, created)

        errors = await self._fan_out([lambda h=h: save(h) for h in pool.hosts])
        if errors:
            await self._fan_out(
                [lambda n=n: self._authed("remove_system", n, what=f"roll back system {n}") for n in created],
                fail_fast=False,
            )  # best effort: the original error is the one to report
            raise errors[0]
        return [h.name for h in pool.hosts]

    async def _save_system(self, pool: Pool, h: Host, new: bool, created: list[str]) -> None:
        """``add`` (or ``edit``) the system with every field and ``eth0`` in one call; extra
        interfaces are one ``edit`` each, and interfaces the inventory dropped one delete each."""
        what = f"system {h.name} (pool {pool.name})"
        wanted = _interfaces(pool, h)
        fields = {
            "name": h.name,
            "profile": h.profile,
            "hostname": h.name,
            "comment": pool_tag(pool),
            "netboot_enabled": True,
            "gateway": pool.network.gateway,
            "power_type": POWER_TYPE,
            "power_address": h.bmc.address,
            "power_user": h.bmc.username,
            "power_pass": "",
            "power_options": f"ipport={h.bmc.port}\nlanplus=1",
        }
        first, *rest = wanted.items()
        edit = "add" if new else "edit"
        if not new:
            current = await self.get_system(h.name) or {}
            for ifname in sorted(set(current.get("interfaces", {})) - set(wanted)):
                attrs = {"interface": ifname, "delete_interface": True}
                await self._xedit(h.name, "edit", attrs, what=f"{what}: delete interface {ifname}")
        await self._xedit(h.name, edit, {**fields, "interface": first[0], **first[1]}, what=what)
        if new:
            created.append(h.name)
        for ifname, attrs in rest:
            await self._xedit(h.name, "edit", {"interface": ifname, **attrs}, what=f"{what}: {ifname}")

    async def _xedit(self, name: str, edit: str, attrs: dict[str, Any], what: str) -> None:
        await self._authed("xapi_object_edit", "system", name, edit, attrs, what=what)

    async def _fan_out(self, jobs: list, fail_fast: bool = True) -> list[BaseException]:
        """Run ``jobs`` (async callables), at most ``concurrency`` at a time; return what they
        raised (``CobblerError``, or a cancellation), in job order. ``fail_fast``: after an
        error, jobs not yet started are skipped."""
        sem = defer.DeferredSemaphore(self.concurrency)
        failed = False

        async def one(job) -> None:
            nonlocal failed
            if failed:
                return
            try:
                await job()
            except BaseException:
                failed = fail_fast
                raise

        ds = [sem.run(lambda job=job: defer.ensureDeferred(one(job))) for job in jobs]
        results = await defer.DeferredList(ds, consumeErrors=True)
        return [value.value for ok, value in results if not ok]

    async def remove_stale(self, pool: Pool | str, keep_names) -> list[str]:
        """Remove the systems tagged with ``pool`` that are not in ``keep_names``; return them."""
        keep = set(keep_names)
        stale = [n for n in await self.systems(pool) if n not in keep]
        errors = await self._fan_out(
            [lambda n=n: self._authed("remove_system", n, what=f"remove stale system {n}") for n in stale]
        )
        if errors:
            raise errors[0]
        return stale

    async def remove_pool(self, pool: Pool | str) -> list[str]:
        """Remove every system tagged with ``pool``; return their names."""
        return await self.remove_stale(pool, ())

    async def sync(self) -> None:
        """Full ``cobbler sync`` (admin use only, never during provisioning): it empties the TFTP
        root's ``pxelinux.cfg`` and rewrites it for *every* system on the server, so a host of
        another pool PXE-booting meanwhile finds no config. Use ``sync_systems``."""
        await self._authed("sync", what="sync")

    async def sync_systems(self, names: Iterable[str]) -> None:
        """Write the PXE files of the systems ``names`` (and the PXE menu), and nothing else.

        Cobbler's ``background_syncsystems`` task, polled (0.1 s doubling to 1 s) until it is
        complete, within the client's ``timeout`` in all. A failed task, a task still running at
        the deadline or a name Cobbler has no system for raises ``CobblerError`` naming the
        server, the systems and the reason (from the task's log).
        """
        names = list(names)
        if not names:
            return
        what = f"sync systems {', '.join(names)}"
        deadline = time.monotonic() + self.timeout
        options = {"systems": names, "verbose": False}
        event = await self._authed("background_syncsystems", options, what=what)
        delay = TASK_POLL_FIRST
        while True:
            status = await self._call("get_task_status", event, what=f"{what}: task {event}")
            # [start time, name, state, read by]; state: "notification" (running), "complete", "failed"
            if not (isinstance(status, list) and len(status) >= 3):
                raise self._error(what, f"unexpected status of task {event}: {status!r}")
            state = status[2]
            if state == "complete":
                break
            if state == "failed":
                reason = _task_error(await self._task_log(event, what), event)
                raise self._error(what, f"Cobbler task {event} failed: {reason}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._error(
                    what, f"Cobbler task {event} did not finish within {self.timeout:g} s (timeout)"
                )
            await task.deferLater(reactor, min(delay, left))
            delay = min(delay * 2, TASK_POLL_MAX)
        # Cobbler skips (and only logs) a name it has no system for: its PXE file was not written
        missing = _task_missing(await self._task_log(event, what), event, names)
        if missing:
            raise self._error(
                what, f"Cobbler has no system named {', '.join(missing)}: no PXE file written for it"
            )

    async def _task_log(self, event: str, what: str) -> str:
        return str(await self._call("get_event_log", event, what=f"{what}: log of task {event}"))

    async def get_netboot(self, name: str) -> bool:
        s = await self.get_system(name)
        if s is None:
            raise self._error(f"system {name}", "no such system")
        return bool(s["netboot_enabled"])

    async def set_netboot(self, name: str, enabled: bool) -> None:
        try:
            await self._authed(
                "xapi_object_edit",
                "system",
                name,
                "edit",
                {"netboot_enabled": enabled},
                what=f"system {name}",
            )
        except CobblerError as e:
            if "unknown system name" in str(e):
                raise self._error(f"system {name}", "no such system") from None
            raise


class _Collect(Protocol):
    """Reads a response body (``readBody`` warns on the transports Agent uses in Twisted 24.11)."""

    def __init__(self, done: defer.Deferred) -> None:
        self.done, self.chunks = done, []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason=None) -> None:
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read_body(response) -> defer.Deferred:
    done: defer.Deferred = defer.Deferred()
    response.deliverBody(_Collect(done))
    return done


def _interfaces(pool: Pool, h: Host) -> dict[str, dict[str, Any]]:
    """eth0 carries the provisioning MAC, IP and DNS name; further MACs become eth1, eth2...
    (keys: Cobbler's ``NetworkInterface`` fields, as ``xapi_object_edit`` takes them)."""
    netmask = pool.network.netmask or str(ipaddress.ip_network(pool.network.subnet).netmask)
    ifaces: dict[str, dict[str, Any]] = {
        "eth0": {
            "mac_address": h.mac,
            "ip_address": h.ip,
            "netmask": netmask,
            "dns_name": h.name,
            "static": True,
        }
    }
    for i, mac in enumerate(h.macs[1:], start=1):
        ifaces[f"eth{i}"] = {"mac_address": mac.lower(), "ip_address": "", "dns_name": "", "static": False}
    return ifaces


def _task_lines(log: str, event: str) -> list[str]:
    """The lines the task's own thread logged (Cobbler tees every thread's messages into each
    running task's log; lines read ``[<thread>] <time> - <level> | <message>``, the task's
    thread being named after its event id); continuation lines are dropped."""
    prefix = f"[{event}] "
    return [line.split(" | ", 1)[1] for line in log.splitlines() if line.startswith(prefix) and " | " in line]


def _task_error(log: str, event: str) -> str:
    """Why a Cobbler task failed: the last exception it logged."""
    for msg in reversed(_task_lines(log, event)):
        if msg.startswith("Exception value: "):
            value = msg.removeprefix("Exception value: ").strip()
            if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value
    return f"no reason logged (see /var/log/cobbler/tasks/{event}.log on the Cobbler server)"


_NOT_FOUND = re.compile(r"^did not find any system named (\S+)$")


def _task_missing(log: str, event: str, names: list[str]) -> list[str]:
    """The ``names`` a ``syncsystems`` task logged it found no system for."""
    found = {m.group(1) for msg in _task_lines(log, event) if (m := _NOT_FOUND.match(msg))}
    return [n for n in names if n in found]


def _fault_text(f: xmlrpc.client.Fault) -> str:
    """Cobbler faults read ``<class 'cobbler.cexceptions.CX'>:'message'``: keep the message."""
    text = str(f.faultString)
    if ">:" in text:
        text = text.split(">:", 1)[1].strip()
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
    return text
