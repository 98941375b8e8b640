"""The BVT test step: Marvin's smoke suite (cloudstack mode) or the demo's own tests.

``RunMarvin`` runs the suite the way CloudStack's CI and Trillian do: one nose process per
test file with ``--with-marvin --marvin-config=... -a tags=...`` and one xunit file each,
a failed file re-run once (a test that then passes is reported *intermittent*, as Trillian
does), every test recorded through Buildbot's test-results API, failures rendered as an HTML
log, Marvin's failure logs and the management server's log attached.

Both steps honour the shared BVT build contract (docs/cloudstack.md):

* ``bvt_tests`` (property, optional): only these tests (``file.py`` or ``file.py:Class.test``
  for Marvin, dotted unittest ids for the demo) — the gate's bisection uses it;
* ``failed_tests`` (set): tests that failed (evidence against the commit);
* ``infra_failure`` (set when the run could not judge the commit: management server
  unreachable, a ``setUpClass`` crash on the environment, no runner output).

``RunDemoTests`` is the demo's stand-in for a CloudStack deployment: it runs
``settings.bvt.command`` (e.g. ``python3 -m unittest -v``) through the same recording.
"""

from __future__ import annotations

import os
import time

from buildbot.process import buildstep, logobserver
from buildbot.process.results import FAILURE, SUCCESS

from master.settings import Settings
from steps.testresults import (
    ParseError,
    TestOutcome,
    UnittestVerboseParser,
    failures_html,
    group_requested,
    parse_shard,
    parse_xunit,
    shard,
    summary_text,
)

BVT_STEP = "bvt"  # the test step of every BVT build (the gate leaves a try build past it to finish)

RESULT_SET = "BVT"  # description prefix of this step's test-result sets


class TestResultRecorder:
    """Mixin: records TestOutcomes as Buildbot test results and keeps the live counts."""

    def _init_recorder(self) -> None:
        self.outcomes: list[TestOutcome] = []  # first runs
        self.reruns: list[TestOutcome] = []
        self.intermittent: list[TestOutcome] = []
        self.total: int | None = None
        self.current = ""
        self._sets: dict[str, int] = {}
        self._label = RESULT_SET

    async def _open_sets(self, label: str) -> None:
        self._label = label
        self._sets["main"] = await self.addTestResultSet(label, "pass_fail", "boolean")
        self._sets["skip"] = await self.addTestResultSet(f"{label}: skipped", "skipped", "boolean")
        self._sets["infra"] = await self.addTestResultSet(
            f"{label}: set-up errors (infrastructure, not counted)", "infra_error", "boolean"
        )

    def _record(self, o: TestOutcome, rerun: bool = False) -> None:
        if rerun:
            setid = self._sets["rerun"]
            value = "0" if o.status in ("fail", "infra") else "1"
        else:
            setid = self._sets[{"pass": "main", "fail": "main", "skip": "skip", "infra": "infra"}[o.status]]
            value = "1" if o.status in ("pass", "skip") else "0"
        self.addTestResult(
            setid, value, test_name=o.name, test_code_path=o.path, duration_ns=int(o.duration * 1e9)
        )
        (self.reruns if rerun else self.outcomes).append(o)
        self.updateSummary()

    # -- judgement over everything recorded

    def _first_failures(self) -> list[TestOutcome]:
        return [o for o in self.outcomes if o.status == "fail"]

    def final_failed(self) -> list[TestOutcome]:
        flaky = {o.test_id for o in self.intermittent}
        return [o for o in self._first_failures() if o.test_id not in flaky]

    def infra(self) -> list[TestOutcome]:
        return [o for o in self.outcomes + self.reruns if o.status == "infra"]

    def _summary(self) -> str:
        done = len(self.outcomes)
        return summary_text(
            done,
            self.total,
            len(self.final_failed()),
            sum(1 for o in self.outcomes if o.status == "skip"),
            len(self.intermittent),
            len(self.infra()),
        )

    def getCurrentSummary(self):
        s = self._summary()
        return {"step": f"{s} (running {self.current})" if self.current else s}

    def getResultSummary(self):
        s = self._summary()
        extra = getattr(self, "_infra_reason", None)
        if extra:
            s += f"; infrastructure: {extra}"
        s = self.build.properties.cleanupTextFromSecrets(s) if self.build else s
        return {"step": s, "build": f"{self._label}: {s}"}

    async def _finish(self, extra_infra: list[str]) -> int:
        """Set the contract properties, attach the failure page, return the step result."""
        failed = self.final_failed()
        infra = self.infra()
        reasons = list(extra_infra) + [f"{o.test_id}: {o.reason}" for o in infra]
        self.setProperty("failed_tests", [o.test_id for o in failed], self.name)
        self.setProperty("intermittent_tests", [o.test_id for o in self.intermittent], self.name)
        if failed or infra or self.intermittent:
            page = failures_html(failed, infra, self.intermittent)
            await self.addHTMLLog("failures", self.build.properties.cleanupTextFromSecrets(page))
        if reasons:
            self._infra_reason = reasons[0] + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")
            self.setProperty(
                "infra_failure",
                self.build.properties.cleanupTextFromSecrets("; ".join(reasons[:5])),
                self.name,
            )
            return FAILURE
        return FAILURE if failed else SUCCESS


