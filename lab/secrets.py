"""Secrets for the simulated lab and tests: one file per secret, as Buildbot's SecretInAFile wants.

The directory is mode 0700 and every file 0600 (SecretInAFile refuses group/other-readable
files). Values are random; nothing here is ever committed.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path


def write_secrets(directory: str | Path, names, fixed: dict[str, str] | None = None) -> dict[str, str]:
    """Create missing secrets (random) and ``fixed`` ones; return name -> value for all of them."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    values: dict[str, str] = {}
    for name in sorted(set(names) | set(fixed or {})):
        f = d / name
        if fixed and name in fixed:
            value = fixed[name]
        elif f.exists():
            value = f.read_text().strip()
        else:
            value = _random.token_urlsafe(12)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        os.chmod(f, 0o600)
        values[name] = value
    return values


def read_secret(directory: str | Path, name: str) -> str:
    return (Path(directory) / name).read_text().strip()
