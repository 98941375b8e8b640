"""CloudStack on a provisioned pool: build, storage, zone (Marvin config, deploy, health).

All commands run on the pool's worker, its QA VM, which serves the package repository and
the NFS exports and reaches the pool's hosts over SSH. Pool facts (management server IP,
hypervisors, storage) come from the inventory, looked up by the build's ``pool`` property.

Failures of the environment set the ``infra_failure`` property (never blamed on a commit);
a commit that does not build sets ``failed_tests = ["(build)"]`` (evidence against it).
"""

from __future__ import annotations

import inspect
import json
import re
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from buildbot.interfaces import IRenderable
from buildbot.plugins import steps, util
from buildbot.process import buildstep, logobserver
from buildbot.process.results import FAILURE, SUCCESS
from zope.interface import implementer

from master.inventory import Inventory, Pool
from master.settings import Settings
from steps import cloudstack_health

HV_NAMES = {"kvm": "KVM", "xenserver": "XenServer", "vmware": "VMware"}
# traffic labels per hypervisor: (management/public, guest)
HV_LABELS = {
    "kvm": ("cloudbr0", "cloudbr1"),
    "xenserver": ("xenbr0", "xenbr1"),
    "vmware": ("vSwitch0", "vSwitch1"),
}
TEMPLATE_EXT = {"kvm": "kvm.qcow2.bz2", "xenserver": "xen.vhd.bz2", "vmware": "vmware.ova"}
INTEGRATION_PORT = 8096
MARVIN_CONFIG = "marvin.cfg"
INSTALL_SYS_TMPLT = "/usr/share/cloudstack-common/scripts/storage/secondary/cloud-install-sys-tmplt"
# Maven/network trouble while building: the lab's fault, not the commit's
BUILD_INFRA = re.compile(
    r"Could not transfer artifact|Could not resolve host|Connection (refused|timed out)"
    r"|No space left on device"
    r"|Temporary failure in name resolution"
)

# --------------------------------------------------------------------------- pure helpers


def systemvm_version_from_pom(pom_xml: str) -> str:
    """``project.systemvm.template.version`` from CloudStack's root pom.xml (e.g. 4.22.0.0)."""
    try:
        root = ET.fromstring(pom_xml)
    except ET.ParseError as e:
        raise ValueError(f"pom.xml is not valid XML ({e})") from None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "project.systemvm.template.version" and (el.text or "").strip():
            return el.text.strip()
    raise ValueError("pom.xml has no <project.systemvm.template.version> property")


