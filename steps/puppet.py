"""Apply qacloud's Puppet roles (puppet/*.pp) over SSH on a pool's freshly installed hosts.

Roles: ``management`` on the management server, ``kvm`` on KVM hypervisors (XenServer/XCP-ng
and VMware hosts are added to the zone directly, without Puppet). The ``qavm`` role is applied
once when a QA VM is set up (docs/cloudstack.md), not per build. ``puppet apply
--detailed-exitcodes`` exits 4 or 6 when resources failed; the step then names them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from buildbot.plugins import steps
from buildbot.process import buildstep
from buildbot.process.results import FAILURE, SUCCESS

from master.inventory import Inventory, Pool
from master.settings import REPO_ROOT, Settings

PUPPET_DIR = REPO_ROOT / "puppet"
ROLES = ("management", "kvm")
_ERROR_RESOURCE = re.compile(r"Error: (?:/Stage\[\w+\]/)?(?:[\w:]+/)*(?P<res>[A-Z][\w:]*\[[^\]]+\])")
_DEPENDENCY = re.compile(r"(?P<res>[A-Z][\w:]*\[[^\]]+\]): Skipping because of failed dependencies")


def failed_resources(output: str) -> list[str]:
    """Resources puppet reported as failed (``Error: /Stage[main]/Cls/Service[x]: ...``),
    in order, without duplicates; dependency-skipped ones are not failures of their own."""
    out: list[str] = []
    for line in output.splitlines():
        if _DEPENDENCY.search(line):
            continue
        m = _ERROR_RESOURCE.search(line)
        if m and m.group("res") not in out and not m.group("res").startswith(("Class[", "Stage[")):
            out.append(m.group("res"))
    return out


def role_hosts(pool: Pool, role: str) -> list:
    if role == "management":
        return [pool.management]
    return [h for h in pool.hypervisors if h.hypervisor == role]


def facts_env(pool: Pool) -> dict[str, str]:
    """qacloud's facts for a pool's hosts, passed as FACTER_* variables."""
    from steps.cloudstack import qavm_ip

    return {"FACTER_qacloud_repo_url": f"http://{qavm_ip(pool)}/repo/current"}


class PuppetApply(buildstep.ShellMixin, buildstep.BuildStep):
    """Copy a role's manifest to each of the pool's hosts in that role and apply it."""

    def __init__(
        self,
        role: str,
        inventory: Inventory,
        manifest_dir: str = "qacloud-puppet",
        ssh: list[str] | None = None,
        **kwargs,
    ):
        self.role = role
        self.inventory = inventory
        self.manifest_dir = manifest_dir
        self.ssh = list(ssh or ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30"])
        kwargs.setdefault("name", f"puppet-{role}")
        kwargs.setdefault("command", ["true"])
        kwargs = self.setupShellMixin(kwargs)
        super().__init__(**kwargs)

    async def run(self) -> int:
        try:
            pool = self.inventory.pool(self.getProperty("pool"))
        except KeyError as e:
            return self._infra(f"puppet {self.role}: {str(e).strip(chr(39))}")
        hosts = role_hosts(pool, self.role)
        if not hosts:
            self.descriptionDone = [f"no {self.role} hosts in {pool.name}"]
            return SUCCESS
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in facts_env(pool).items())
        remote = f"/root/qacloud-{self.role}.pp"
        for h in hosts:
            target = f"root@{h.ip}"
            port = ["-p", str(h.ssh_port)] if h.ssh_port != 22 else []
            copy = [
                "sh",
                "-c",
                f"{shlex.join(self.ssh + port)} {target} 'cat > {remote}' "
                f"< {self.manifest_dir}/{self.role}.pp",
            ]
            cmd = await self.makeRemoteShellCommand(command=copy, stdioLogName=f"{h.name}")
            await self.runCommand(cmd)
            if cmd.rc != 0:
                return self._infra(
                    f"puppet {self.role}: cannot copy the manifest to {h.name} ({h.ip}): ssh exit {cmd.rc}"
                )
            apply = [
                *self.ssh,
                *port,
                target,
                f"{env} puppet apply --detailed-exitcodes --color=false {remote}",
            ]
            cmd = await self.makeRemoteShellCommand(
                command=apply, stdioLogName=f"{h.name}", collectStdout=True, collectStderr=True
            )
            await self.runCommand(cmd)
            if cmd.rc not in (0, 2):
                failed = failed_resources(f"{cmd.stdout}\n{cmd.stderr}")
                what = ", ".join(failed) if failed else f"puppet exit code {cmd.rc}"
                return self._infra(f"puppet {self.role} on {h.name} ({h.ip}) failed: {what}")
        self.descriptionDone = [f"{self.role} applied on {', '.join(h.name for h in hosts)}"]
        return SUCCESS

    def _infra(self, reason: str) -> int:
        reason = self.build.properties.cleanupTextFromSecrets(reason)
        self.setProperty("infra_failure", reason, self.name)
        self.descriptionDone = [reason[:200]]
        return FAILURE


def puppet_steps(settings: Settings, inventory: Inventory) -> list:
    """Manifests to the QA VM, then the management and KVM roles on the pool's hosts."""
    out: list = []
    for role in ROLES:
        out.append(
            steps.StringDownload(
                Path(PUPPET_DIR / f"{role}.pp").read_text(),
                workerdest=f"qacloud-puppet/{role}.pp",
                name=f"manifest-{role}",
                hideStepIf=lambda results, step: results == SUCCESS,
                haltOnFailure=True,
            )
        )
    out += [PuppetApply(role, inventory, haltOnFailure=True, timeout=3600) for role in ROLES]
    return out
