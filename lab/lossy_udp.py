"""A lossy, slow UDP relay on 127.0.0.1: packet loss and latency between IPMI clients and BMCs.

The relay listens on one front port per target; each client address gets its own upstream
socket to that target, so replies go back to the client that asked. Every datagram, in either
direction, is dropped with probability ``loss`` drawn from a seeded RNG, and counted.
``loss=1.0`` is a BMC that never answers; ``loss=0.3`` is a bad network the client's retries
must survive.

``delay`` (seconds, one way) holds every forwarded datagram that long before sending it on, in
either direction: a request/answer exchange then takes ``2 * delay`` plus the BMC's own time.
On loopback a virtual BMC answers in microseconds; real BMC firmware (iDRAC, iLO, IPMI LAN)
takes tens to hundreds of milliseconds per command, and this models it at the protocol
boundary. Held datagrams wait in a time-ordered queue, so a slow exchange never holds up the
others (one thread, no sleeping). ``holds`` records how many were held, for how long (the
shortest and longest, from arrival to release) and the most held at once.

    with LossyUdpRelay(("127.0.0.1", bmc_port), loss=0.3, seed=7) as relay:
        ... talk to 127.0.0.1:relay.port ...
        relay.dropped, relay.forwarded

Standalone (one process in front of many BMCs, e.g. for the benchmark)::

    python -m lab.lossy_udp --delay 0.02 --target 127.0.0.1:16001 --target 127.0.0.1:16002

prints ``ready PORT1 PORT2 ...`` (the front ports, in the targets' order) and runs until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
_IDLE_WAIT = 0.1  # seconds the relay thread waits for datagrams before re-checking stop()


@dataclass
class Holds:
    """Datagrams held for ``delay``: how many, for how long (s, arrival to release), most at once."""

    held: int = 0
    released: int = 0
    min_hold: float | None = None
    max_hold: float | None = None
    peak: int = 0


@dataclass
class Counts:
    """Datagrams seen per direction: ``up`` client -> target, ``down`` target -> client."""

    up_forwarded: int = 0
    up_dropped: int = 0
    down_forwarded: int = 0
    down_dropped: int = 0


class LossyUdpRelay:
    """Forward datagrams between clients and targets, dropping a seeded fraction, after ``delay`` s.

    ``target`` is one ``(address, port)``; ``more_targets`` adds further ones, each with its own
    front port (``ports``, in order; ``port`` is the first). All share one thread and one RNG.
    """

    def __init__(
        self,
        target: tuple[str, int],
        loss: float = 0.0,
        seed: int = 0,
        port: int = 0,
        delay: float = 0.0,
        more_targets: tuple[tuple[str, int], ...] = (),
    ):
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss must be between 0 and 1, got {loss}")
        if not 0.0 <= delay <= 10.0:
            raise ValueError(f"delay must be between 0 and 10 s, got {delay}")
        targets = (target, *more_targets)
        for t in targets:
            if not t[0].startswith("127."):
                raise ValueError(f"lossy relay: refusing target {t[0]}: loopback only")
        self.target = target
        self.targets = targets
        self.loss = loss
        self.delay = delay
        self._delay_ns = round(delay * 1e9)
        self.counts = Counts()
        self.holds = Holds()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._fronts: list[socket.socket] = []
        for i, t in enumerate(targets):
            front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            front.bind((LOOPBACK, port if i == 0 else 0))
            front.setblocking(False)
            self._sel.register(front, selectors.EVENT_READ, (front, t, None))
            self._fronts.append(front)
        self._upstream: dict[tuple[socket.socket, tuple[str, int]], socket.socket] = {}
        # datagrams held for ``delay``: (due, sequence, arrival, socket, data, address); times
        # in integer nanoseconds (time.monotonic_ns), so that a hold is never shorter than delay
        self._held: list[tuple[int, int, int, socket.socket, bytes, tuple[str, int]]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lossy-udp-{self.port}", daemon=True)

    @property
    def port(self) -> int:
        return self._fronts[0].getsockname()[1]

    @property
    def ports(self) -> list[int]:
        """The front port of each target, in the targets' order."""
        return [f.getsockname()[1] for f in self._fronts]

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def dropped(self) -> int:
        return self.counts.up_dropped + self.counts.down_dropped

    @property
    def forwarded(self) -> int:
        return self.counts.up_forwarded + self.counts.down_forwarded

    def set_loss(self, loss: float) -> None:
        with self._lock:
            self.loss = loss

    def _drop(self) -> bool:
        with self._lock:
            return self._rng.random() < self.loss

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = _IDLE_WAIT
            if self._held:
                wait = min(wait, max(0.0, (self._held[0][0] - time.monotonic_ns()) / 1e9))
            for key, _ in self._sel.select(timeout=wait):
                self._receive(*key.data)
            self._release_due()

    def _receive(self, front: socket.socket, target: tuple[str, int], client: tuple[str, int] | None) -> None:
        sock = front if client is None else self._upstream[(front, client)]
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:  # e.g. ICMP port unreachable from a target that went away
                continue
            if client is None:  # from a client: relay upstream
                up = self._upstream.get((front, addr))
                if up is None:
                    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    up.bind((LOOPBACK, 0))
                    up.setblocking(False)
                    self._upstream[(front, addr)] = up
                    self._sel.register(up, selectors.EVENT_READ, (front, target, addr))
                if self._drop():
                    self.counts.up_dropped += 1
                else:
                    self.counts.up_forwarded += 1
                    self._forward(up, data, target)
            elif self._drop():
                self.counts.down_dropped += 1
            else:
                self.counts.down_forwarded += 1
                self._forward(front, data, client)

    def _forward(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        if self._delay_ns <= 0:
            self._send(sock, data, addr)
        else:
            now = time.monotonic_ns()
            heapq.heappush(self._held, (now + self._delay_ns, next(self._seq), now, sock, data, addr))
            self.holds.held += 1
            self.holds.peak = max(self.holds.peak, len(self._held))

    def _release_due(self) -> None:
        now = time.monotonic_ns()
        while self._held and self._held[0][0] <= now:
            _, _, arrival, sock, data, addr = heapq.heappop(self._held)
            self._send(sock, data, addr)
            hold = (now - arrival) / 1e9
            h = self.holds
            h.released += 1
            h.min_hold = hold if h.min_hold is None else min(h.min_hold, hold)
            h.max_hold = hold if h.max_hold is None else max(h.max_hold, hold)

    @staticmethod
    def _send(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        try:
            sock.sendto(data, addr)
        except OSError:
            pass  # a lost datagram is what this relay is for

    def start(self) -> LossyUdpRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for s in [*self._fronts, *self._upstream.values()]:
            self._sel.unregister(s)
            s.close()
        self._upstream.clear()
        self._held.clear()
        self._sel.close()

    def __enter__(self) -> LossyUdpRelay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"target {text!r}: expected ADDRESS:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lab.lossy_udp", description="relay UDP to targets on 127.0.0.1 with loss and latency"
    )
    ap.add_argument(
        "--target", action="append", type=_endpoint, required=True, help="ADDRESS:PORT (repeatable)"
    )
    ap.add_argument("--delay", type=float, default=0.0, help="seconds each datagram is held, each way")
    ap.add_argument("--loss", type=float, default=0.0, help="fraction of datagrams dropped")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(argv)
    try:
        relay = LossyUdpRelay(
            ns.target[0], loss=ns.loss, seed=ns.seed, delay=ns.delay, more_targets=tuple(ns.target[1:])
        )
    except (OSError, ValueError) as e:
        print(f"lab.lossy_udp: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    relay.start()
    print("ready " + " ".join(str(p) for p in relay.ports), flush=True)
    done.wait()
    relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
