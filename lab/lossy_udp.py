"""A lossy UDP relay on 127.0.0.1: packet loss between an IPMI client and a (virtual) BMC.

The relay listens on its own port; each client address gets its own upstream socket to the
target, so replies go back to the client that asked. Every datagram, in either direction, is
dropped with probability ``loss`` drawn from a seeded RNG, and counted. ``loss=1.0`` is a
BMC that never answers; ``loss=0.3`` is a bad network the client's retries must survive.

    with LossyUdpRelay(("127.0.0.1", bmc_port), loss=0.3, seed=7) as relay:
        ... talk to 127.0.0.1:relay.port ...
        relay.dropped, relay.forwarded
"""

from __future__ import annotations

import random
import selectors
import socket
import threading
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"


@dataclass
class Counts:
    """Datagrams seen per direction: ``up`` client -> target, ``down`` target -> client."""

    up_forwarded: int = 0
    up_dropped: int = 0
    down_forwarded: int = 0
    down_dropped: int = 0


class LossyUdpRelay:
    """Forward datagrams between clients and ``target``, dropping a seeded fraction of them."""

    def __init__(self, target: tuple[str, int], loss: float = 0.0, seed: int = 0, port: int = 0):
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss must be between 0 and 1, got {loss}")
        if not target[0].startswith("127."):
            raise ValueError(f"lossy relay: refusing target {target[0]}: loopback only")
        self.target = target
        self.loss = loss
        self.counts = Counts()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind((LOOPBACK, port))
        self._front.setblocking(False)
        self._sel.register(self._front, selectors.EVENT_READ, None)
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lossy-udp-{self.port}", daemon=True)

    @property
    def port(self) -> int:
        return self._front.getsockname()[1]

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
            for key, _ in self._sel.select(timeout=0.1):
                sock, client = key.fileobj, key.data
                try:
                    data, addr = sock.recvfrom(65535)
                except OSError:  # e.g. ICMP port unreachable from a target that went away
                    continue
                if client is None:  # from a client: relay upstream
                    up = self._upstream.get(addr)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.bind((LOOPBACK, 0))
                        up.setblocking(False)
                        self._upstream[addr] = up
                        self._sel.register(up, selectors.EVENT_READ, addr)
                    if self._drop():
                        self.counts.up_dropped += 1
                    else:
                        self.counts.up_forwarded += 1
                        self._send(up, data, self.target)
                elif self._drop():
                    self.counts.down_dropped += 1
                else:
                    self.counts.down_forwarded += 1
                    self._send(self._front, data, client)

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
        for s in [self._front, *self._upstream.values()]:
            self._sel.unregister(s)
            s.close()
        self._upstream.clear()
        self._sel.close()

    def __enter__(self) -> LossyUdpRelay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
