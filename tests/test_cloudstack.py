"""CloudStack steps: Marvin config from examples/lab.yaml (field by field, format of
notes/cloudstack.md §1.4), pom/index parsers, the health check against the CloudStack API
STAND-IN (lab/cloudstack_standin.py), and build/deploy/health steps in Buildbot's step harness."""

from __future__ import annotations

import subprocess
import sys

from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from twisted.internet import defer
from twisted.trial import unittest

from lab.cloudstack_standin import CloudStackStandin, Knobs
from master.inventory import load_inventory
from master.settings import REPO_ROOT, load_settings
from steps import cloudstack_health
from steps.cloudstack import (
    BuildCloudStack,
    DeployZone,
    HealthCheck,
    cloudstack_steps,
    latest_from_index,
    marvin_config,
    systemvm_version_from_pom,
    template_url,
)

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
