"""RunMarvin and the demo test step in a real Buildbot master, running a REAL nose (pynose).

The fixture test modules under tests/marvin_fixtures/smoke are Marvin-style (``@attr(tags=...,
required_hardware=...)``); ``--with-marvin`` is served by a named STAND-IN plugin
(tests/marvin_fixtures/standin) because CloudStack's Marvin can only be built from a CloudStack
tree. Results are read back over the master's REST API (/api/v2).
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from buildbot.plugins import schedulers, util
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.util.integration import RunMasterBase
from twisted.internet import defer, threads

from steps.marvin import RunDemoTests, RunMarvin, recorded_durations
from steps.testresults import shard
from tests.support.procs import free_port

FIXTURES = Path(__file__).parent / "marvin_fixtures"
NOSE = str(Path(sys.executable).parent / "nosetests")
STANDIN = {"PYTHONPATH": str(FIXTURES / "standin")}


def marvin_config(root: Path) -> str:
    """A minimal Marvin config whose management server port is closed (nobody listens)."""
    cfg = {
        "zones": [
            {
                "name": "z1",
                "networktype": "Advanced",
                "pods": [{"clusters": [{"hosts": [{"url": "http://h"}]}]}],
            }
        ],
        "mgtSvr": [{"mgtSvrIp": "127.0.0.1", "port": free_port()}],
        "dbSvr": {"dbSvr": "127.0.0.1", "port": 3306, "user": "cloud", "passwd": "cloud", "db": "cloud"},
        "logger": {"LogFolderPath": str(root)},
    }
    path = root / "marvin.cfg"
    path.write_text(json.dumps(cfg))
    return str(path)


class BvtStepIntegration(RunMasterBase):
    proto = "null"

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="qacloud-marvin-"))
        self.web = free_port()

    def rest(self, path: str) -> defer.Deferred:
        """GET /api/v2/<path> over HTTP (in a thread: the web server runs on this reactor)."""

        def get():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web}/api/v2/{path}", timeout=10) as r:
                return json.loads(r.read())

        return threads.deferToThread(get)

    @defer.inlineCallbacks
    def run_build(self, step, properties=None):
        f = util.BuildFactory([step])
        yield self.setup_master(
            {
                "builders": [
                    util.BuilderConfig(
                        name="bvt", workernames=["local1"], factory=f, properties=properties or {}
                    )
                ],
                "schedulers": [schedulers.ForceScheduler(name="force", builderNames=["bvt"])],
                "www": {"port": f"tcp:{self.web}:interface=127.0.0.1"},
            }
        )
        return (yield self.force_build())

    @defer.inlineCallbacks
    def force_build(self):
        """Force one more build on the running master; (build, results per test-result set)."""
        build = yield self.doForceBuild(wantSteps=True, wantProperties=True, wantLogs=True)
        sets = (yield self.rest(f"builds/{build['buildid']}/test_result_sets"))["test_result_sets"]
        results = {}
        for s in sets:
            rows = (yield self.rest(f"test_result_sets/{s['test_result_setid']}/results"))["test_results"]
            results[s["description"]] = (
                (s["tests_passed"], s["tests_failed"]),
                sorted((r["test_code_path"], r["test_name"], r["value"]) for r in rows),
            )
        return build, results

    def marvin(self, **kw):
        return RunMarvin(
            config=marvin_config(self.tmp),
            workdir=str(FIXTURES),
            tests_dir="smoke",
            results_dir=str(self.tmp / "results"),
            nose=[NOSE],
            env=STANDIN,
            zone="z1",
            hypervisor="kvm",
            **kw,
        )

    @defer.inlineCallbacks
    def test_every_fixture_recorded_and_classified(self):
        build, results = yield self.run_build(self.marvin(stop_on_infra=False))
        props = {k: v[0] for k, v in build["properties"].items()}
        self.assertEqual(build["results"], FAILURE)
        p = "smoke/test_"
        self.assertEqual(
            results["BVT"],
            (
                (4, 3),
                [
                    (f"{p}basic_ops.py", "TestBasicOps.test_01_list_zones", "1"),
                    (f"{p}basic_ops.py", "TestBasicOps.test_02_list_hosts", "1"),
                    (f"{p}failing.py", "TestVolumes.test_01_create_volume", "1"),
                    (f"{p}failing.py", "TestVolumes.test_02_resize_volume", "0"),
                    (f"{p}failing.py", "TestVolumes.test_03_detach_volume", "0"),
                    (f"{p}flaky.py", "TestFlaky.test_01_sometimes", "0"),
                    (f"{p}skipping.py", "TestSnapshots.test_01_snapshot_root_disk", "1"),
                ],
            ),
        )
        self.assertEqual(
            results["BVT: skipped"][1],
            [(f"{p}skipping.py", "TestSnapshots.test_02_snapshot_on_local_storage", "1")],
        )
        self.assertEqual(
            results["BVT: set-up errors (infrastructure, not counted)"][1],
            [
                (f"{p}setup_crash.py", "TestRouters.setUpClass", "0"),
                (f"{p}unreachable.py", "TestListApis.test_01_list_apis", "0"),
            ],
        )
        self.assertEqual(results["BVT: re-runs of failed files"][0], (2, 2))
        self.assertEqual(
            props["failed_tests"],
            [
                f"{p}failing.py:TestVolumes.test_02_resize_volume",
                f"{p}failing.py:TestVolumes.test_03_detach_volume",
            ],
        )
        self.assertEqual(props["intermittent_tests"], [f"{p}flaky.py:TestFlaky.test_01_sometimes"])
        infra = props["infra_failure"]
        self.assertIn(f"{p}setup_crash.py:TestRouters.setUpClass: set-up error from the environment", infra)
        self.assertIn(
            f"{p}unreachable.py:TestListApis.test_01_list_apis: management server unreachable", infra
        )
        step = build["steps"][-1]
        self.assertTrue(
            step["state_string"].startswith(
                "10/10 tests, 2 failed, 1 skipped, 1 intermittent, 2 set-up errors; infrastructure: "
            )
        )
        logs = {log["name"]: log for log in step["logs"]}
        self.assertIn("test_flaky.py (re-run)", logs)  # the re-run is visible
        self.assertIn("failures", logs)
        self.assertEqual(logs["failures"]["type"], "h")
        page = logs["failures"]["contents"]["content"]
        self.assertIn("volume size after resize", page)
        self.assertIn("Intermittent (1)", page)

    @defer.inlineCallbacks
    def test_only_requested_tests_run(self):
        wanted = ["smoke/test_failing.py:TestVolumes.test_01_create_volume", "smoke/test_basic_ops.py"]
        build, results = yield self.run_build(self.marvin(), properties={"bvt_tests": wanted})
        props = {k: v[0] for k, v in build["properties"].items()}
        self.assertEqual(build["results"], SUCCESS)
        self.assertEqual(
            [r[1] for r in results["BVT"][1]],
            [
                "TestBasicOps.test_01_list_zones",
                "TestBasicOps.test_02_list_hosts",
                "TestVolumes.test_01_create_volume",
            ],
        )
        self.assertEqual(props["failed_tests"], [])
        self.assertNotIn("infra_failure", props)
        self.assertEqual(build["steps"][-1]["state_string"], "3/3 tests")

    @defer.inlineCallbacks
    def test_stops_at_the_first_infrastructure_failure(self):
        build, results = yield self.run_build(
            self.marvin(tests=["test_unreachable.py", "test_basic_ops.py"], count_tests=False)
        )
        props = {k: v[0] for k, v in build["properties"].items()}
        self.assertEqual(build["results"], FAILURE)
        self.assertEqual(results["BVT"], ((0, 0), []))  # test_basic_ops never ran
        self.assertIn("management server unreachable", props["infra_failure"])
        self.assertEqual(props["failed_tests"], [])

    @defer.inlineCallbacks
    def test_demo_step_records_unittest_results(self):
        demo = self.tmp / "demo"
        demo.mkdir()
        (demo / "test_calc.py").write_text(
            "import unittest\n\n\nclass CalcTest(unittest.TestCase):\n"
            "    def test_add(self):\n        self.assertEqual(1 + 1, 2)\n\n"
            "    def test_sub(self):\n        self.assertEqual(3 - 1, 1, 'subtraction')\n\n"
            "    @unittest.skip('later')\n    def test_mul(self):\n        pass\n"
        )
        step = RunDemoTests(command=[sys.executable, "-m", "unittest", "-v"], workdir=str(demo))
        build, results = yield self.run_build(step)
        props = {k: v[0] for k, v in build["properties"].items()}
        self.assertEqual(build["results"], FAILURE)
        self.assertEqual(
            results["BVT (demo)"],
            ((1, 1), [("test_calc", "CalcTest.test_add", "1"), ("test_calc", "CalcTest.test_sub", "0")]),
        )
        self.assertEqual(results["BVT (demo): skipped"][1], [("test_calc", "CalcTest.test_mul", "1")])
        self.assertEqual(props["failed_tests"], ["test_calc.CalcTest.test_sub"])
        self.assertEqual(build["steps"][-1]["state_string"], "3/3 tests, 1 failed, 1 skipped")
        page = next(x for x in build["steps"][-1]["logs"] if x["name"] == "failures")["contents"]["content"]
        self.assertIn("AssertionError: 2 != 1 : subtraction", page)

    @defer.inlineCallbacks
    def test_demo_step_runs_only_bvt_tests(self):
        demo = self.tmp / "demo"
        demo.mkdir()
        (demo / "test_calc.py").write_text(
            "import unittest\n\n\nclass CalcTest(unittest.TestCase):\n"
            "    def test_add(self):\n        pass\n\n    def test_sub(self):\n        self.fail('no')\n"
        )
        step = RunDemoTests(command=[sys.executable, "-m", "unittest", "-v"], workdir=str(demo))
        build, results = yield self.run_build(step, properties={"bvt_tests": ["test_calc.CalcTest.test_add"]})
        self.assertEqual(build["results"], SUCCESS)
        self.assertEqual(results["BVT (demo)"], ((1, 0), [("test_calc", "CalcTest.test_add", "1")]))

    @defer.inlineCallbacks
    def test_shards_balanced_by_durations_recorded_through_the_data_api(self):
        files = ["smoke/test_basic_ops.py", "smoke/test_failing.py", "smoke/test_skipping.py"]
        step = self.marvin(tests=[f.split("/")[1] for f in files], rerun_failed=False, count_tests=False)
        # build 1: nothing recorded yet, every file weighs the same -> shard 2/2 = failing.py
        build, results = yield self.run_build(step, properties={"bvt_shard": "2/2"})
        self.assertEqual({r[0] for r in results["BVT"][1]}, {"smoke/test_failing.py"})
        # build 1's results, as a real suite would record them, stored through the data API:
        # failing.py 100 s, basic_ops 60 s, skipping 30 s passed + 25 s skipped (summed);
        # re-runs never count
        upd = self.master.data.updates
        builderid = yield upd.findBuilderId("bvt")
        stepid = build["steps"][-1]["stepid"]  # the bvt step
        recorded = {
            "BVT": [
                ("smoke/test_failing.py", "TestVolumes.test_01", 100),
                ("smoke/test_basic_ops.py", "TestBasicOps.test_01", 40),
                ("smoke/test_basic_ops.py", "TestBasicOps.test_02", 20),
                ("smoke/test_skipping.py", "TestSnapshots.test_01", 30),
            ],
            "BVT: skipped": [("smoke/test_skipping.py", "TestSnapshots.test_02", 25)],
            "BVT: re-runs of failed files": [("smoke/test_basic_ops.py", "TestBasicOps.test_01", 900)],
        }
        for description, rows in recorded.items():
            setid = yield upd.addTestResultSet(
                builderid, build["buildid"], stepid, description, "pass_fail", "boolean"
            )
            yield upd.addTestResults(
                builderid,
                setid,
                [
                    {"test_code_path": path, "test_name": name, "duration_ns": sec * 10**9, "value": "1"}
                    for path, name, sec in rows
                ],
            )
            yield upd.completeTestResultSet(setid)
        durations = yield recorded_durations(self.master, "bvt")
        self.assertEqual(sorted(durations), sorted(files))
        # the real nose run of build 1 added a few ms to failing.py
        for path, expected in (
            ("smoke/test_failing.py", 100),
            ("smoke/test_basic_ops.py", 60),
            ("smoke/test_skipping.py", 55),
        ):
            self.assertAlmostEqual(durations[path], expected, delta=5)
        self.assertEqual(shard(files, durations, 2, 0), ["smoke/test_failing.py"])
        self.assertEqual(shard(files, durations, 2, 1), ["smoke/test_basic_ops.py", "smoke/test_skipping.py"])
        # build 2, shard 2/2: RunMarvin reads those durations and runs the two shorter files
        build, results = yield self.force_build()
        ran = {r[0] for name, (_, rows) in results.items() for r in rows}
        self.assertEqual(ran, {"smoke/test_basic_ops.py", "smoke/test_skipping.py"})
        self.assertEqual(build["results"], SUCCESS)