class RunMarvin(TestResultRecorder, buildstep.ShellMixin, buildstep.BuildStep):
    """Marvin's BVT: one nose run per smoke test file (see module docstring)."""

    name = BVT_STEP
    renderables = ["tags", "zone", "hypervisor", "config", "tests"]

    def __init__(
        self,
        *,
        config: str = "marvin.cfg",
        tests_dir: str = "test/integration/smoke",
        tests: list[str] | None = None,
        tags: list[str] | None = None,
        zone=None,
        hypervisor=None,
        nose: list[str] | None = None,
        results_dir: str = "marvin-results",
        rerun_failed: bool = True,
        stop_on_infra: bool = True,
        count_tests: bool = True,
        mgmt_log: str = "/var/log/cloudstack/management/management-server.log",
        **kwargs,
    ):
        self.config = config
        self.tests_dir = tests_dir.rstrip("/")
        self.tests = list(tests or [])
        self.tags = list(tags if tags is not None else ["advanced", "required_hardware=false"])
        self.zone = zone
        self.hypervisor = hypervisor
        self.nose = list(nose or ["nosetests"])
        self.results_dir = results_dir
        self.rerun_failed = rerun_failed
        self.stop_on_infra = stop_on_infra
        self.count_tests = count_tests
        self.mgmt_log = mgmt_log
        kwargs.setdefault("command", self.nose)  # replaced per file; ShellMixin needs one
        kwargs = self.setupShellMixin(kwargs)
        super().__init__(**kwargs)
        self._init_recorder()

    # -- worker commands

    async def _shell(self, argv: list[str], log: str | None = None, **kw) -> tuple[int, str]:
        cmd = await self.makeRemoteShellCommand(
            command=argv, collectStdout=log is None, stdioLogName=log, logEnviron=False, **kw
        )
        await self.runCommand(cmd)
        return cmd.rc, (cmd.stdout if log is None else "")

    def _nose_args(self, xunit: str, extra: list[str]) -> list[str]:
        args = [*self.nose, "-v", "--with-xunit", f"--xunit-file={xunit}"]
        if self.tags:
            args += ["-a", attribute_expression(self.tags)]
        return args + extra

    def _marvin_args(self, logdir: str) -> list[str]:
        args = ["--with-marvin", f"--marvin-config={self.config}", f"--log-folder-path={logdir}"]
        if self.zone:
            args.append(f"--zone={self.zone}")
        if self.hypervisor:
            args.append(f"--hypervisor={self.hypervisor}")
        return args

    async def _select(self) -> list[tuple[str, list[str]]]:
        """(file, nose targets) to run: ``bvt_tests`` if set, else settings, else the suite."""
        requested = self.getProperty("bvt_tests")
        if requested:
            groups = group_requested(requested)
            return [(f, targets or [f]) for f, targets in groups.items()]
        if self.tests:
            files = [t if "/" in t else f"{self.tests_dir}/{t}" for t in self.tests]
        else:
            rc, out = await self._shell(["find", self.tests_dir, "-maxdepth", "1", "-name", "test_*.py"])
            if rc != 0:
                raise _Infra(f"cannot list the smoke tests in {self.tests_dir} on the worker (exit {rc})")
            files = sorted(line.strip() for line in out.splitlines() if line.strip())
        sh = parse_shard(self.getProperty("bvt_shard"))
        if sh is not None:
            durations = await recorded_durations(self.master, self.build.builder.name)
            files = shard(files, durations, sh[1], sh[0])
        return [(f, [f]) for f in files]

    async def _count(self, selection: list[tuple[str, list[str]]]) -> int | None:
        xunit = f"{self.results_dir}/collect-only.xml"
        targets = [t for _, ts in selection for t in ts]
        rc, _ = await self._shell(self._nose_args(xunit, ["--collect-only", *targets]), log="collect tests")
        rc, text = await self._shell(["cat", xunit])
        if rc != 0:
            return None
        try:
            return sum(1 for o in parse_xunit(text, "collect") if o.status != "infra")
        except ParseError:
            return None

    async def _run_file(self, path: str, targets: list[str], rerun: bool) -> list[TestOutcome]:
        stem = os.path.basename(path)[:-3] if path.endswith(".py") else os.path.basename(path)
        suffix = ".rerun" if rerun else ""
        xunit = f"{self.results_dir}/{stem}{suffix}.xml"
        logdir = f"{self.results_dir}/{stem}{suffix}"
        self.current = os.path.basename(path) + (" (re-run)" if rerun else "")
        self.updateSummary()
        rc, _ = await self._shell(
            self._nose_args(xunit, [*self._marvin_args(logdir), *targets]),
            log=os.path.basename(path) + (" (re-run)" if rerun else ""),
        )
        xrc, text = await self._shell(["cat", xunit])
        if xrc != 0:
            reason = f"nose produced no xunit results for {path} (exit code {rc})"
            outcomes = [TestOutcome(path, "(run)", "infra", reason=reason)]
        else:
            try:
                outcomes = parse_xunit(text, path)
            except ParseError as e:
                outcomes = [TestOutcome(path, "(run)", "infra", reason=str(e))]
        if any(o.status in ("fail", "infra") for o in outcomes):
            frc, logs = await self._shell(
                ["find", logdir, "-name", "failed_plus_exceptions.txt", "-exec", "cat", "{}", "+"]
            )
            if frc == 0 and logs.strip():
                await self.addCompleteLog(
                    f"{stem}{suffix}: Marvin failures", self.build.properties.cleanupTextFromSecrets(logs)
                )
        for o in outcomes:
            self._record(o, rerun=rerun)
        return outcomes

    async def _attach_mgmt_log(self) -> None:
        host = self.getProperty("mgmt_ip")
        if not host or not self.mgmt_log:
            return
        rc, text = await self._shell(
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                f"root@{host}",
                "tail",
                "-n",
                "20000",
                self.mgmt_log,
            ]
        )
        note = "" if rc == 0 else f"(could not fetch {self.mgmt_log} from {host}: exit {rc})\n"
        await self.addCompleteLog(
            "management-server.log", self.build.properties.cleanupTextFromSecrets(note + text)
        )

    async def run(self) -> int:
        await self._open_sets(RESULT_SET)
        extra: list[str] = []
        try:
            selection = await self._select()
            await self._shell(["mkdir", "-p", self.results_dir])
            if self.count_tests and selection:
                self.total = await self._count(selection)
            for path, targets in selection:
                first = await self._run_file(path, targets, rerun=False)
                if any(o.status == "infra" for o in first):
                    if self.stop_on_infra:
                        break
                    continue
                failed = [o for o in first if o.status == "fail"]
                if failed and self.rerun_failed:
                    if "rerun" not in self._sets:
                        self._sets["rerun"] = await self.addTestResultSet(
                            f"{RESULT_SET}: re-runs of failed files", "pass_fail", "boolean"
                        )
                    second = {o.test_id: o for o in await self._run_file(path, targets, rerun=True)}
                    self.intermittent += [
                        o for o in failed if second.get(o.test_id) and second[o.test_id].status == "pass"
                    ]
                    self.updateSummary()
        except _Infra as e:
            extra.append(str(e))
        except ValueError as e:  # a malformed bvt_shard property
            extra.append(str(e))
        finally:
            self.current = ""
            await self._attach_mgmt_log()
        return await self._finish(extra)


