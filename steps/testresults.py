"""Pure parsing and judging of BVT test output: nose xunit XML, ``unittest -v`` lines.

Everything here is I/O-free so the step (steps/marvin.py) stays thin and the rules that
decide "evidence against the commit" versus "infrastructure" are unit-tested on their own:

* a test that fails or errors is evidence (``fail``);
* a test or class set-up that could not reach the management server, or a ``setUpClass``
  that crashed on the environment (timeouts, Marvin init), is ``infra`` and never counted
  against the commit (notes/cloudstack.md §4 "Infra failure modes");
* a skipped test is ``skip``.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

Status = Literal["pass", "fail", "skip", "infra"]

# The management server (or another lab service) did not answer: whatever the test did,
# the commit is not to blame.
UNREACHABLE = re.compile(
    r"Connection refused|ConnectionRefusedError|ConnectionResetError|NewConnectionError|MaxRetryError"
    r"|Failed to establish a new connection|No route to host|Name or service not known"
    r"|Temporary failure in name resolution|Network is unreachable|RemoteDisconnected",
)
# Environment problems that only count as infrastructure in a class/module set-up.
SETUP_ENVIRONMENT = re.compile(
    r"TimeoutError|timed out|[Tt]imeout|Marvin Init Failed|No module named '?marvin|socket\.timeout"
)
_CONTEXT = re.compile(r"ContextSuite context=(?P<ctx>[^>]+)>:(?P<phase>setup|teardown)")


class ParseError(ValueError):
    """The runner's output could not be read (reported as an infrastructure failure)."""


@dataclass(frozen=True)
class TestOutcome:
    """One test case as the runner reported it, judged."""

    path: str  # the test file as run (cloudstack) or the module (demo)
    name: str  # Class.method, or Class.setUpClass for a class set-up
    status: Status
    duration: float = 0.0  # seconds
    message: str = ""
    detail: str = ""  # traceback
    reason: str = ""  # why status is infra

    @property
    def test_id(self) -> str:
        """The id the gate passes back in ``bvt_tests`` (nose's ``file.py:Class.method``)."""
        return f"{self.path}:{self.name}" if self.path.endswith(".py") else f"{self.path}.{self.name}"

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def classify(status: str, name: str, setup: bool, text: str) -> tuple[Status, str]:
    """Judge one raw result: ``status`` is pass/failure/error/skip from the runner."""
    if status in ("pass", "skip"):
        return status, ""  # type: ignore[return-value]
    m = UNREACHABLE.search(text)
    if m:
        return "infra", f"management server unreachable ({m.group(0)})"
    if setup:
        m = SETUP_ENVIRONMENT.search(text)
        if m:
            return "infra", f"set-up error from the environment in {name} ({m.group(0)})"
    return "fail", ""


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Exit|Interrupt|Warning|Timeout)\b.*$")


def _last_line(text: str) -> str:
    """The exception line of a traceback (else its last non-empty line)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    exc = [ln for ln in lines if _EXC_LINE.match(ln)]
    return exc[-1] if exc else (lines[-1] if lines else "")


def parse_xunit(xml_text: str, path: str) -> list[TestOutcome]:
    """Parse one nose ``--with-xunit`` file for the test file ``path``.

    nose reports a ``setUpClass``/``setUpModule`` crash as a pseudo test case
    ``<nose.suite.ContextSuite context=Class>:setup``; it becomes ``Class.setUpClass``.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise ParseError(f"xunit output for {path} is not valid XML ({e})") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise ParseError(f"xunit output for {path} has no <testsuite> element")
    out: list[TestOutcome] = []
    for suite in suites:
        for case in suite.findall("testcase"):
            cls, meth = case.get("classname", ""), case.get("name", "")
            setup = False
            ctx = _CONTEXT.search(f"{cls}.{meth}")
            if ctx:
                setup = True
                context = ctx.group("ctx").rsplit(".", 1)[-1]
                is_module = context.startswith("test_") and context == path.rsplit("/", 1)[-1][:-3]
                phase = "Module" if is_module else "Class"
                name = f"{context}.{'setUp' if ctx.group('phase') == 'setup' else 'tearDown'}{phase}"
            elif cls == "nose.failure.Failure":
                name = "(import)"
            else:
                name = f"{cls.rsplit('.', 1)[-1]}.{meth}" if cls else meth
            raw, message, detail = "pass", "", ""
            for tag, kind in (("failure", "failure"), ("error", "error"), ("skipped", "skip")):
                el = case.find(tag)
                if el is not None:
                    raw = kind
                    etype = el.get("type", "")
                    message = el.get("message", "") or _last_line(el.text or "")
                    if etype and kind != "skip":
                        message = f"{etype.removeprefix('builtins.')}: {message}"
                    detail = el.text or ""
                    break
            try:
                duration = float(case.get("time", "0") or 0)
            except ValueError:
                duration = 0.0
            status, reason = classify(raw, name, setup, f"{message}\n{detail}")
            out.append(TestOutcome(path, name, status, duration, message, detail, reason))
    return out


