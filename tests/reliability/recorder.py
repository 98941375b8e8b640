"""What the reliability tests injected and how the system fared, for docs/reliability.md.

Each test calls ``record(...)`` once per fault it injected (how many times, how many it
survived, how many results/commits/secrets were lost or leaked). The session fixture writes
``var/reliability/results.json``; ``python -m tests.reliability.report`` renders the doc from it.
Entries are keyed by fault, so running a subset of the tests updates only those entries.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "var" / "reliability" / "results.json"


@dataclass
class Outcome:
    """One injected fault: ``survived`` of ``injected`` handled as specified; ``data_lost`` must be 0."""

    fault: str
    area: str
    injected: int
    survived: int
    data_lost: int
    detail: str
    test: str
    seconds: float = 0.0
    at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))


class Recorder:
    """Collects outcomes during a pytest session; ``save`` merges them into the results file."""

    def __init__(self, path: Path = RESULTS) -> None:
        self.path = path
        self.outcomes: dict[str, Outcome] = {}

    def record(
        self,
        fault: str,
        *,
        area: str,
        injected: int,
        survived: int,
        data_lost: int = 0,
        detail: str = "",
        test: str = "",
        seconds: float = 0.0,
    ) -> Outcome:
        out = Outcome(fault, area, injected, survived, data_lost, detail, test, round(seconds, 2))
        self.outcomes[fault] = out
        return out

    def save(self) -> Path | None:
        if not self.outcomes:
            return None
        data = load(self.path)
        data["faults"].update({k: asdict(v) for k, v in self.outcomes.items()})
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        data["host"] = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)
        return self.path


def load(path: Path = RESULTS) -> dict:
    """The results file, or an empty one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("faults", {})
    return data
