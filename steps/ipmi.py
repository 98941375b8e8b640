"""IPMI power and boot-device control of lab hosts, with pyghmi's client, off the reactor thread.

pyghmi's client is synchronous, so every call runs on a dedicated, bounded thread pool
(``deferToThreadPool``); a ``DeferredSemaphore`` bounds how many BMCs are talked to at once.
Each try has a deadline; failed tries are retried with exponential back-off (capped at
``max_backoff``). Failures raise :class:`IpmiError`, which names the host, the BMC
address:port and the reason, never the password. A wrong password is not retried (it would
only lock the BMC account sooner).

Sessions (why IPMI used to fail under packet loss): pyghmi shares client sessions per BMC and
up to 64 sessions per UDP socket, and every new session starts its RMCP+ session id and tag
at the same values. A retry therefore ran on the socket of the try it replaced, where late
answers meant for the abandoned try derailed its login, and cleaning up the abandoned session
(``_mark_broken`` -> ``logout``) blocked for many seconds in pyghmi's command wait. Here every
try gets its own single-use session on its own new socket (:func:`_session_class`); a try
that times out is stopped at once without waiting for the BMC, and its socket is closed a
few seconds after its thread is done with it (so its port is not reused at once). The login
keeps pyghmi's per-packet retransmission, but each RMCP+ login step gets a fresh
retransmission budget (as pyghmi gives IPMI requests), a relogin skips the unchanged
channel-capabilities query, and a BMC that turned SHA-256 down is offered SHA-1 straight
away next time.

Waiting (why concurrent logins used to stall 0.5-1.5 s): pyghmi's client threads sleep in
``_io_wait(deadline, bmc_address)`` until its I/O thread routes a datagram from that BMC, but
they register that wait only *after* sending, and any thread in ``wait_for_rsp`` may process
any session's answer. When the answer arrived (and was handled by another thread) before the
wait was registered, nothing woke the waiter: it slept until its retransmission deadline and
then found the answer already there (no datagram lost, no retransmission; with 50 concurrent
calls most rounds stalled so). Here a try's private socket never joins pyghmi's I/O set: the
thread running the try reads it itself (``poll`` is level-triggered, so an early answer
cannot be missed) and drives its own retransmissions (:meth:`TrySession._pump`). Counters
for tests and benchmarks (no effect on behaviour): :func:`retransmissions`,
:func:`deadline_expiries` (waits that lasted to their deadline), :func:`late_answers` (such
waits that found their answer already there: a missed wake-up) and
``IpmiClient.peak_in_flight`` (the most tries running at once).

A successful call's logged-in session is kept for ``reuse`` seconds and handed to the next
call to the same BMC (provisioning sets the boot device and then power-cycles); it is closed
(IPMI Close Session) when unused for that long or on :meth:`IpmiClient.stop`. A reused
session that no longer works fails its try like any other, and the retry logs in afresh.
"""

from __future__ import annotations

import atexit
import functools
import random
import select
import socket
import threading
import time
from collections import deque
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
    _ensure_waker()


class _Unanswered(Exception):
    pass


class _AuthFailed(Exception):
    pass


def _classify(exc: Exception) -> Exception:
    text = str(exc) if str(exc) not in ("", "None") else ""
    low = text.lower()
    if any(m in low for m in _AUTH_MARKERS):
        return _AuthFailed(text)
    if not text or "timeout" in low or "no longer connected" in low or "failed to initialize" in low:
        return _Unanswered(text or "no answer")
    return exc


