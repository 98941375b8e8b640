"""qacloud settings: one YAML file, validated once at load with file:line errors.

The path comes from ``--settings`` or ``QACLOUD_SETTINGS``; without either, the demo settings
shipped in the repository are used (SQLite, the simulated lab, everything on 127.0.0.1).
Relative paths inside the file are relative to the file itself; a relative SQLite database
is relative to the master's base directory, as in Buildbot.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from master.yamlconf import ConfigError, Located, Problem, Reader, check, load_file, ok

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SETTINGS = REPO_ROOT / "lab" / "demo" / "settings.yaml"
ENV_VAR = "QACLOUD_SETTINGS"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"port must be 1-65535, got {value}"


def _db(value: str) -> str | None:
    if re.match(r"^(sqlite|postgresql(\+psycopg2)?)://", value):
        return None
    return f"expected an sqlite:// or postgresql:// URL, got {value!r}"


def _positive(value: int | float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def _non_negative(value: int | float) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value}"


def _fraction(value: float) -> str | None:
    return None if 0 < value < 1 else f"must be between 0 and 1 (exclusive), got {value}"


def _patch_limit(value: int) -> str | None:
    if 1024 <= value <= 640 * 1024:
        return None
    return f"must be 1024-655360 bytes (Twisted PB refuses larger strings), got {value}"


def _one_of(*choices: str):
    def checker(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"

    return checker


@dataclass(kw_only=True)
class Listen(Located):
    port: int = check(_port)
    bind: str = "127.0.0.1"

    @property
    def strport(self) -> str:
        return f"tcp:{self.port}:interface={self.bind}"


@dataclass(kw_only=True)
class Web(Listen):
    port: int = check(_port, default=8010)
    url: str | None = None  # public URL; default http://<bind>:<port>/

    @property
    def buildbot_url(self) -> str:
        return self.url or f"http://{self.bind}:{self.port}/"


@dataclass(kw_only=True)
class WorkerPort(Listen):
    port: int = check(_port, default=9989)


@dataclass(kw_only=True)
class Repository(Located):
    url: str  # the repository the gate watches and pushes to (a path or URL)
    staging: str = "staging"
    master: str = "master"
    poll_interval: int = check(_positive, default=60)
    webhook_secret: str | None = None  # secret name; when set, webhooks must be signed
    git_credentials_secret: str | None = None  # secret name of a git credential line


@dataclass(kw_only=True)
class Gate(Located):
    """Knobs of the gate policy (schedulers/policy.py)."""

    confirm_runs: int | None = check(_non_negative, default=None)  # None: derive from rates below
    target_false_blame: float = check(_fraction, default=0.001)
    prior_flake_rate: float = check(_fraction, default=0.02)
    bisect_failed_tests_only: bool = True
    culprit_action: str = check(_one_of("hold", "revert"), default="hold")
    max_inconclusive_retries: int = check(_non_negative, default=2)
    speculate: bool = True
    # load-adaptive batching (schedulers/policy.py PolicyConfig.batch_load): when arrivals x mean
    # run time / pools reaches this, a new tip run waits for a bigger batch; 0: off
    batch_load: float = check(_non_negative, default=1.2)
    # a suspect is blamed on one failure in a run restricted to the failing tests once the
    # gate's record says such runs of that test flake at most ``target_false_blame`` of the time
    # (schedulers/policy.py PolicyConfig.learn_flake_rates; docs/gate.md "Confirmation")
    learn_flake_rates: bool = True

    def confirmations(self, observed_flake_rate: float | None = None) -> int:
        """Re-runs needed so an innocent suspect is blamed with probability <= target.

        The suspect is blamed after its own failing bisection run and x more failures; were it
        innocent, all 1 + x would be flakes: f^(1+x) <= eps, so x = ceil(ln eps / ln f) - 1
        (the flake-aware culprit finding verifier formula, counting the run that made it the
        suspect), at least 1.
        """
        if self.confirm_runs is not None:
            return self.confirm_runs
        f = observed_flake_rate if observed_flake_rate else self.prior_flake_rate
        f = min(max(f, 1e-6), 0.5)
        # round first: ln(eps)/ln(f) is an exact integer when eps is a power of f (0.01, 0.1)
        return max(1, math.ceil(round(math.log(self.target_false_blame) / math.log(f), 9)) - 1)


@dataclass(kw_only=True)
class Pools(Located):
    """Pool health: quarantine after consecutive infrastructure failures; a pool whose worker
    stays disconnected takes no gate run until it is back."""

    quarantine_after: int = check(_positive, default=3)
    offline_after: int = check(_positive, default=600)  # s a pool's worker may be disconnected


@dataclass(kw_only=True)
class Provisioning(Located):
    install_timeout: int = check(_positive, default=3600)  # seconds per host
    ipmi_timeout: int = check(_positive, default=10)  # seconds per IPMI call
    ipmi_retries: int = check(_non_negative, default=3)
    ipmi_concurrency: int = check(_positive, default=64)  # >= hosts powered at once: one wave
    keep_hosts_on_failure: bool = False
    reuse_pool: bool = False  # re-deploy only the management server after a passing run
    # ProvisionPool/TeardownPool (steps/provision.py), docs/configuration.md
    enabled: bool | None = None  # None: on when bvt.mode is cloudstack, off in demo mode
    ipmi_backoff: float = check(_positive, default=0.5)  # seconds before the 2nd try; doubles
    # seconds a logged-in IPMI session is reused for the next call to the same BMC (0: never)
    ipmi_session_reuse: float = check(_non_negative, default=20.0)
    install_poll_interval: float = check(_positive, default=2.0)  # seconds between install checks
    cobbler_timeout: int = check(_positive, default=30)  # seconds per Cobbler API call

    def active(self, bvt_mode: str) -> bool:
        """Whether BVT builds provision (and tear down) their pool."""
        return self.enabled if self.enabled is not None else bvt_mode == "cloudstack"


@dataclass(kw_only=True)
class Mail(Located):
    relayhost: str = "127.0.0.1"
    port: int = check(_port, default=25)
    fromaddr: str = "qacloud@localhost"
    to: list[str] = field(default_factory=list)  # the list (dev@, qa@)
    user: str | None = None
    password_secret: str | None = None
    use_tls: bool = False
    mail_authors: bool = True


@dataclass(kw_only=True)
class GitHub(Located):
    repository: str  # owner/name
    token_secret: str
    context: str = "qacloud/bvt"
    base_url: str | None = None


@dataclass(kw_only=True)
class Reporters(Located):
    mail: Mail | None = None
    github: GitHub | None = None


@dataclass(kw_only=True)
class User(Located):
    name: str
    password_secret: str
    roles: list[str] = field(default_factory=list)  # admins, qa, developers
    email: str | None = None


@dataclass(kw_only=True)
class Try(Located):
    enabled: bool = True
    port: int = check(_port, default=8031)
    bind: str = "127.0.0.1"
    users: list[str] = field(default_factory=list)  # user names allowed to try (from 'users')
    # patches above this are rejected before any build (PB itself cannot carry > 640 KiB)
    max_patch_bytes: int = check(_patch_limit, default=512 * 1024)
    # gate runs go first, also against a running try build: stop it (RETRY, queued again) when
    # the gate needs its pool for a bisection, confirmation or retry, or for a tip run with no
    # other gate run in flight (schedulers/policy.py ``needs_pools``)
    preempt: bool = True


@dataclass(kw_only=True)
class Bvt(Located):
    """What a BVT run executes after provisioning."""

    mode: str = check(_one_of("cloudstack", "demo"), default="cloudstack")
    command: list[str] = field(default_factory=list)  # demo mode: the project's test command
    tags: list[str] = field(default_factory=lambda: ["advanced", "required_hardware=false"])
    tests: list[str] = field(default_factory=list)  # smoke test files; empty = the whole smoke suite
    timeout: int = check(_positive, default=6 * 3600)
    systemvm_template: str | None = None  # version, 'latest', or None = from the commit's pom.xml
    template_index_url: str | None = None
    # RunMarvin (steps/marvin.py), docs/cloudstack.md
    tests_dir: str = "test/integration/smoke"  # smoke tests, relative to the CloudStack checkout
    rerun_failed: bool = True  # re-run a failed test file once; a pass then = intermittent
    file_timeout: int = check(_positive, default=3600)  # seconds without output per test file
    # CloudStack build, storage and zone (steps/cloudstack.py)
    maven_profiles: list[str] = field(default_factory=lambda: ["developer", "systemvm"])
    build_cache: str = "/srv/qacloud/build-cache"  # on the pool's QA VM: one directory per sha
    package_repo: str = "/srv/qacloud/repo"  # on the QA VM, served to the pool's hosts
    health_timeout: int = check(_positive, default=1800)  # system VMs Running, template Ready
    host_password_secret: str = "host-root"  # root password the management server adds hosts with
    template_base_url: str = "https://download.cloudstack.org/systemvm"


@dataclass(kw_only=True)
class Settings(Located):
    title: str = "qacloud"
    database: str = check(_db, default="sqlite:///state.sqlite")
    www: Web = field(default_factory=Web)
    workers: WorkerPort = field(default_factory=WorkerPort)
    repository: Repository
    inventory: str
    secrets_dir: str
    reporters: Reporters = field(default_factory=Reporters)
    users: list[User] = field(default_factory=list)
    gate: Gate = field(default_factory=Gate)
    pools: Pools = field(default_factory=Pools)
    provisioning: Provisioning = field(default_factory=Provisioning)
    bvt: Bvt = field(default_factory=Bvt)
    try_: Try = field(default_factory=Try, metadata={"key": "try"})
    path: str = field(default="", init=False)

    def resolve(self, p: str) -> Path:
        """A path from the file, made absolute relative to the settings file."""
        path = Path(os.path.expandvars(p)).expanduser()
        return path if path.is_absolute() else (Path(self.path).resolve().parent / path)

    @property
    def inventory_path(self) -> Path:
        return self.resolve(self.inventory)

    @property
    def secrets_path(self) -> Path:
        return self.resolve(self.secrets_dir)

    @property
    def repo_url(self) -> str:
        """Local repository paths are made absolute; URLs are kept."""
        if "://" in self.repository.url or re.match(r"^[\w.-]+@[\w.-]+:", self.repository.url):
            return self.repository.url
        return str(self.resolve(self.repository.url))


def _cross_check(s: Settings, reader: Reader) -> None:
    names = {u.name for u in s.users if ok(u) and ok(u.name)} if ok(s.users) else set()
    for name in s.try_.users if ok(s.try_) and ok(s.try_.users) and ok(s.users) else []:
        if name not in names:
            reader.problems.append(
                Problem(
                    s._file, s.try_.line_of("users"), "try.users", f"unknown user {name!r} (not in 'users')"
                )
            )
    if ok(s.bvt) and s.bvt.mode == "demo" and s.bvt.command == []:
        reader.problems.append(
            Problem(
                s._file, s.bvt.line_of("mode"), "bvt.command", "demo mode needs the project's test command"
            )
        )
    if ok(s.repository) and ok(s.repository.staging) and s.repository.staging == s.repository.master:
        reader.problems.append(
            Problem(
                s._file,
                s.repository.line_of("staging"),
                "repository.staging",
                "staging and master must be different branches",
            )
        )


def settings_path(cli_value: str | None = None) -> Path:
    """--settings, else $QACLOUD_SETTINGS, else the shipped demo settings."""
    return Path(cli_value or os.environ.get(ENV_VAR) or DEMO_SETTINGS)


def load_settings(path: str | Path | None = None) -> Settings:
    p = settings_path(str(path) if path else None)
    s = load_file(Settings, p, _cross_check)
    s.path = str(p)
    return s


__all__ = ["DEMO_SETTINGS", "REPO_ROOT", "ConfigError", "Settings", "load_settings", "settings_path"]