_UT_HEAD = re.compile(r"^(?P<meth>\S+) \((?P<id>[\w.]+)\)(?:\n.*)? \.\.\. ?(?P<rest>.*)$")
_UT_STATUS = re.compile(r"^(ok|FAIL|ERROR|skipped\b.*|SKIP\b.*|expected failure|unexpected success)$")


def _ut_status(word: str) -> str:
    if word in {"ok", "expected failure"}:
        return "pass"
    if word.startswith(("skipped", "SKIP")):
        return "skip"
    return "failure"


class UnittestVerboseParser:
    """Incremental parser of ``python -m unittest -v`` / ``nosetests -v`` result lines.

    Feed it lines as they stream (both stdout and stderr); it returns a TestOutcome when a
    test's status is known. Tracebacks printed at the end (``FAIL: name (id)``) are attached
    to already-reported failures by :meth:`details`.
    """

    _DETAIL_HEAD = re.compile(r"^(FAIL|ERROR): (?P<meth>\S+) \((?P<id>[\w.]+)\)")

    def __init__(self) -> None:
        self._pending: tuple[str, str] | None = None
        self._detail_for: str | None = None
        self.details: dict[str, list[str]] = {}

    @staticmethod
    def _split(meth: str, test_id: str) -> tuple[str, str]:
        parts = test_id.split(".")
        if parts[-1] == meth and len(parts) >= 3:  # Python >= 3.11: module.Class.method
            return ".".join(parts[:-2]), f"{parts[-2]}.{meth}"
        if meth in ("setUpClass", "setUpModule", "tearDownClass"):
            return ".".join(parts[:-1]) or parts[0], f"{parts[-1]}.{meth}"
        return ".".join(parts[:-1]) or test_id, f"{parts[-1]}.{meth}"

    def feed(self, line: str) -> TestOutcome | None:
        line = line.rstrip("\n")
        head = self._DETAIL_HEAD.match(line)
        if head:
            module, name = self._split(head.group("meth"), head.group("id"))
            self._detail_for = f"{module}.{name}"
            self.details[self._detail_for] = []
            return None
        if line.startswith("Ran "):
            self._detail_for = None
        if self._detail_for is not None and not line.startswith(("=====", "-----")):
            self.details[self._detail_for].append(line)
        m = _UT_HEAD.match(line)
        if m:
            rest = m.group("rest").strip()
            if not rest:
                self._pending = (m.group("meth"), m.group("id"))
                return None
            return self._outcome(m.group("meth"), m.group("id"), rest)
        if self._pending and _UT_STATUS.match(line.strip()):
            meth, test_id = self._pending
            self._pending = None
            return self._outcome(meth, test_id, line.strip())
        return None

    def _outcome(self, meth: str, test_id: str, word: str) -> TestOutcome | None:
        if not _UT_STATUS.match(word):
            return None
        module, name = self._split(meth, test_id)
        raw = _ut_status(word)
        message = word.partition(" ")[2].strip("'\" :") if raw == "skip" else ""
        status, reason = classify(raw, name, meth.startswith("setUp"), message)
        return TestOutcome(module, name, status, 0.0, message or ("" if raw == "pass" else word), "", reason)

    def with_details(self, outcome: TestOutcome) -> TestOutcome:
        """The outcome with the traceback printed at the end of the run, if any."""
        lines = self.details.get(f"{outcome.path}.{outcome.name}")
        if not lines:
            return outcome
        text = "\n".join(lines).strip()
        status, reason = classify(
            "failure" if outcome.status != "pass" else "pass",
            outcome.name,
            outcome.name.endswith(("setUpClass", "setUpModule")),
            text,
        )
        return replace(outcome, message=_last_line(text), detail=text, status=status, reason=reason)