def latest_from_index(index_text: str) -> str:
    """The newest ``X.Y[.Z]`` release directory in a template index page (download.cloudstack.org)."""
    found = set(re.findall(r'href="?/?(\d+\.\d+(?:\.\d+)*)/', index_text))
    if not found:
        raise ValueError('the template index lists no version directories (href="X.Y/")')
    return max(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def template_url(base: str, version: str, hypervisor: str) -> str:
    """``<base>/<X.Y>/systemvmtemplate-<X.Y.Z>-x86_64-<hv ext>`` (notes/cloudstack.md §5.3)."""
    parts = [*version.split("."), "0", "0"][:3]
    name = f"systemvmtemplate-{'.'.join(parts)}-x86_64-{TEMPLATE_EXT[hypervisor]}"
    return f"{base.rstrip('/')}/{'.'.join(parts[:2])}/{name}"


def qavm_ip(pool: Pool) -> str:
    """The QA VM's address on the pool network: the host of its squid proxy URL."""
    return urlsplit(pool.network.http_proxy).hostname or pool.network.gateway


def _nfs(url: str, sub: str = "") -> str:
    """inventory ``nfs://srv/path`` -> Marvin's ``nfs://srv:/path[/sub]``."""
    u = urlsplit(url)
    return f"nfs://{u.hostname}:{u.path.rstrip('/')}{'/' + sub if sub else ''}"


def _ranges(pool: Pool) -> tuple[tuple[str, str], tuple[str, str]]:
    """(pod range, public range): the upper part of the pool subnet, below .200 (documented)."""
    hosts = list(pool.network.network.hosts())
    n = len(hosts)
    pod = (str(hosts[n * 2 // 5]), str(hosts[n * 3 // 5 - 1]))
    public = (str(hosts[n * 3 // 5]), str(hosts[n * 4 // 5 - 1]))
    return pod, public


def primary_hypervisor(pool: Pool) -> str:
    return next(h for h in ("kvm", "xenserver", "vmware") if h in pool.hypervisor_types)


def marvin_config(
    pool: Pool, host_password: str, vcenter_password: str | None = None, log_folder: str = "marvin-results"
) -> dict:
    """Marvin's deployment configuration (deployDataCenter / --marvin-config) for a pool.

    One Advanced zone, one pod, one cluster per hypervisor type (KVM, XenServer/XCP-ng,
    VMware through the inventory's vCenter), NFS primary storage per cluster, the pool's NFS
    secondary storage, the management server on the integration port.
    """
    net = pool.network
    netmask = net.netmask or str(net.network.netmask)
    (pod_start, pod_end), (pub_start, pub_end) = _ranges(pool)
    mgmt_label, guest_label = {}, {}
    for hv in pool.hypervisor_types:
        key = {"kvm": "kvm", "xenserver": "xen", "vmware": "vmware"}[hv]
        mgmt_label[key], guest_label[key] = HV_LABELS[hv]
    clusters = []
    for hv in pool.hypervisor_types:
        name = f"{pool.name}-{hv}"
        c: dict = {
            "clustername": name,
            "hypervisor": HV_NAMES[hv],
            "clustertype": "ExternalManaged" if hv == "vmware" else "CloudManaged",
            "hosts": [
                {"url": f"http://{h.ip}", "username": "root", "password": host_password}
                for h in pool.hypervisors
                if h.hypervisor == hv
            ],
            "primaryStorages": [
                {"name": f"{name}-primary", "url": _nfs(pool.storage.primary, name), "details": []}
            ],
        }
        if hv == "vmware" and pool.vcenter:
            vc = pool.vcenter
            c.update(
                url=f"http://{vc.address}/{vc.datacenter}/{vc.cluster}",
                username=vc.username,
                password=vcenter_password or "",
            )
        clusters.append(c)
    zone: dict = {
        "name": f"{pool.name}-zone",
        "networktype": "Advanced",
        "securitygroupenabled": "false",
        "localstorageenabled": "false",
        "dns1": qavm_ip(pool),
        "internaldns1": qavm_ip(pool),
        "guestcidraddress": "10.1.1.0/24",
        "domain": f"{pool.name}.qacloud",
        "ipranges": [
            {
                "startip": pub_start,
                "endip": pub_end,
                "netmask": netmask,
                "gateway": net.gateway,
                "vlan": "untagged",
            }
        ],
        "physical_networks": [
            {
                "name": f"{pool.name}-physnet",
                "broadcastdomainrange": "Zone",
                "vlan": net.vlans if "-" in net.vlans else f"{net.vlans}-{net.vlans}",
                "isolationmethods": ["VLAN"],
                "traffictypes": [
                    {"typ": "Guest", **guest_label},
                    {"typ": "Management", **mgmt_label},
                    {"typ": "Public", **mgmt_label},
                ],
                "providers": [
                    {"name": p, "broadcastdomainrange": "ZONE"}
                    for p in ("VirtualRouter", "VpcVirtualRouter", "InternalLbVm")
                ],
            }
        ],
        "pods": [
            {
                "name": f"{pool.name}-pod",
                "gateway": net.gateway,
                "netmask": netmask,
                "startip": pod_start,
                "endip": pod_end,
                "clusters": clusters,
            }
        ],
        "secondaryStorages": [{"url": _nfs(pool.storage.secondary), "provider": "NFS", "details": []}],
    }
    if pool.vcenter and "vmware" in pool.hypervisor_types:
        vc = pool.vcenter
        zone["vmwaredc"] = {
            "name": vc.datacenter,
            "vcenter": vc.address,
            "username": vc.username,
            "password": vcenter_password or "",
        }
    return {
        "zones": [zone],
        "mgtSvr": [
            {
                "mgtSvrIp": pool.management.ip,
                "port": INTEGRATION_PORT,
                "user": "root",
                "passwd": host_password,
                "hypervisor": primary_hypervisor(pool),
                "useHttps": "False",
                "certCAPath": "NA",
                "certPath": "NA",
            }
        ],
        # CloudStack's stock database account, created by puppet (cloudstack-setup-databases)
        "dbSvr": {
            "dbSvr": pool.management.ip,
            "port": 3306,
            "user": "cloud",
            "passwd": "cloud",
            "db": "cloud",
        },
        "globalConfig": [
            {"name": k, "value": v}
            for k, v in (
                ("expunge.delay", "60"),
                ("expunge.interval", "60"),
                ("network.gc.interval", "60"),
                ("network.gc.wait", "60"),
                ("storage.cleanup.interval", "300"),
                ("vm.op.wait.interval", "5"),
                ("default.page.size", "10000"),
            )
        ],
        "logger": {"LogFolderPath": log_folder},
    }


# --------------------------------------------------------------------------- pool lookup


def _pool(props, inventory: Inventory) -> Pool:
    name = props.getProperty("pool")
    if not name:
        raise ValueError("the build has no 'pool' property (workers/selection.py sets it)")
    return inventory.pool(name)


@implementer(IRenderable)
class MarvinConfigJson:
    """Renders the pool's Marvin configuration with its secrets (never logged)."""

    def __init__(self, inventory: Inventory, settings: Settings):
        self.inventory, self.settings = inventory, settings

    async def getRenderingFor(self, props) -> str:
        pool = _pool(props, self.inventory)
        host_pw = await props.render(util.Secret(self.settings.bvt.host_password_secret))
        vc_pw = await props.render(util.Secret(pool.vcenter.password_secret)) if pool.vcenter else None
        return json.dumps(marvin_config(pool, host_pw, vc_pw), indent=2)


def _infra(step: buildstep.BuildStep, reason: str) -> int:
    step.setProperty("infra_failure", step.build.properties.cleanupTextFromSecrets(reason), step.name)
    step.descriptionDone = [reason[:200]]
    return FAILURE


class PoolFacts(buildstep.BuildStep):
    """Sets ``mgmt_ip``, ``marvin_zone``, ``marvin_hypervisor`` from the inventory pool."""

    name = "pool-facts"

    def __init__(self, inventory: Inventory, **kwargs):
        self.inventory = inventory
        super().__init__(**kwargs)

    async def run(self) -> int:
        try:
            pool = _pool(self.build, self.inventory)
        except (KeyError, ValueError) as e:
            return _infra(self, str(e).strip("'\""))
        self.setProperty("mgmt_ip", pool.management.ip, self.name)
        self.setProperty("marvin_zone", f"{pool.name}-zone", self.name)
        self.setProperty("marvin_hypervisor", primary_hypervisor(pool), self.name)
        self.descriptionDone = [f"{pool.name}: {pool.management.name} + {', '.join(pool.hypervisor_types)}"]
        return SUCCESS


class _ShellStep(buildstep.ShellMixin, buildstep.BuildStep):
    """A step running worker commands one after the other."""

    def __init__(self, **kwargs):
        kwargs.setdefault("command", ["true"])
        kwargs = self.setupShellMixin(kwargs)
        super().__init__(**kwargs)

    async def _sh(self, argv, log: str | None = "stdio", collect: bool = False):
        cmd = await self.makeRemoteShellCommand(command=argv, stdioLogName=log, collectStdout=collect)
        await self.runCommand(cmd)
        return cmd


class BuildCloudStack(_ShellStep):
    """Packages (management, agent, usage) and Marvin's sdist from the checked-out commit.

    Cached per commit on the QA VM (``<build_cache>/<sha>``): a second build of the same sha
    (bisection, confirmation) skips with the summary "cached". The cache entry is complete
    only once ``.complete`` exists; ``<package_repo>/current`` points to the entry in use.
    """

    name = "build-cloudstack"

    def __init__(self, settings: Settings, distro: str = "el8", **kwargs):
        self.cache = settings.bvt.build_cache.rstrip("/")
        self.repo = settings.bvt.package_repo.rstrip("/")
        self.profiles = ",".join(settings.bvt.maven_profiles)
        self.distro = distro
        super().__init__(**kwargs)
        self._network_trouble: list[str] = []
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._watch))

    def _watch(self):
        while True:
            _stream, line = yield
            if BUILD_INFRA.search(line):
                self._network_trouble.append(line.strip())

    async def run(self) -> int:
        sha = self.getProperty("got_revision") or self.getProperty("revision")
        if not sha:
            return _infra(self, "build cloudstack: no revision to build (checkout did not set got_revision)")
        entry = f"{self.cache}/{sha}"
        publish = ["ln", "-sfn", entry, f"{self.repo}/current"]
        if (await self._sh(["test", "-f", f"{entry}/.complete"], log=None)).rc == 0:
            await self._sh(["mkdir", "-p", self.repo], log=None)
            await self._sh(publish)
            self.descriptionDone = [f"cached {sha[:12]}"]
            self.setProperty("build_cached", True, self.name)
            return SUCCESS
        commands = [
            ["mvn", "-B", "-P", self.profiles, "clean", "install", "-DskipTests"],
            ["packaging/package.sh", "-d", self.distro],
        ]
        for argv in commands:
            cmd = await self._sh(argv)
            if cmd.rc != 0:
                if self._network_trouble:
                    return _infra(
                        self, f"build cloudstack: network/disk trouble: {self._network_trouble[-1]}"
                    )
                self.setProperty("failed_tests", ["(build)"], self.name)
                self.descriptionDone = [f"{argv[0]} failed (exit {cmd.rc})"]
                return FAILURE
        # artifacts -> the cache entry, a yum repository, then marked complete
        script = (
            f"set -e; rm -rf {entry}.tmp; mkdir -p {entry}.tmp {self.repo}; "
            f"cp dist/rpmbuild/RPMS/x86_64/*.rpm {entry}.tmp/; "
            f"cp tools/marvin/dist/[mM]arvin-*.tar.gz {entry}.tmp/; "
            f"createrepo -q {entry}.tmp; rm -rf {entry}; mv {entry}.tmp {entry}; touch {entry}/.complete"
        )
        cmd = await self._sh(["sh", "-c", script])
        if cmd.rc != 0:
            return _infra(self, f"build cloudstack: publishing packages to {entry} failed (exit {cmd.rc})")
        await self._sh(publish)
        self.descriptionDone = [f"built {sha[:12]}"]
        self.setProperty("build_cached", False, self.name)
        return SUCCESS


class PrepareStorage(_ShellStep):
    """Wipe primary storage and seed secondary with the systemvm template per hypervisor."""

    name = "storage"

    def __init__(self, settings: Settings, inventory: Inventory, **kwargs):
        self.bvt = settings.bvt
        self.inventory = inventory
        super().__init__(**kwargs)

    async def _version(self) -> str:
        want = self.bvt.systemvm_template
        if want and want != "latest":
            return want
        if want == "latest":
            if not self.bvt.template_index_url:
                raise _StorageError("bvt.systemvm_template is 'latest' but bvt.template_index_url is not set")
            cmd = await self._sh(
                ["curl", "-fsSL", "--max-time", "60", self.bvt.template_index_url], log=None, collect=True
            )
            if cmd.rc != 0:
                raise _StorageError(
                    f"template index {self.bvt.template_index_url} unreachable (curl exit {cmd.rc})"
                )
            return latest_from_index(cmd.stdout)
        cmd = await self._sh(["cat", "pom.xml"], log=None, collect=True)
        if cmd.rc != 0:
            raise _StorageError("pom.xml not found in the checkout (is this a CloudStack tree?)")
        return systemvm_version_from_pom(cmd.stdout)

    async def run(self) -> int:
        try:
            pool = _pool(self.build, self.inventory)
            version = await self._version()
        except (_StorageError, ValueError, KeyError) as e:
            return _infra(self, f"storage: {str(e).strip(chr(39))}")
        primary = urlsplit(pool.storage.primary).path
        cmd = await self._sh(["sh", "-c", f"mkdir -p {primary} && find {primary} -mindepth 1 -delete"])
        if cmd.rc != 0:
            return _infra(
                self, f"storage: wiping primary storage {pool.storage.primary} failed (exit {cmd.rc})"
            )
        secondary = pool.storage.secondary.replace("nfs://", "").replace("/", ":/", 1)
        for hv in pool.hypervisor_types:
            url = template_url(self.bvt.template_base_url, version, hv)
            remote = (
                f"set -e; mkdir -p /mnt/secondary; mount -t nfs {secondary} /mnt/secondary; "
                f"trap 'umount /mnt/secondary' EXIT; "
                f"{INSTALL_SYS_TMPLT} -m /mnt/secondary -u {url} -h {hv} -F"
            )
            cmd = await self._sh(["ssh", "-o", "BatchMode=yes", f"root@{pool.management.ip}", remote])
            if cmd.rc != 0:
                return _infra(
                    self,
                    f"storage: seeding the {hv} systemvm template {version} on {pool.management.name} "
                    f"({pool.management.ip}) failed (exit {cmd.rc})",
                )
        self.descriptionDone = [
            f"primary wiped, systemvm {version} seeded for {', '.join(pool.hypervisor_types)}"
        ]
        return SUCCESS


class _StorageError(Exception):
    pass


class InstallMarvin(_ShellStep):
    """pip-installs the Marvin sdist built from this commit (never PyPI's unrelated ``marvin``)."""

    name = "install-marvin"

    def __init__(self, settings: Settings, **kwargs):
        self.repo = settings.bvt.package_repo.rstrip("/")
        super().__init__(**kwargs)

    async def run(self) -> int:
        sdist = f"{self.repo}/current/[mM]arvin-*.tar.gz"
        cmd = await self._sh(["sh", "-c", f"python3 -m pip install --quiet --force-reinstall {sdist}"])
        if cmd.rc != 0:
            return _infra(self, f"install-marvin: pip could not install {sdist} (exit {cmd.rc})")
        self.descriptionDone = ["Marvin installed from this commit"]
        return SUCCESS


class DeployZone(_ShellStep):
    """Marvin's deployDataCenter with the generated config; its exit status is checked
    (upstream CI ignores it with ``|| true``). A failure is an infrastructure failure."""

    name = "deploy-zone"

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "command",
            ["python3", "-m", "marvin.deployDataCenter", "-i", MARVIN_CONFIG, "-l", "marvin-deploy"],
        )
        super().__init__(**kwargs)

    async def run(self) -> int:
        cmd = await self._sh(self.command)
        if cmd.rc != 0:
            return _infra(
                self,
                f"zone deployment failed: deployDataCenter exited {cmd.rc} (pool {self.getProperty('pool')})",
            )
        self.descriptionDone = ["zone deployed"]
        return SUCCESS


class HealthCheck(_ShellStep):
    """System VMs Running and the built-in template Ready, polled through the API with a
    timeout (steps/cloudstack_health.py, copied to the QA VM by the step before)."""

    name = "health-check"

    def __init__(self, timeout_s: int = 1800, url=None, script: str = "qacloud-health.py", **kwargs):
        self.url = url or util.Interpolate(f"http://%(prop:mgmt_ip)s:{INTEGRATION_PORT}/client/api")
        self.timeout_s = timeout_s
        self.script = script
        kwargs.setdefault("timeout", max(1200, timeout_s + 120))
        super().__init__(**kwargs)

    renderables = ["url"]

    async def run(self) -> int:
        cmd = await self._sh(
            ["python3", self.script, "--url", self.url, "--timeout", str(self.timeout_s)], collect=True
        )
        lines = [ln for ln in (cmd.stdout or "").splitlines() if ln.strip()]
        if cmd.rc != 0:
            reason = lines[-1] if lines else f"health check exited {cmd.rc}"
            return _infra(self, f"health check: {reason}")
        self.descriptionDone = ["system VMs Running, template Ready"]
        return SUCCESS


def health_script() -> str:
    return inspect.getsource(cloudstack_health)


def cloudstack_steps(settings: Settings, inventory: Inventory) -> list:
    """build -> puppet -> storage -> zone, in order, for ``bvt_factory`` in cloudstack mode.

    With ``provisioning.reuse_pool`` and the build property ``reuse_pool`` (set by
    steps/reuse.py when the previous run on the pool passed), storage and the deployed zone
    are kept and only the management server and agents are re-deployed by puppet.
    """
    from steps.puppet import puppet_steps
    from steps.reuse import not_reused

    if_fresh = not_reused if settings.provisioning.reuse_pool else True
    return [
        PoolFacts(inventory, haltOnFailure=True),
        BuildCloudStack(settings, haltOnFailure=True, timeout=3600),
        *puppet_steps(settings, inventory),
        PrepareStorage(settings, inventory, haltOnFailure=True, doStepIf=if_fresh),
        steps.StringDownload(
            MarvinConfigJson(inventory, settings),
            workerdest=MARVIN_CONFIG,
            mode=0o600,
            name="marvin-config",
            haltOnFailure=True,
        ),
        InstallMarvin(settings, haltOnFailure=True),
        DeployZone(haltOnFailure=True, timeout=3600, doStepIf=if_fresh),
        steps.StringDownload(
            health_script(), workerdest="qacloud-health.py", name="health-script", haltOnFailure=True
        ),
        HealthCheck(timeout_s=settings.bvt.health_timeout, haltOnFailure=True),
    ]


__all__ = [
    "BuildCloudStack",
    "DeployZone",
    "HealthCheck",
    "MarvinConfigJson",
    "PoolFacts",
    "PrepareStorage",
    "cloudstack_steps",
    "latest_from_index",
    "marvin_config",
    "systemvm_version_from_pom",
    "template_url",
]