def attribute_expression(tags: list[str]) -> str:
    """nose's ``-a`` for settings tags: ``[advanced, required_hardware=false]`` ->
    ``tags=advanced,required_hardware=false`` (conditions ANDed, as CloudStack CI selects)."""
    return ",".join(t if "=" in t else f"tags={t}" for t in tags)


class _Infra(Exception):
    """The run could not start for a reason outside the commit."""


async def recorded_durations(master, builder_name: str, builds: int = 20) -> dict[str, float]:
    """Seconds per test file from this builder's recent BVT test results (newest build wins).

    The source for :func:`steps.testresults.shard`: durations are the per-test
    ``duration_ns`` Buildbot already stores, summed per ``test_code_path`` over one build's
    complete ``BVT`` and ``BVT: skipped`` sets (re-runs and set-up errors are not counted),
    from the last ``builds`` builds that recorded any.
    """
    builderid = await master.data.updates.findBuilderId(builder_name)
    rows = await master.data.get(("builders", builderid, "test_result_sets"))
    wanted = (RESULT_SET, f"{RESULT_SET}: skipped")
    by_build: dict[int, list[int]] = {}
    for r in rows:
        if r["description"] in wanted and r["complete"]:
            by_build.setdefault(r["buildid"], []).append(r["test_result_setid"])
    durations: dict[str, float] = {}
    for buildid in sorted(by_build)[-builds:]:
        per_file: dict[str, float] = {}
        for setid in by_build[buildid]:
            for t in await master.data.get(("test_result_sets", setid, "results")):
                path = t.get("test_code_path")
                if path:
                    per_file[path] = per_file.get(path, 0.0) + (t.get("duration_ns") or 0) / 1e9
        durations.update(per_file)
    return durations