# --------------------------------------------------------------------------- selection


def group_requested(tests: Iterable[str]) -> dict[str, list[str]]:
    """``bvt_tests`` entries grouped by test file: ``{"a.py": []}`` = the whole file,
    ``{"a.py": ["a.py:C.t1"]}`` = only those tests (nose addresses)."""
    out: dict[str, list[str]] = {}
    for t in tests:
        path, sep, _ = t.partition(":")
        if not sep:
            out[path] = []
        elif out.get(path, None) != []:
            out.setdefault(path, []).append(t)
    return out


def shard(files: list[str], durations: dict[str, float], count: int, index: int) -> list[str]:
    """The files of shard ``index`` (0-based) of ``count``, balanced by recorded durations.

    Greedy longest-processing-time: files sorted by duration (unknown = the mean of the
    known ones, or 1) go to the least loaded shard; deterministic for equal inputs. The
    returned files keep their original order.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index + 1}/{count} is not a valid shard")
    known = [durations[f] for f in files if f in durations]
    default = sum(known) / len(known) if known else 1.0
    load = [0.0] * count
    owner: dict[str, int] = {}
    for f in sorted(files, key=lambda f: (-durations.get(f, default), f)):
        i = min(range(count), key=lambda i: (load[i], i))
        owner[f] = i
        load[i] += durations.get(f, default)
    return [f for f in files if owner[f] == index]


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``"2/3"`` -> (1, 3) (0-based index, count); None/empty -> None."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"bvt_shard must look like 'I/N' with 1 <= I <= N, got {value!r}")
    return int(m.group(1)) - 1, int(m.group(2))


# --------------------------------------------------------------------------- presentation


def summary_text(
    done: int, total: int | None, failed: int, skipped: int, intermittent: int, infra: int
) -> str:
    """The live step summary, e.g. ``41/120 tests, 1 failed``."""
    s = f"{done}/{total} tests" if total else f"{done} tests"
    for n, word in (
        (failed, "failed"),
        (skipped, "skipped"),
        (intermittent, "intermittent"),
        (infra, "set-up errors"),
    ):
        if n:
            s += f", {n} {word}"
    return s


def failures_html(
    failed: list[TestOutcome], infra: list[TestOutcome], intermittent: list[TestOutcome]
) -> str:
    """An HTML page of what went wrong, for ``addHTMLLog``."""

    def section(title: str, rows: list[TestOutcome], note: str) -> str:
        if not rows:
            return ""
        body = "".join(
            f"<tr><td><code>{html.escape(o.test_id)}</code></td><td>{html.escape(o.reason or o.message)}</td>"
            f"<td><details><summary>traceback</summary><pre>{html.escape(o.detail)}</pre></details></td></tr>"
            for o in rows
        )
        return (
            f"<h3>{html.escape(title)} ({len(rows)})</h3><p>{html.escape(note)}</p>"
            "<table border='1' cellpadding='4'><tr><th>test</th><th>message</th><th>detail</th></tr>"
            f"{body}</table>"
        )

    parts = [
        section(
            "Failed tests", failed, "Failed on the first run and on the re-run: evidence against the commit."
        ),
        section("Set-up errors (infrastructure)", infra, "Not counted against the commit."),
        section("Intermittent", intermittent, "Failed once, passed when the file was re-run."),
    ]
    return "<div>" + ("".join(parts) or "<p>No failures.</p>") + "</div>"
