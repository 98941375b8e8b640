"""Common random numbers: every draw is a hash of (seed, what is drawn, exact content, attempt).

Two policies that test the same content for the same time see the same duration and the same
flake draw, which makes paired comparisons between policies far tighter than independent
streams.
"""

from __future__ import annotations

import hashlib


def uniform(seed: int, *key: object) -> float:
    """A deterministic draw in [0, 1) from ``seed`` and ``key`` (stable across processes)."""
    text = "\x1f".join([str(seed), *map(str, key)]).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