class _Attempt:
    """One try of one call: the reactor abandons it on timeout, its pool thread retires it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.abandoned = False
        self.finished = False
        self.session: Any = None  # the session this try uses, once it has one
        self.reuse: Any = None  # a logged-in session of an earlier call to hand this try

    def bind(self, session: Any) -> bool:
        with self._lock:
            if self.abandoned:
                return False
            self.session = session
            return True

    def finish(self) -> bool:
        """Called by the pool thread when the try is over; True if it was abandoned first."""
        with self._lock:
            self.finished = True
            return self.abandoned

    def abandon(self) -> Any:
        """Called on the reactor thread when the try timed out: its session stops at once.

        Returns a still logged-in session if the try had in fact just finished (the caller
        must retire it), else None (the pool thread retires it).
        """
        with self._lock:
            self.abandoned = True
            session, finished = self.session, self.finished
        if finished:
            return session
        if session is not None:
            session.stop("abandoned after the try's timeout")
        return None


# Sockets of retired sessions stay open (unread) this long before they are closed, so that the
# kernel does not hand their port to a new session while datagrams of the old one (a late
# answer, a Close Session's reply) are still on their way: a BMC would see a new session from
# the port of an old one, and the new session might read the old one's answers.
_PORT_QUARANTINE = 2.0
_quarantine: deque[tuple[float, Any]] = deque()
_quarantine_lock = threading.Lock()


def _bury(session: Any) -> None:
    """Forget a retired session's socket and routes in pyghmi's tables; close it later.

    pyghmi's tables are cleaned at once (they are scanned for every new session); the socket
    itself is closed after ``_PORT_QUARANTINE`` s. It is never in pyghmi's I/O set
    (``_assignsocket``), and the one thread that read it (the try's) is done with it.
    """
    from pyghmi.ipmi.private import session as ipmisession

    sock = getattr(session, "socket", None)
    if sock is None:
        return
    with ipmisession.Session.socketchecking:
        watched = sock in ipmisession.iosockets
        if watched:
            ipmisession.iosockets.remove(sock)
        ipmisession.Session.socketpool.pop(sock, None)
        try:
            myport = sock.getsockname()[1]
        except OSError:
            myport = None
        for sockaddr in getattr(session, "allsockaddrs", ()):
            handlers = ipmisession.Session.bmc_handlers.get(sockaddr)
            if isinstance(handlers, dict) and handlers.get(myport) is session:
                del handlers[myport]
                if not handlers:
                    ipmisession.Session.bmc_handlers.pop(sockaddr, None)
    if watched:  # not expected; make pyghmi's I/O thread drop it from its select() first
        _wake_io_thread()
    now = time.monotonic()
    due = []
    with _quarantine_lock:
        _quarantine.append((now + _PORT_QUARANTINE, sock))
        while _quarantine and _quarantine[0][0] <= now:
            due.append(_quarantine.popleft()[1])
    for old in due:
        old.close()


@atexit.register
def _close_quarantined() -> None:
    """At exit, close the sockets still waiting out their quarantine (no port reuse after it)."""
    with _quarantine_lock:
        socks = [sock for _, sock in _quarantine]
        _quarantine.clear()
    for sock in socks:
        sock.close()


def _wake_io_thread() -> None:
    """Make pyghmi's I/O thread leave select() and re-read its socket list."""
    from pyghmi.ipmi.private import session as ipmisession

    if ipmisession.iosockets and ipmisession.myself:
        waker = ipmisession.iosockets[0]
        try:
            waker.sendto(b"\x01", (ipmisession.myself, waker.getsockname()[1]))
        except OSError:
            pass


def _local_bind(bmc: str, port: int) -> tuple | None:
    """pyghmi's ``server`` argument (an addrinfo tuple) binding a session's socket to the local
    address the kernel would send from to reach ``bmc`` (127.0.0.1 for a BMC on loopback), in
    the family pyghmi sends in (IPv6 sockets reach IPv4 BMCs through mapped addresses).

    None (pyghmi's wildcard bind) when the name does not resolve or resolves to several
    families or routes: pyghmi tries every address of a BMC from one socket.
    """
    from pyghmi.ipmi.private import session as ipmisession

    try:
        infos = socket.getaddrinfo(bmc, port, 0, socket.SOCK_DGRAM)
    except OSError:
        return None
    sources = set()
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(sockaddr)  # UDP: picks a route and a source, sends nothing
                sources.add((family, probe.getsockname()[0]))
        except OSError:
            return None
    if len(sources) != 1:
        return None
    ((family, address),) = sources
    if ipmisession.ipv6support:
        if family == socket.AF_INET:
            address = "::ffff:" + address
        return (socket.AF_INET6, socket.SOCK_DGRAM, 0, "", (address, 0, 0, 0))
    if family != socket.AF_INET:
        return None
    return (socket.AF_INET, socket.SOCK_DGRAM, 0, "", (address, 0))


def _ensure_waker() -> None:
    """Give pyghmi a permanent first socket: it wakes its I/O thread through ``iosockets[0]``.

    Sessions' sockets are closed after use here, so the waker must not be one of them.
    """
    from pyghmi.ipmi.private import session as ipmisession

    if ipmisession.Session.socketchecking is None:
        ipmisession.Session.socketchecking = threading.Lock()
    with ipmisession.Session.socketchecking:
        if ipmisession.myself is None and not ipmisession.iosockets:
            waker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            waker.bind(("127.0.0.1", 0))
            ipmisession.iosockets.append(waker)
            ipmisession.myself = "127.0.0.1"
        if ipmisession.ipv6support is None:  # decided as pyghmi would, before any session needs it
            try:
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
                ipmisession.ipv6support = True
            except OSError:
                ipmisession.ipv6support = False


# (BMC address, port) -> RAKP algorithm its last login used (1 = SHA-1, 256 = SHA-256 first)
_auth_algorithms: dict[tuple[str, int], int] = {}

# Longest a try's thread sleeps on its socket before re-checking whether it was stopped.
_MAX_WAIT = 0.2


class _Tally:
    """A process-wide event counter, safe to bump from any thread."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


_retransmitted = _Tally()
_deadlines_expired = _Tally()
_answers_found_late = _Tally()


def retransmissions() -> int:
    """IPMI datagrams this process has sent again because their answer did not come in time.

    A healthy network and BMC need none: the benchmark and the tests read the difference.
    """
    return _retransmitted.value


def deadline_expiries() -> int:
    """Waits for an answer that reached their retransmission deadline, in this process.

    Without loss or an overloaded BMC there are none: a wait that ends at its deadline is
    either a lost datagram or a missed wake-up (the stall described above).
    """
    return _deadlines_expired.value


def late_answers() -> int:
    """Deadline wake-ups that found a datagram (normally the answer) already on the try's socket.

    The signature of a missed wake-up (the old stall): the answer had come, the waiter was
    not told and slept until its deadline. Tests and benchmarks read the difference.
    """
    return _answers_found_late.value


def _no_logon_callback(_result: dict) -> None:
    """pyghmi's asynchronous-login hook: the try's own thread drives and checks the login."""


@functools.cache
def _session_class() -> type:
    """pyghmi's client session, made single-use: one session, one socket, one try.

    pyghmi shares client sessions per (BMC, port, user) and packs up to 64 sessions onto one
    UDP socket, routing datagrams by (BMC address, local port). Every new session restarts
    its RMCP+ session id and tag at the same values, so under packet loss a late answer to
    an abandoned try reached the next try's session on the same socket and derailed its
    login, and a try that joined a failing cached session failed with it. Here each try gets
    a new session on its own new socket (a new source port), is never shared, and is stopped
    (no retransmits, no relogin, no keepalives) when it is abandoned or done.

    The socket is read by the one thread running the try, not by pyghmi's I/O thread
    (:meth:`_pump`): pyghmi's hand-off between the two loses wake-ups under concurrency.
    """
    from pyghmi.exceptions import IpmiException
    from pyghmi.ipmi.private import session as ipmisession
    from pyghmi.ipmi.private import util as ipmiutil

    class TrySession(ipmisession.Session):
        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)  # never a cached or half-initialised shared session

        def __init__(self, bmc, userid, password, port, attempt: _Attempt):
            self.forbidsock = []
            self.stopped = False
            self._due = False  # another thread's pyghmi loop found this session's deadline past
            self._poller: Any = None
            if not attempt.bind(self):
                raise _Unanswered("abandoned")
            # resolved here, not in _assignsocket: that runs under pyghmi's process-wide socket
            # lock, and a BMC given by name would make every session wait for its lookup
            self._local = _local_bind(bmc, port)
            # with a logon callback pyghmi's __init__ only sends the first login datagram;
            # the login is driven to its end here, on this thread, from this session's socket
            super().__init__(bmc, userid, password, port=port, keepalive=False, onlogon=_no_logon_callback)
            while self.logging and not self.broken and not self.stopped:
                if not self._pump():
                    break
            if self.broken or self.stopped:
                raise IpmiException(self.errormsg)
            if not self.logged:
                raise IpmiException("login did not complete")

        def _assignsocket(self, server=None, forbiddensockets=()):
            # called (on the instance, under Session.socketchecking) by pyghmi's __init__: a
            # new socket, never shared, bound to the address the kernel sends from to reach
            # this BMC rather than to every address (pyghmi binds '' / '::')
            cls = type(self)
            if server is None:
                server = self._local
            sock = super()._assignsocket(server, forbiddensockets=tuple(cls.socketpool))
            cls.socketpool[sock] = ipmisession.MAX_BMCS_PER_SOCKET  # never shared either
            # read by the try's own thread (_pump), never by pyghmi's I/O thread
            if sock in ipmisession.iosockets:
                ipmisession.iosockets.remove(sock)
            sock.setblocking(False)
            return sock

        def _pump(self) -> bool:
            """Wait for this session's next datagram or retransmission deadline; handle them.

            Returns False when nothing is outstanding any more (nothing left to wait for).
            """
            with ipmiutil.protect(ipmisession.WAITING_SESSIONS):
                waiting = self in ipmisession.Session.waiting_sessions
            wait = self.expiration - ipmisession._monotonic_time() if waiting else _MAX_WAIT
            if self._due:
                wait = 0.0
            if self._poller is None:  # poll, not select(): file descriptors may exceed 1023
                self._poller = select.poll()
                self._poller.register(self.socket, select.POLLIN)
            try:
                ready = self._poller.poll(min(max(wait, 0.0), _MAX_WAIT) * 1000)
                # counted, no effect: a wait that lasted to its deadline, with the answer there?
                if (self._due and not waiting) or (
                    waiting and ipmisession._monotonic_time() >= self.expiration
                ):
                    _deadlines_expired.add()
                    if ready or self._poller.poll(0):
                        _answers_found_late.add()
            except (OSError, ValueError):  # the socket was closed under us: the try is over
                self.stop("socket closed")
                return False
            if ready:
                while True:
                    try:
                        data, addr = self.socket.recvfrom(3000)
                    except OSError:  # drained (EAGAIN) or an ICMP error
                        break
                    if len(data) >= 4:
                        self.pktqueue.append((data, addr, self.socket, True))
                self.process_pktqueue()
            due, self._due = self._due, False
            now = ipmisession._monotonic_time()
            with ipmiutil.protect(ipmisession.WAITING_SESSIONS):
                if self in ipmisession.Session.waiting_sessions:
                    # a datagram sent since another thread flagged the deadline has its own
                    due = self.expiration < now
                    if due:
                        ipmisession.Session.waiting_sessions.pop(self, None)
            if due:
                if not self.lastpayload and not self.logging:
                    return False
                self._retransmit()
            return True

        def awaitresponse(self, retry, netfn, command):
            # pyghmi's loop, with _pump in place of its shared I/O thread's _io_wait
            self.awaitingresponse = True
            try:
                alltimeout = ipmisession._monotonic_time() + self._getmaxtimeout() * 2
                while (
                    retry
                    and not self.stopped
                    and ipmisession.unmatched(self.lastresponse, netfn, command)
                    and (self.logging or self.logged or self.onlogpayload)
                ):
                    if not self._pump():
                        return
                    if ipmisession._monotonic_time() > alltimeout:
                        self._mark_broken()
                        raise IpmiException("Session no longer connected")
            finally:
                self.awaitingresponse = False

        def raw_command(self, *args, **kwargs):
            # pyghmi waits for a login in progress with Session.pause (the shared I/O loop)
            while (
                self.logging
                and not self.logged
                and not self.stopped
                and self.logoutexpiry is not None
                and ipmisession._monotonic_time() < self.logoutexpiry
            ):
                if not self._pump():
                    break
            return super().raw_command(*args, **kwargs)

        def _cmdwait(self):
            # One thread drives a try's session, so no other command of it can be in flight;
            # pyghmi would wait out the interrupted command's deadline (seconds) after a relogin.
            return

        def stop(self, reason: str) -> None:
            """End this session's activity now, from any thread, without waiting on the BMC."""
            self.stopped = True
            self.broken = True
            self.errormsg = reason
            self.logging = False
            self.logged = 0
            self.onlogpayload = None
            self.lastpayload = None
            self.incommand = False
            with ipmisession.util.protect(ipmisession.WAITING_SESSIONS):
                ipmisession.Session.waiting_sessions.pop(self, None)
            with ipmisession.util.protect(ipmisession.KEEPALIVE_SESSIONS):
                ipmisession.Session.keepalive_sessions.pop(self, None)

        def _initsession(self):
            super()._initsession()
            # skip the SHA-256 proposal a BMC already turned down (one round trip per login)
            self.attemptedhash = _auth_algorithms.get((self.bmc, self.port), self.attemptedhash)
            self._retrying = False
            if self.stopped:
                self.logging = False

        def send_payload(self, payload=(), payload_type=None, retry=True, **kwargs):
            # pyghmi gives an IPMI request a fresh retransmission budget once the previous
            # one was answered, but not the RMCP+ login steps: one lost datagram anywhere in
            # open-session/RAKP used up the budget of the whole login. A new packet (not a
            # retransmission from _timedout) gets a fresh budget here too.
            if payload and not self._retrying:
                self.timeout = ipmisession.initialtimeout + 0.5 * random.random()
            super().send_payload(payload, payload_type, retry, **kwargs)

        def _got_rmcp_response(self, data):
            r = super()._got_rmcp_response(data)
            if self.attemptedhash == 1:  # SHA-256 turned down: SHA-1 from now on
                _auth_algorithms[(self.bmc, self.port)] = 1
            return r

        def _relog(self):
            # A lost RAKP datagram restarts the login; the channel's authentication
            # capabilities were already read and do not change: go straight to a new
            # open-session request (new session id and tag) instead of asking again.
            if self.ipmiversion != 2.0:
                return super()._relog()
            self.logging = True
            self._initsession()
            self.logontries -= 1
            self.ipmiversion = 2.0
            self.ipmicallback = self._got_channel_auth_cap  # reports a login timeout, as before
            return self._open_rmcpplus_request()

        def _xmit_packet(self, retry=True, delay_xmit=None, timeout=None):
            if not self.stopped:
                super()._xmit_packet(retry=retry, delay_xmit=delay_xmit, timeout=timeout)

        def _timedout(self):
            # Only another thread's pyghmi loop (Session.wait_for_rsp, e.g. in-process virtual
            # BMCs) calls this, having taken the session's deadline out of waiting_sessions:
            # leave the retransmission to the try's own thread (no lock shared with it).
            self._due = True

        def _retransmit(self) -> None:
            """pyghmi's timeout handling (resend, or restart the login), on the try's thread."""
            if self.stopped:
                return
            if self.lastpayload:
                _retransmitted.add()
            self._retrying = True
            try:
                super()._timedout()
            finally:
                self._retrying = False

        def _keepalive(self):
            # pyghmi's idle keepalive (from another thread's loop) would log a keepalive=False
            # session out; parked sessions expire on IpmiClient's own timer instead.
            return

        def process_pktqueue(self):
            if self.stopped:
                self.pktqueue.clear()
            else:
                super().process_pktqueue()

    return TrySession


def _command(session: Any) -> Any:
    """pyghmi's ``Command`` over a session created here (pyghmi 1.6.19's attributes)."""
    from pyghmi.ipmi import command

    cmd = object.__new__(command.Command)
    cmd.__dict__.update(
        onlogon=None,
        bmc=session.bmc,
        _sdrcachedir=None,
        _sdr=None,
        _oem=None,
        _oemknown=False,
        _netchannel=None,
        _ipv6support=None,
        certverify=None,
        kwargs={},
        ipmi_session=session,
    )
    return cmd


def _retire(session: Any, *, logout: bool) -> None:
    """Close the BMC session (if asked and still logged in), stop it and bury its socket."""
    if logout and session.logged and not session.broken:
        try:
            session.incommand = False
            session.logout()  # Close Session, not waiting for the answer
        except Exception:
            pass
    session.stop("retired")
    _bury(session)


def _blocking_call(target: BmcTarget, fn: Callable[[Any], T], attempt: _Attempt) -> T:
    """Run ``fn(command)`` on the attempt's reused session or a fresh login; on a pool thread.

    On success the session stays logged in for the caller to park or retire; on failure it
    is retired here, so a retry never meets it again.
    """
    from pyghmi.exceptions import IpmiException

    install_pyghmi_io_fix()
    ok = False
    try:
        if attempt.reuse is not None:
            if not attempt.bind(attempt.reuse):
                raise _Unanswered("abandoned")
            session = attempt.reuse
        else:
            session = _session_class()(target.address, target.username, target.password, target.port, attempt)
        if attempt.abandoned:
            raise _Unanswered("abandoned")
        result = fn(_command(session))
        ok = session.logged and not session.broken
        return result
    except IpmiException as e:
        raise _classify(e) from None
    except OSError as e:
        raise _Unanswered(f"network error: {e.strerror or e}") from None
    finally:
        abandoned = attempt.finish()
        if attempt.session is not None and (abandoned or not ok):
            _retire(attempt.session, logout=False)
            attempt.session = None


class IpmiClient:
    """Asynchronous IPMI client for the master: bounded pool, per-try timeout, retries."""

    def __init__(
        self,
        *,
        timeout: float = 10,
        retries: int = 3,
        concurrency: int = 16,
        backoff: float = 0.5,
        max_backoff: float = 5.0,
        reuse: float = 20.0,
        reactor=None,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.timeout = timeout
        self.tries = retries + 1
        self.backoff = backoff
        self.max_backoff = max(backoff, max_backoff)
        self.reuse = reuse
        # logged-in sessions of recent successful calls: target -> (session, idle since)
        self._idle: dict[BmcTarget, tuple[Any, float]] = {}
        self._expiries: dict[BmcTarget, Any] = {}  # target -> DelayedCall retiring its session
        self._sem = defer.DeferredSemaphore(concurrency)
        # timed-out tries keep their thread until pyghmi gives up: leave room for them
        self._pool = ThreadPool(minthreads=0, maxthreads=concurrency * 2, name="qacloud-ipmi")
        self._started = False
        self._in_flight = 0  # tries whose pool thread is running them now
        self._in_flight_lock = threading.Lock()
        self.peak_in_flight = 0  # the most tries that ran at the same time (tests, benchmarks)

    def _run_try(self, target: BmcTarget, fn: Callable[[Any], T], attempt: _Attempt) -> T:
        """:func:`_blocking_call` on a pool thread, counted in ``peak_in_flight``."""
        with self._in_flight_lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            return _blocking_call(target, fn, attempt)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _ensure_pool(self) -> None:
        if not self._started:
            self._pool.start()
            self._started = True
            self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self) -> None:
        for call in self._expiries.values():
            if call.active():
                call.cancel()
        self._expiries.clear()
        for session, _ in self._idle.values():
            _retire(session, logout=True)  # sends Close Session, does not wait
        self._idle.clear()
        if self._started:
            self._started = False
            self._pool.stop()

    def _take_idle(self, target: BmcTarget) -> Any:
        """A logged-in session from a recent call to this BMC, if fresh enough to reuse."""
        parked = self._idle.pop(target, None)
        if parked is None:
            return None
        session, since = parked
        if self.reactor.seconds() - since <= self.reuse and session.logged and not session.broken:
            return session
        self._retire_soon(session)
        return None

    def _park(self, target: BmcTarget, session: Any) -> None:
        """Keep a successful call's session for the next call to this BMC, for ``reuse`` s."""
        if self.reuse <= 0:
            self._retire_soon(session)
            return
        old = self._idle.pop(target, None)
        if old is not None and old[0] is not session:
            self._retire_soon(old[0])
        self._idle[target] = (session, self.reactor.seconds())

        def expire() -> None:
            self._expiries.pop(target, None)
            parked = self._idle.get(target)
            if parked is not None and parked[0] is session:
                del self._idle[target]
                self._retire_soon(session)

        previous = self._expiries.pop(target, None)
        if previous is not None and previous.active():
            previous.cancel()
        self._expiries[target] = self.reactor.callLater(self.reuse, expire)

    def _retire_soon(self, session: Any) -> None:
        if self._started:
            self._pool.callInThread(_retire, session, logout=True)
        else:
            _retire(session, logout=True)

    async def _call(self, target: BmcTarget, what: str, fn: Callable[[Any], T]) -> T:
        self._ensure_pool()
        await self._sem.acquire()
        try:
            last = "no answer"
            for n in range(1, self.tries + 1):
                attempt = _Attempt()
                attempt.reuse = self._take_idle(target)
                d = deferToThreadPool(self.reactor, self._pool, self._run_try, target, fn, attempt)
                d.addTimeout(self.timeout, self.reactor)
                try:
                    result = await d
                    if attempt.session is not None:
                        self._park(target, attempt.session)
                    return result
                except defer.TimeoutError:
                    late = attempt.abandon()  # its thread stops soon; the next try has its own session
                    if late is not None:
                        self._retire_soon(late)
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
                if n < self.tries:
                    delay = min(self.backoff * 2 ** (n - 1), self.max_backoff)
                    await task.deferLater(self.reactor, delay)
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
        """Run a named operation ('status', 'on', 'off', 'cycle', 'pxe'); return the power state.

        The operation and the status read share one login. A retry after the operation went
        through only reads the status (power cycling twice would reset the host twice).
        """
        actions: dict[str, tuple[str, Callable[[Any], Any]]] = {
            "status": ("power status", lambda c: None),
            "on": ("power on", lambda c: c.set_power("on")),
            "off": ("power off", lambda c: c.set_power("off")),
            "cycle": ("power cycle", lambda c: c.set_power("boot")),
            "pxe": ("set boot device pxe", lambda c: c.set_bootdev("network", persist=False)),
        }
        if operation not in actions:
            raise ValueError(f"unknown power operation {operation!r}")
        what, act = actions[operation]
        acted = threading.Event()

        def act_then_status(c) -> str:
            if not acted.is_set():
                act(c)
                acted.set()
            return c.get_power()["powerstate"]

        return await self._call(target, what, act_then_status)


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
    "deadline_expiries",
    "install_pyghmi_io_fix",
    "late_answers",
    "retransmissions",
    "targets_for",
]
