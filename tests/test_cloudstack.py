"""CloudStack steps: Marvin config from examples/lab.yaml (field by field, format of
notes/cloudstack.md §1.4), pom/index parsers, the health check against the CloudStack API
STAND-IN (lab/cloudstack_standin.py), and build/deploy/health steps in Buildbot's step harness."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from unittest import mock

from buildbot.process.results import EXCEPTION, FAILURE, SKIPPED, SUCCESS
from buildbot.test import fakedb
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from twisted.internet import defer
from twisted.trial import unittest

from lab.cloudstack_standin import CloudStackStandin, Knobs
from master.builders import bvt_factory
from master.inventory import load_inventory
from master.settings import REPO_ROOT, load_settings
from steps import cloudstack_health
from steps.cloudstack import (
    BuildCloudStack,
    DeployZone,
    HealthCheck,
    InstallMarvin,
    PrepareStorage,
    cloudstack_steps,
    latest_from_index,
    marvin_config,
    systemvm_version_from_pom,
    template_url,
)
from steps.marvin import RunMarvin
from steps.provision import ProvisionPool
from steps.puppet import PuppetApply
from steps.reuse import DecidePoolReuse, not_reused, unless_reused

INV = load_inventory(REPO_ROOT / "examples" / "lab.yaml")
HEALTH = REPO_ROOT / "steps" / "cloudstack_health.py"


def test_marvin_config_kvm_xenserver_pool():
    cfg = marvin_config(INV.pool("pool-a"), "rootpw")
    assert set(cfg) == {"zones", "mgtSvr", "dbSvr", "globalConfig", "logger"}
    assert cfg["mgtSvr"] == [
        {
            "mgtSvrIp": "10.10.1.10",
            "port": 8096,
            "user": "root",
            "passwd": "rootpw",
            "hypervisor": "kvm",
            "useHttps": "False",
            "certCAPath": "NA",
            "certPath": "NA",
        }
    ]
    assert cfg["dbSvr"] == {
        "dbSvr": "10.10.1.10",
        "port": 3306,
        "user": "cloud",
        "passwd": "cloud",
        "db": "cloud",
    }
    assert cfg["logger"] == {"LogFolderPath": "marvin-results"}
    assert all(set(g) == {"name", "value"} for g in cfg["globalConfig"])
    (zone,) = cfg["zones"]
    assert zone["name"] == "pool-a-zone" and zone["networktype"] == "Advanced"
    assert zone["securitygroupenabled"] == "false" and zone["localstorageenabled"] == "false"
    assert zone["dns1"] == zone["internaldns1"] == "10.10.1.2"  # the QA VM's dnsmasq
    assert zone["ipranges"] == [
        {
            "startip": "10.10.1.153",
            "endip": "10.10.1.203",
            "netmask": "255.255.255.0",
            "gateway": "10.10.1.1",
            "vlan": "untagged",
        }
    ]
    (phys,) = zone["physical_networks"]
    assert phys["vlan"] == "1000-1099" and phys["isolationmethods"] == ["VLAN"]
    assert phys["broadcastdomainrange"] == "Zone"
    assert phys["traffictypes"] == [
        {"typ": "Guest", "kvm": "cloudbr1", "xen": "xenbr1"},
        {"typ": "Management", "kvm": "cloudbr0", "xen": "xenbr0"},
        {"typ": "Public", "kvm": "cloudbr0", "xen": "xenbr0"},
    ]
    assert [p["name"] for p in phys["providers"]] == ["VirtualRouter", "VpcVirtualRouter", "InternalLbVm"]
    (pod,) = zone["pods"]
    assert (pod["gateway"], pod["netmask"], pod["startip"], pod["endip"]) == (
        "10.10.1.1",
        "255.255.255.0",
        "10.10.1.102",
        "10.10.1.152",
    )
    kvm, xen = pod["clusters"]
    assert (kvm["clustername"], kvm["hypervisor"], kvm["clustertype"]) == (
        "pool-a-kvm",
        "KVM",
        "CloudManaged",
    )
    assert kvm["hosts"] == [{"url": "http://10.10.1.11", "username": "root", "password": "rootpw"}]
    assert kvm["primaryStorages"] == [
        {"name": "pool-a-kvm-primary", "url": "nfs://10.10.1.2:/export/primary/pool-a-kvm", "details": []}
    ]
    assert (xen["hypervisor"], xen["hosts"][0]["url"]) == ("XenServer", "http://10.10.1.12")
    assert "url" not in xen and "vmwaredc" not in zone
    assert zone["secondaryStorages"] == [
        {"url": "nfs://10.10.1.2:/export/secondary", "provider": "NFS", "details": []}
    ]


def test_marvin_config_kvm_vmware_pool_takes_vcenter_from_inventory():
    cfg = marvin_config(INV.pool("pool-b"), "rootpw", "vcpw")
    zone = cfg["zones"][0]
    kvm, vmw = zone["pods"][0]["clusters"]
    assert kvm["hypervisor"] == "KVM"
    assert (vmw["clustername"], vmw["hypervisor"], vmw["clustertype"]) == (
        "pool-b-vmware",
        "VMware",
        "ExternalManaged",
    )
    assert vmw["url"] == "http://10.10.2.5/qa-dc/qa-cluster"
    assert (vmw["username"], vmw["password"]) == ("administrator@vsphere.local", "vcpw")
    assert vmw["hosts"] == [{"url": "http://10.10.2.12", "username": "root", "password": "rootpw"}]
    assert zone["vmwaredc"] == {
        "name": "qa-dc",
        "vcenter": "10.10.2.5",
        "username": "administrator@vsphere.local",
        "password": "vcpw",
    }
    assert zone["physical_networks"][0]["traffictypes"][0] == {
        "typ": "Guest",
        "kvm": "cloudbr1",
        "vmware": "vSwitch1",
    }
    assert zone["physical_networks"][0]["vlan"] == "1100-1199"


def test_systemvm_version_from_pom():
    pom = (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><properties>'
        "<project.systemvm.template.location>https://download.cloudstack.org/systemvm"
        "</project.systemvm.template.location>"
        "<project.systemvm.template.version>4.22.0.0</project.systemvm.template.version>"
        "</properties></project>"
    )
    assert systemvm_version_from_pom(pom) == "4.22.0.0"
    for bad in ("<project/>", "not xml"):
        try:
            systemvm_version_from_pom(bad)
        except ValueError as e:
            assert "pom.xml" in str(e)
        else:
            raise AssertionError("expected ValueError")


def test_latest_from_index_and_template_url():
    index = '<a href="../">../</a><a href="4.9/">4.9/</a><a href="4.20/">4.20/</a><a href="4.19/">x</a>'
    assert latest_from_index(index) == "4.20"
    assert template_url("https://download.cloudstack.org/systemvm/", "4.22.0.0", "kvm") == (
        "https://download.cloudstack.org/systemvm/4.22/systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2"
    )
    assert (
        template_url("http://x", "4.20", "vmware")
        == "http://x/4.20/systemvmtemplate-4.20.0-x86_64-vmware.ova"
    )


def test_health_judge():
    zones = [{"id": "z1", "name": "zone1"}]
    vms = [
        {"zoneid": "z1", "systemvmtype": "secondarystoragevm", "state": "Running"},
        {"zoneid": "z1", "systemvmtype": "consoleproxy", "state": "Starting"},
    ]
    tmpl = [{"zoneid": "z1", "templatetype": "BUILTIN", "isready": True}]
    assert cloudstack_health.judge(vms, tmpl, zones) == [
        "zone zone1: consoleproxy not Running (states: ['Starting'])"
    ]
    vms[1]["state"] = "Running"
    assert cloudstack_health.judge(vms, tmpl, zones) == []


def run_health(url: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTH), "--url", url, "--timeout", str(timeout), "--interval", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_health_script_against_the_standin_waits_for_system_vms():
    with CloudStackStandin(Knobs(system_vms_after=0.5)) as cs:
        p = run_health(cs.url, 20)
    assert p.returncode == 0, p.stdout
    assert "secondarystoragevm not Running" in p.stdout.splitlines()[0]
    assert p.stdout.splitlines()[-1].endswith("system VMs Running, built-in template Ready")
    assert {"listZones", "listSystemVms", "listTemplates"} <= set(cs.knobs.calls)


def test_health_script_times_out_when_system_vms_never_come_up():
    with CloudStackStandin(Knobs(system_vms_never=True, template_ready=False)) as cs:
        p = run_health(cs.url, 1)
    assert p.returncode == 1
    last = p.stdout.splitlines()[-1]
    assert "not healthy after 1s" in last and "consoleproxy not Running" in last
    assert "no BUILTIN template is Ready" in last


def test_health_script_names_an_unreachable_management_server():
    from tests.support.procs import free_port

    port = free_port()
    p = run_health(f"http://127.0.0.1:{port}/client/api", 0.5)
    assert p.returncode == 2
    assert f"management server 127.0.0.1:{port}: API did not answer" in p.stdout.splitlines()[-1]


def test_cloudstack_steps_in_order():
    s = load_settings(REPO_ROOT / "examples" / "settings.yaml")
    names = [st.name if hasattr(st, "name") else st.factory.name for st in cloudstack_steps(s, INV)]
    assert names == [
        "pool-facts",
        "build-cloudstack",
        "manifest-management",
        "manifest-kvm",
        "puppet-management",
        "puppet-kvm",
        "storage",
        "marvin-config",
        "install-marvin",
        "deploy-zone",
        "health-script",
        "health-check",
    ]


class StepTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        self.settings = load_settings(REPO_ROOT / "examples" / "settings.yaml")
        return self.setup_test_build_step()

    def _build(self):
        self.setup_step(BuildCloudStack(self.settings))
        self.build.setProperty("got_revision", "a" * 40, "test")

    @defer.inlineCallbacks
    def test_build_is_cached_per_commit(self):
        self._build()
        entry = f"/srv/qacloud/build-cache/{'a' * 40}"
        self.expect_commands(
            ExpectShell(workdir="wkdir", command=["test", "-f", f"{entry}/.complete"]).exit(0),
            ExpectShell(workdir="wkdir", command=["mkdir", "-p", "/srv/qacloud/repo"]).exit(0),
            ExpectShell(workdir="wkdir", command=["ln", "-sfn", entry, "/srv/qacloud/repo/current"]).exit(0),
        )
        self.expect_outcome(result=SUCCESS, state_string="cached aaaaaaaaaaaa")
        self.expect_property("build_cached", True)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_build_failure_is_evidence(self):
        self._build()
        self.expect_commands(
            ExpectShell(
                workdir="wkdir", command=["test", "-f", f"/srv/qacloud/build-cache/{'a' * 40}/.complete"]
            ).exit(1),
            ExpectShell(
                workdir="wkdir",
                command=["mvn", "-B", "-P", "developer,systemvm", "clean", "install", "-DskipTests"],
            )
            .stdout("[ERROR] COMPILATION ERROR\n")
            .exit(1),
        )
        self.expect_outcome(result=FAILURE, state_string="mvn failed (exit 1) (failure)")
        self.expect_property("failed_tests", ["(build)"])
        yield self.run_step()

    @defer.inlineCallbacks
    def test_build_network_trouble_is_infrastructure(self):
        self._build()
        self.expect_commands(
            ExpectShell(
                workdir="wkdir", command=["test", "-f", f"/srv/qacloud/build-cache/{'a' * 40}/.complete"]
            ).exit(1),
            ExpectShell(
                workdir="wkdir",
                command=["mvn", "-B", "-P", "developer,systemvm", "clean", "install", "-DskipTests"],
            )
            .stdout("[ERROR] Could not transfer artifact org.x:y:1.0 from central\n")
            .exit(1),
        )
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure",
            "build cloudstack: network/disk trouble: "
            "[ERROR] Could not transfer artifact org.x:y:1.0 from central",
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_failed_deployment_is_infrastructure(self):
        self.setup_step(DeployZone())
        self.build.setProperty("pool", "pool-a", "test")
        self.expect_commands(
            ExpectShell(
                workdir="wkdir",
                command=[
                    "python3",
                    "-m",
                    "marvin.deployDataCenter",
                    "-i",
                    "marvin.cfg",
                    "-l",
                    "marvin-deploy",
                ],
            ).exit(1)
        )
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure", "zone deployment failed: deployDataCenter exited 1 (pool pool-a)"
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_health_check_failure_names_the_management_server(self):
        self.setup_step(HealthCheck(timeout_s=60))
        self.build.setProperty("mgmt_ip", "10.10.1.10", "test")
        url = "http://10.10.1.10:8096/client/api"
        self.expect_commands(
            ExpectShell(
                workdir="wkdir",
                timeout=1200,
                command=["python3", "qacloud-health.py", "--url", url, "--timeout", "60"],
            )
            .stdout(
                "12:00:00 zone pool-a-zone: consoleproxy not Running\n"
                "management server 10.10.1.10:8096: not healthy after 60s: consoleproxy not Running\n"
            )
            .exit(1)
        )
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure",
            "health check: management server 10.10.1.10:8096: not healthy after "
            "60s: consoleproxy not Running",
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_health_check_passes(self):
        self.setup_step(HealthCheck(timeout_s=60, url="http://127.0.0.1:1/client/api"))
        self.expect_commands(
            ExpectShell(
                workdir="wkdir",
                timeout=1200,
                command=[
                    "python3",
                    "qacloud-health.py",
                    "--url",
                    "http://127.0.0.1:1/client/api",
                    "--timeout",
                    "60",
                ],
            ).exit(0)
        )
        self.expect_outcome(result=SUCCESS, state_string="system VMs Running, template Ready")
        yield self.run_step()


# --------------------------------------------------------------------------- storage, marvin, puppet

POM = (
    '<project xmlns="http://maven.apache.org/POM/4.0.0"><properties>'
    "<project.systemvm.template.version>4.22.0.0</project.systemvm.template.version>"
    "</properties></project>"
)
SSH = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30"]


def seed(hv: str, ext: str) -> ExpectShell:
    url = f"https://download.cloudstack.org/systemvm/4.22/systemvmtemplate-4.22.0-x86_64-{ext}"
    return ExpectShell(
        workdir="wkdir",
        command=[
            "ssh",
            "-o",
            "BatchMode=yes",
            "root@10.10.1.10",
            "set -e; mkdir -p /mnt/secondary; mount -t nfs 10.10.1.2:/export/secondary /mnt/secondary; "
            "trap 'umount /mnt/secondary' EXIT; "
            "/usr/share/cloudstack-common/scripts/storage/secondary/cloud-install-sys-tmplt "
            f"-m /mnt/secondary -u {url} -h {hv} -F",
        ],
    )


class StorageMarvinPuppetSteps(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        self.settings = load_settings(REPO_ROOT / "examples" / "settings.yaml")
        return self.setup_test_build_step()

    def _pool_a(self, step):
        self.setup_step(step)
        self.build.setProperty("pool", "pool-a", "test")

    @defer.inlineCallbacks
    def test_storage_wipes_primary_and_seeds_the_commits_template_per_hypervisor(self):
        self._pool_a(PrepareStorage(self.settings, INV))
        self.expect_commands(
            ExpectShell(workdir="wkdir", command=["cat", "pom.xml"]).update("stdout", POM).exit(0),
            ExpectShell(
                workdir="wkdir",
                command=["sh", "-c", "mkdir -p /export/primary && find /export/primary -mindepth 1 -delete"],
            ).exit(0),
            seed("kvm", "kvm.qcow2.bz2").exit(0),
            seed("xenserver", "xen.vhd.bz2").exit(0),
        )
        self.expect_outcome(
            result=SUCCESS, state_string="primary wiped, systemvm 4.22.0.0 seeded for kvm, xenserver"
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_storage_seed_failure_is_infrastructure_naming_the_host(self):
        self._pool_a(PrepareStorage(self.settings, INV))
        self.expect_commands(
            ExpectShell(workdir="wkdir", command=["cat", "pom.xml"]).update("stdout", POM).exit(0),
            ExpectShell(
                workdir="wkdir",
                command=["sh", "-c", "mkdir -p /export/primary && find /export/primary -mindepth 1 -delete"],
            ).exit(0),
            seed("kvm", "kvm.qcow2.bz2").exit(32),
        )
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure",
            "storage: seeding the kvm systemvm template 4.22.0.0 on a-mgmt (10.10.1.10) failed (exit 32)",
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_puppet_names_the_failing_resources(self):
        self._pool_a(PuppetApply("management", INV))
        out = (
            "Notice: Compiled catalog for a-mgmt in environment production\n"
            "Error: /Stage[main]/Qacloud::Management/Service[cloudstack-management]/ensure: change from "
            "'stopped' to 'running' failed: Systemd start for cloudstack-management failed!\n"
            "Notice: /Stage[main]/Qacloud::Management/Exec[integration-api-port]: "
            "Skipping because of failed dependencies\n"
            "Error: /Stage[main]/Qacloud::Management/Package[cloudstack-usage]/ensure: "
            "change from 'purged' to 'present' failed\n"
        )
        self.expect_commands(
            ExpectShell(
                workdir="wkdir",
                command=[
                    "sh",
                    "-c",
                    "ssh -o BatchMode=yes -o ConnectTimeout=30 root@10.10.1.10 "
                    "'cat > /root/qacloud-management.pp' < qacloud-puppet/management.pp",
                ],
            ).exit(0),
            ExpectShell(
                workdir="wkdir",
                command=[
                    *SSH,
                    "root@10.10.1.10",
                    "FACTER_qacloud_repo_url=http://10.10.1.2/repo/current "
                    "puppet apply --detailed-exitcodes --color=false /root/qacloud-management.pp",
                ],
            )
            .log("a-mgmt", stdout=out)
            .exit(6),
        )
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure",
            "puppet management on a-mgmt (10.10.1.10) failed: "
            "Service[cloudstack-management], Package[cloudstack-usage]",
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_puppet_changes_applied_is_success(self):
        self._pool_a(PuppetApply("kvm", INV))
        self.expect_commands(
            ExpectShell(
                workdir="wkdir",
                command=[
                    "sh",
                    "-c",
                    "ssh -o BatchMode=yes -o ConnectTimeout=30 root@10.10.1.11 "
                    "'cat > /root/qacloud-kvm.pp' < qacloud-puppet/kvm.pp",
                ],
            ).exit(0),
            ExpectShell(
                workdir="wkdir",
                command=[
                    *SSH,
                    "root@10.10.1.11",
                    "FACTER_qacloud_repo_url=http://10.10.1.2/repo/current "
                    "puppet apply --detailed-exitcodes --color=false /root/qacloud-kvm.pp",
                ],
            ).exit(2),  # 2 = changes applied, no failures
        )
        self.expect_outcome(result=SUCCESS, state_string="kvm applied on a-kvm1")
        yield self.run_step()

    @defer.inlineCallbacks
    def test_install_marvin_installs_this_commits_sdist_never_pypi(self):
        self._pool_a(InstallMarvin(self.settings))
        pip = "python3 -m pip install --quiet --force-reinstall /srv/qacloud/repo/current/[mM]arvin-*.tar.gz"
        self.expect_commands(ExpectShell(workdir="wkdir", command=["sh", "-c", pip]).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="Marvin installed from this commit")
        yield self.run_step()
        # the only thing pip is given is the sdist BuildCloudStack built from tools/marvin
        (target,) = [w for w in pip.split() if "arvin" in w]
        self.assertTrue(target.startswith("/srv/qacloud/repo/current/") and target.endswith(".tar.gz"))

    @defer.inlineCallbacks
    def test_install_marvin_failure_is_infrastructure(self):
        self._pool_a(InstallMarvin(self.settings))
        pip = "python3 -m pip install --quiet --force-reinstall /srv/qacloud/repo/current/[mM]arvin-*.tar.gz"
        self.expect_commands(ExpectShell(workdir="wkdir", command=["sh", "-c", pip]).exit(1))
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure",
            "install-marvin: pip could not install /srv/qacloud/repo/current/[mM]arvin-*.tar.gz (exit 1)",
        )
        yield self.run_step()


XUNIT_PASS = (
    '<testsuite name="nosetests" tests="1"><testcase classname="{m}.{c}" name="{t}" time="1.5"/></testsuite>'
)
XUNIT_FAIL = (
    '<testsuite name="nosetests" tests="1"><testcase classname="{m}.{c}" name="{t}" time="2">'
    '<failure type="builtins.AssertionError" message="1 != 2">Traceback</failure></testcase></testsuite>'
)
SMOKE = "test/integration/smoke"
SETS = [
    ("BVT", "pass_fail", "boolean"),
    ("BVT: skipped", "skipped", "boolean"),
    ("BVT: set-up errors (infrastructure, not counted)", "infra_error", "boolean"),
]


def nose(stem: str, targets: list[str], rerun: bool = False) -> ExpectShell:
    sfx = ".rerun" if rerun else ""
    return ExpectShell(
        workdir="wkdir",
        log_environ=False,
        command=[
            "nosetests",
            "-v",
            "--with-xunit",
            f"--xunit-file=marvin-results/{stem}{sfx}.xml",
            "-a",
            "tags=advanced,required_hardware=false",
            "--with-marvin",
            "--marvin-config=marvin.cfg",
            f"--log-folder-path=marvin-results/{stem}{sfx}",
            "--zone=pool-a-zone",
            "--hypervisor=kvm",
            *targets,
        ],
    )


def cat(path: str) -> ExpectShell:
    return ExpectShell(workdir="wkdir", log_environ=False, command=["cat", path])


def shell(*argv: str) -> ExpectShell:
    return ExpectShell(workdir="wkdir", log_environ=False, command=list(argv))


class RunMarvinUnit(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        return self.setup_test_build_step()

    def _marvin(self, **props):
        self.setup_step(
            RunMarvin(zone="pool-a-zone", hypervisor="kvm", count_tests=False, rerun_failed=False)
        )
        for k, v in props.items():
            self.build.setProperty(k, v, "test")

    @defer.inlineCallbacks
    def test_one_nose_run_per_smoke_file_with_marvin_tags_and_xunit(self):
        self._marvin()
        self.expect_commands(
            shell("find", SMOKE, "-maxdepth", "1", "-name", "test_*.py")
            .update("stdout", f"{SMOKE}/test_vm.py\n{SMOKE}/test_dns.py\n")
            .exit(0),
            shell("mkdir", "-p", "marvin-results").exit(0),
            nose("test_dns", [f"{SMOKE}/test_dns.py"]).exit(0),
            cat("marvin-results/test_dns.xml")
            .update("stdout", XUNIT_PASS.format(m="test_dns", c="TestDns", t="test_01"))
            .exit(0),
            nose("test_vm", [f"{SMOKE}/test_vm.py"]).exit(1),
            cat("marvin-results/test_vm.xml")
            .update("stdout", XUNIT_FAIL.format(m="test_vm", c="TestVm", t="test_02"))
            .exit(0),
            shell(
                "find",
                "marvin-results/test_vm",
                "-name",
                "failed_plus_exceptions.txt",
                "-exec",
                "cat",
                "{}",
                "+",
            ).exit(1),
        )
        self.expect_outcome(result=FAILURE, state_string="2 tests, 1 failed")
        self.expect_property("failed_tests", [f"{SMOKE}/test_vm.py:TestVm.test_02"])
        self.expect_test_result_sets(SETS)
        self.expect_test_results(
            [
                (1000, "1", "TestDns.test_01", f"{SMOKE}/test_dns.py", None, 1_500_000_000),
                (1000, "0", "TestVm.test_02", f"{SMOKE}/test_vm.py", None, 2_000_000_000),
            ]
        )
        yield self.run_step()

    @defer.inlineCallbacks
    def test_bvt_tests_narrows_files_and_tests(self):
        wanted = [f"{SMOKE}/test_vm.py:TestVm.test_02", f"{SMOKE}/test_vm.py:TestVm.test_03"]
        self._marvin(bvt_tests=wanted)
        self.expect_commands(  # no listing of the suite: only the requested tests run
            shell("mkdir", "-p", "marvin-results").exit(0),
            nose("test_vm", wanted).exit(0),
            cat("marvin-results/test_vm.xml")
            .update("stdout", XUNIT_PASS.format(m="test_vm", c="TestVm", t="test_02"))
            .exit(0),
        )
        self.expect_outcome(result=SUCCESS, state_string="1 tests")
        self.expect_property("failed_tests", [])
        self.expect_test_result_sets(SETS)
        self.expect_test_results([(1000, "1", "TestVm.test_02", f"{SMOKE}/test_vm.py", None, 1_500_000_000)])
        yield self.run_step()


# --------------------------------------------------------------------------- pool reuse


def _with_reuse(on: bool):
    s = load_settings(REPO_ROOT / "examples" / "settings.yaml")
    return dataclasses.replace(s, provisioning=dataclasses.replace(s.provisioning, reuse_pool=on))


class PoolReuse(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """DecidePoolReuse against build rows in Buildbot's (fake, SQLite) database.

    The harness's own build is id 92 on worker 400; earlier builds are inserted per test.
    """

    def setUp(self):
        self.setup_test_reactor()
        return self.setup_test_build_step(want_db=True)

    @defer.inlineCallbacks
    def previous(self, *builds):
        """builds: (buildid, builder name, workerid, results, props)."""
        rows = [
            fakedb.Builder(id=101, name="gate-bvt"),
            fakedb.Builder(id=102, name="try-bvt"),
            fakedb.Builder(id=103, name="pool-service"),
            fakedb.Worker(id=401, name="pool-b"),
        ]
        ids = {"gate-bvt": 101, "try-bvt": 102, "pool-service": 103}
        for buildid, builder, workerid, results, props in builds:
            rows.append(
                fakedb.Build(
                    id=buildid,
                    buildrequestid=300,
                    masterid=fakedb.FakeDBConnector.MASTER_ID,
                    builderid=ids[builder],
                    workerid=workerid,
                    results=results,
                    complete_at=1304262300,
                )
            )
            rows += [fakedb.BuildProperty(buildid=buildid, name=k, value=v) for k, v in props.items()]
        yield self.master.db.insert_test_data(rows)

    def decide(self):
        self.setup_step(DecidePoolReuse())
        self.build.setProperty("pool", "pool-a", "test")

    @defer.inlineCallbacks
    def test_previous_run_passed_reuses_the_pool(self):
        yield self.previous(
            (80, "gate-bvt", 400, FAILURE, {"pool": "pool-a"}),
            (81, "try-bvt", 400, SUCCESS, {"pool": "pool-a"}),
            (82, "pool-service", 400, FAILURE, {}),  # not a BVT: ignored
            (85, "gate-bvt", 401, FAILURE, {"pool": "pool-b"}),  # another pool: ignored
        )
        self.decide()
        self.expect_outcome(result=SUCCESS, state_string="previous run (build 81) passed: reusing the pool")
        self.expect_property("reuse_pool", True)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_previous_run_failed_means_a_full_install(self):
        yield self.previous(
            (80, "gate-bvt", 400, SUCCESS, {"pool": "pool-a"}),
            (81, "gate-bvt", 400, FAILURE, {"pool": "pool-a", "failed_tests": ["a.py:T.t"]}),
        )
        self.decide()
        self.expect_outcome(result=SUCCESS, state_string="previous run (build 81) did not pass: full install")
        self.expect_property("reuse_pool", False)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_previous_infrastructure_failure_means_a_full_install(self):
        yield self.previous(
            (81, "gate-bvt", 400, FAILURE, {"pool": "pool-a", "infra_failure": "host a-kvm1: BMC timed out"}),
        )
        self.decide()
        self.expect_outcome(
            result=SUCCESS,
            state_string="previous run (build 81) had an infrastructure failure: full install",
        )
        self.expect_property("reuse_pool", False)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_previous_exception_means_a_full_install(self):
        yield self.previous((81, "gate-bvt", 400, EXCEPTION, {"pool": "pool-a"}))
        self.decide()
        self.expect_outcome(result=SUCCESS, state_string="previous run (build 81) did not pass: full install")
        self.expect_property("reuse_pool", False)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_no_previous_run_means_a_full_install(self):
        yield self.previous((85, "gate-bvt", 401, SUCCESS, {"pool": "pool-b"}))
        self.decide()
        self.expect_outcome(result=SUCCESS, state_string="no previous BVT run on this pool: full install")
        self.expect_property("reuse_pool", False)
        yield self.run_step()

    @defer.inlineCallbacks
    def test_a_reused_build_skips_provisioning(self):
        self.setup_step(unless_reused(ProvisionPool(INV, _with_reuse(True).provisioning)))
        self.build.setProperty("reuse_pool", True, "pool-reuse")
        self.expect_outcome(result=SKIPPED)
        yield self.run_step()


def _steps(factory) -> dict:
    """name -> the step as a build would create it."""
    return {st.name: st for st in (f.buildStep() for f in factory.steps)}


def test_reuse_off_installs_every_run_from_scratch():
    s = _with_reuse(False)
    st = _steps(bvt_factory(s, INV))
    assert list(st)[:3] == ["checkout", "provision", "pool-facts"]  # no pool-reuse step
    for name in ("provision", "storage", "deploy-zone", "teardown"):
        assert st[name].doStepIf is True, name


def test_reuse_on_decides_after_checkout_and_guards_install_storage_zone_and_power_off():
    s = _with_reuse(True)
    st = _steps(bvt_factory(s, INV))
    assert list(st)[:3] == ["checkout", "pool-reuse", "provision"]
    for name in ("provision", "storage", "deploy-zone"):
        assert st[name].doStepIf is not_reused, name
    # puppet re-deploys the management server and agents either way
    assert st["puppet-management"].doStepIf is True and st["puppet-kvm"].doStepIf is True
    skip_teardown = st["teardown"].doStepIf
    passing, failing = mock.Mock(), mock.Mock()
    passing.build.results, failing.build.results = SUCCESS, FAILURE
    assert skip_teardown(passing) is False and skip_teardown(failing) is True
    reused, fresh = mock.Mock(), mock.Mock()
    reused.getProperty.return_value, fresh.getProperty.return_value = True, None
    assert not_reused(reused) is False and not_reused(fresh) is True
