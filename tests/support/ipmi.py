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