class RunDemoTests(TestResultRecorder, buildstep.ShellMixin, buildstep.BuildStep):
    """The demo's stand-in for a CloudStack deployment: its own unittest suite.

    Runs ``command`` (``python3 -m unittest -v`` or ``nosetests -v``), parses the verbose
    result lines as they stream (live counts), and records them like RunMarvin. ``bvt_tests``
    are appended to the command as test ids.
    """

    name = BVT_STEP

    def __init__(self, **kwargs):
        kwargs = self.setupShellMixin(kwargs)
        super().__init__(**kwargs)
        self._init_recorder()
        self._parser = UnittestVerboseParser()
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._consume))

    def _consume(self):
        while True:
            stream, line = yield
            if stream == "h":  # the worker's command header, not test output
                continue
            o = self._parser.feed(line)
            if o is not None:
                self._record(o)

    async def run(self) -> int:
        await self._open_sets(f"{RESULT_SET} (demo)")
        self.current = "demo test suite"
        requested = self.getProperty("bvt_tests") or []
        cmd = await self.makeRemoteShellCommand(command=[*self.command, *requested])
        started = time.monotonic()
        await self.runCommand(cmd)
        self.current = ""
        self.outcomes = [self._parser.with_details(o) for o in self.outcomes]
        self.total = len(self.outcomes)
        extra = []
        if not self.outcomes and cmd.rc in (126, 127):
            extra.append(f"the demo test command could not be executed (exit code {cmd.rc})")
        elif not self.outcomes and cmd.rc != 0:
            self.outcomes = [
                TestOutcome(
                    "suite",
                    "(run)",
                    "fail",
                    time.monotonic() - started,
                    f"the test command exited with {cmd.rc} and reported no tests",
                )
            ]
        return await self._finish(extra)


def bvt_test_step(settings: Settings) -> buildstep.BuildStep:
    """The ``bvt`` step of the BVT factory for ``settings.bvt.mode``."""
    from buildbot.plugins import util

    bvt = settings.bvt
    if bvt.mode == "demo":
        return RunDemoTests(
            command=list(bvt.command),
            maxTime=bvt.timeout,
            description="demo tests (stand-in for a CloudStack BVT)",
            haltOnFailure=True,
        )
    return RunMarvin(
        config="marvin.cfg",
        tests_dir=bvt.tests_dir,
        tests=list(bvt.tests),
        tags=list(bvt.tags),
        zone=util.Property("marvin_zone", default=None),
        hypervisor=util.Property("marvin_hypervisor", default=None),
        rerun_failed=bvt.rerun_failed,
        timeout=bvt.file_timeout,
        maxTime=bvt.timeout,
        haltOnFailure=True,
    )
