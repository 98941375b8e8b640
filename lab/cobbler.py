"""The real Cobbler 3.3.10 daemon on 127.0.0.1 for tests and the demo (simulated lab).

Cobbler hard-codes ``/etc/cobbler``, ``/var/lib/cobbler``, ``/srv/tftpboot``...; it is run in a
private mount namespace whose ``/etc``, ``/var`` and ``/srv`` are overlay mounts with a
writable layer under ``workdir`` (variant B of ../shared/notes/cobbler.md), so the host's
trees are never written. Cobbler lives in its own venv (``var/cobbler-venv``, pinned by
``lab/cobbler-requirements.lock``) because its dependencies must not mix with qacloud's.

cobblerd binds 127.0.0.1 (hard-coded) on the port its settings name (``xmlrpc_port``, written
into the sandbox's ``settings.yaml``: a free port by default, so any number of lab Cobblers can
run side by side) and only answers XML-RPC on ``/`` and ``/RPC2``. Like a real installation,
clients use ``/cobbler_api`` on the HTTP front end, here the small wsgiref server of
``lab/cobbler_svc.py`` (stand-in for Apache + mod_wsgi), which also serves
``/cblr/svc/op/nopxe/system/<name>`` and the other ``/cblr/svc`` endpoints.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COBBLER_VENV = REPO_ROOT / "var" / "cobbler-venv"
COBBLER_LOCK = Path(__file__).resolve().parent / "cobbler-requirements.lock"
SVC_SCRIPT = Path(__file__).resolve().parent / "cobbler_svc.py"
XMLRPC_PORT = 25151  # Cobbler's default ``xmlrpc_port``; pass it explicitly to get it (127.0.0.1 is fixed)
DUMMY_DISTRO = "qacloud-dummy"
PXELINUX_FILES = (Path("/usr/lib/PXELINUX/pxelinux.0"), Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"))

_COLLECTIONS = (
    "distros",
    "images",
    "profiles",
    "repos",
    "systems",
    "mgmtclasses",
    "packages",
    "files",
    "menus",
)
_TRIGGER_OBJECTS = ("distro", "profile", "system", "repo", "mgmtclass", "package", "file", "menu")


class CobblerLabError(RuntimeError):
    """The lab's Cobbler could not be installed, started or seeded (the message says why)."""


def ensure_cobbler_venv(venv: Path = COBBLER_VENV, lock: Path = COBBLER_LOCK) -> Path:
    """Create Cobbler's own venv from the lock file if missing or stale; return its python.

    ``--no-deps``: the lock lists exactly what cobblerd imports (not mod_wsgi, python-ldap,
    pymongo, which the wheel declares but never needs here; see the note, "minimal pip").
    """
    python = venv / "bin" / "python"
    stamp = venv / ".qacloud-lock"
    if python.exists() and stamp.exists() and stamp.read_bytes() == lock.read_bytes():
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        # the main venv's pip installs into Cobbler's venv (no ensurepip needed)
    cmd = [
        sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "--python", str(python),
        "install", "--no-deps", "-r", str(lock),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise CobblerLabError(f"installing Cobbler into {venv} from {lock} failed:\n{p.stdout}{p.stderr}")
    stamp.write_bytes(lock.read_bytes())
    return python


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _purelib(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


# -I: lab/ holds cobbler.py, which would shadow the cobbler package.
# Runs as root in a fresh mount namespace: overlay /etc, /var, /srv, then exec cobblerd.
_IN_NS = """
S=$0
for t in etc var srv; do
  mount -t overlay qacloud-cobbler -o lowerdir=/$t,upperdir=$S/upper/$t,workdir=$S/work/$t /$t || exit 97
done
exec "$@"
"""


class CobblerServer:
    """A real cobblerd (+ its /cblr/svc front end) in a private mount namespace under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        username: str = "qacloud",
        password: str = "",
        token_expiration: int = 3600,
        svc_port: int = 0,
        xmlrpc_port: int = 0,
    ):
        """``svc_port``: the HTTP front end's port (0: a free one), fixed when an inventory names it;
        ``xmlrpc_port``: cobblerd's own port (0: a free one; ``XMLRPC_PORT`` for Cobbler's default).
        """
        self.workdir = Path(workdir).resolve()
        self._wanted_svc_port = svc_port
        self._wanted_xmlrpc_port = xmlrpc_port
        self.xmlrpc_port = 0
        self.username = username
        self._password = password
        self.token_expiration = token_expiration
        self.sandbox = self.workdir / "sandbox"
        self.svc_port = 0
        self._cobblerd: subprocess.Popen | None = None
        self._svc: subprocess.Popen | None = None
        self._logs: list = []

    # -- paths and URLs -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """XML-RPC endpoint, through the HTTP front end as on a real Cobbler server."""
        return f"http://127.0.0.1:{self.svc_port}/cobbler_api"

    @property
    def password(self) -> str:
        """The API password (a secret: tests write it into their secrets directory)."""
        return self._password

    @property
    def xmlrpc_url(self) -> str:
        """cobblerd's own XML-RPC endpoint (no front end); known once started."""
        return f"http://127.0.0.1:{self.xmlrpc_port}/"

    @property
    def svc_url(self) -> str:
        return f"http://127.0.0.1:{self.svc_port}/cblr/svc"

    @property
    def tftpboot(self) -> Path:
        """Host-visible path of what ``sync`` writes (``pxelinux.cfg/01-<mac>``, ``images/``...)."""
        return self.sandbox / "upper" / "srv" / "tftpboot"

    @property
    def log_path(self) -> Path:
        return self.workdir / "cobblerd.log"

    def nopxe_url(self, system: str) -> str:
        return f"{self.svc_url}/op/nopxe/system/{system}"

    # -- life cycle -----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> CobblerServer:
        """Lay out a fresh sandbox, start cobblerd and the svc server; wait until both answer.

        A port picked here (not given) that another process takes before cobblerd binds it is
        replaced by a fresh one (a few attempts); a given port that is in use is an error.
        """
        if os.geteuid() != 0:
            raise CobblerLabError("the lab Cobbler needs root (a private mount namespace with overlays)")
        wanted = (
            ("cobblerd's XML-RPC", self._wanted_xmlrpc_port),
            ("Cobbler's front end", self._wanted_svc_port),
        )
        for name, port in wanted:
            if port and _port_busy(port):
                raise CobblerLabError(f"127.0.0.1:{port} ({name} port) is already in use")
        python = ensure_cobbler_venv()
        auto = not (self._wanted_xmlrpc_port and self._wanted_svc_port)
        for attempt in range(3):
            marks = self._log_marks()
            free = [p for p in _free_ports(3) if p not in (self._wanted_xmlrpc_port, self._wanted_svc_port)]
            self.xmlrpc_port = self._wanted_xmlrpc_port or free[0]
            self.svc_port = self._wanted_svc_port or free[1]
            try:
                return self._start_once(python, timeout)
            except CobblerLabError:
                if not (auto and attempt < 2 and "Address already in use" in self._log_since(marks)):
                    raise
        raise AssertionError("unreachable")

    def _log_files(self) -> tuple[Path, Path]:
        return self.log_path, self.workdir / "svc.log"

    def _log_marks(self) -> list[int]:
        return [f.stat().st_size if f.exists() else 0 for f in self._log_files()]

    def _log_since(self, marks: list[int]) -> str:
        """What cobblerd and the svc server logged after ``marks`` (this attempt only)."""
        out = []
        for f, mark in zip(self._log_files(), marks, strict=True):
            if f.exists():
                with open(f, "rb") as fh:
                    fh.seek(mark)
                    out.append(fh.read().decode(errors="replace"))
        return "\n".join(out)

    def _start_once(self, python: Path, timeout: float) -> CobblerServer:
        cobblerd = python.parent / "cobblerd"
        if self.sandbox.exists():
            shutil.rmtree(self.sandbox)
        self._layout(_purelib(python))
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self._logs.append(log)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        self._cobblerd = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _IN_NS, str(self.sandbox),
             str(cobblerd), "-F"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd="/",
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        self._wait(lambda: xmlrpc.client.ServerProxy(self.xmlrpc_url).ping(), deadline, "cobblerd ping")
        svc_log = open(self.workdir / "svc.log", "ab")
        self._logs.append(svc_log)
        # the svc server must see the namespace's /etc/cobbler: join cobblerd's mount namespace
        ns = ["nsenter", "--target", str(self._cobblerd.pid), "--mount", "--"]
        self._svc = subprocess.Popen(
            [*ns, str(python), "-I", str(SVC_SCRIPT), str(self.svc_port), str(self.xmlrpc_port)],
            stdout=svc_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd="/",
            start_new_session=True,
        )  # fmt: skip
        self._wait(
            lambda: urllib.request.urlopen(f"{self.svc_url}/op/list/what/profiles", timeout=5).status == 200,
            deadline,
            "the /cblr/svc server",
        )
        return self

    def _wait(self, probe, deadline: float, what: str) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            for name, proc in (("cobblerd", self._cobblerd), ("svc server", self._svc)):
                if proc is not None and proc.poll() is not None:
                    self.stop()
                    raise CobblerLabError(f"{name} exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                if probe():
                    return
            except Exception as e:
                last = e
            time.sleep(0.05)
        self.stop()
        raise CobblerLabError(f"timed out waiting for {what} (last error: {last!r}):\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for f in self._log_files():
            if f.exists():
                parts.append(f"--- {f} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(parts)

    @property
    def running(self) -> bool:
        return self._cobblerd is not None and self._cobblerd.poll() is None

    def stop(self) -> None:
        """Kill the svc server and cobblerd; their mount namespace (and overlays) goes with them."""
        for proc in (self._svc, self._cobblerd):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._svc = self._cobblerd = None
        for f in self._logs:
            f.close()
        self._logs.clear()

    def __enter__(self) -> CobblerServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- sandbox layout (the note's step 3, written straight into the overlays' upper layers) --
    def _layout(self, sp: Path) -> None:
        up = self.sandbox / "upper"
        for t in ("etc", "var", "srv"):
            (up / t).mkdir(parents=True, exist_ok=True)
            (self.sandbox / "work" / t).mkdir(parents=True, exist_ok=True)
        etc, lib, www = up / "etc" / "cobbler", up / "var" / "lib" / "cobbler", up / "var" / "www" / "cobbler"
        shutil.copytree(sp / "etc" / "cobbler", etc)
        # xmlrpc_port goes into settings.yaml itself: the wheel's /cblr/svc app reads only that file
        main = etc / "settings.yaml"
        text, n = re.subn(r"(?m)^xmlrpc_port:.*$", f"xmlrpc_port: {self.xmlrpc_port}", main.read_text())
        if n != 1:
            raise CobblerLabError(f"{main}: expected one 'xmlrpc_port:' line to set the port, found {n}")
        main.write_text(text)
        shutil.copytree(sp / "var" / "lib" / "cobbler", lib)
        shutil.copytree(sp / "var" / "www" / "cobbler", www)
        dirs = [up / "var" / "cache" / "cobbler" / "buildiso"]
        dirs += [lib / "collections" / c for c in _COLLECTIONS]
        for o in _TRIGGER_OBJECTS:
            for w in ("add", "delete", "task"):
                dirs += [lib / "triggers" / w / o / "pre", lib / "triggers" / w / o / "post"]
        for d in ("install/pre", "install/post", "install/firstboot", "sync/pre", "sync/post", "change"):
            dirs.append(lib / "triggers" / d)
        dirs += [lib / "loaders", lib / "grub_config/grub/system", lib / "grub_config/grub/system_link"]
        dirs += [up / "var" / "log" / "cobbler" / d for d in ("tasks", "anamon", "kicklog", "syslog")]
        for d in (
            "localmirror",
            "repo_mirror",
            "distro_mirror/config",
            "links",
            "misc",
            "pub",
            "rendered",
            "images",
        ):
            dirs.append(www / d)
        tftp = ("boot", "etc", "grub", "images", "images2", "ppc", "s390x", "pxelinux.cfg", "ipxe")
        dirs += [self.tftpboot / d for d in (*tftp, "grub/system", "grub/system_link")]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        # bootloaders: `sync` copies /var/lib/cobbler/loaders into the TFTP root (cobbler mkloaders)
        for f in PXELINUX_FILES:
            if f.exists():
                shutil.copy2(f, lib / "loaders" / f.name)
        # credentials: only ours (the shipped cobbler/cobbler login is removed)
        digest = hashlib.sha3_512(self._password.encode()).hexdigest()
        (etc / "users.digest").write_text(f"{self.username}:Cobbler:{digest}\n")
        (etc / "users.digest").chmod(0o600)
        (etc / "settings.d" / "zz-qacloud.settings").write_text(
            "# qacloud lab Cobbler (lab/cobbler.py)\n"
            "manage_dhcp: false\nmanage_dhcp_v4: false\nmanage_dns: false\n"
            "restart_dhcp: false\nrestart_dns: false\n"
            f"http_port: {self.svc_port}\n"
            f"xmlrpc_port: {self.xmlrpc_port}\n"
            "pxe_just_once: true\n"
            f"auth_token_expiration: {self.token_expiration}\n"
        )

    # -- seeding --------------------------------------------------------------------------
    def _api(self) -> tuple[xmlrpc.client.ServerProxy, str]:
        api = xmlrpc.client.ServerProxy(self.xmlrpc_url, allow_none=True)
        return api, api.login(self.username, self._password)

    def ensure_profiles(self, names, kernel: Path | None = None, initrd: Path | None = None) -> str:
        """Create (or re-point) the named profiles on one distro; return the distro's name.

        Without ``kernel``/``initrd``, tiny dummy files are used (enough for systems and sync);
        with them (the PXE tier), a distro named after their content is created.
        """
        if kernel is None or initrd is None:
            files = self.workdir / "dummy-distro"
            files.mkdir(parents=True, exist_ok=True)
            kernel, initrd = files / "vmlinuz", files / "initrd.img"
            for f in (kernel, initrd):
                if not f.exists():
                    f.write_bytes(b"qacloud dummy boot file\n" * 64)
            distro = DUMMY_DISTRO
        else:
            h = hashlib.sha256(Path(kernel).read_bytes() + Path(initrd).read_bytes()).hexdigest()[:10]
            distro = f"qacloud-{h}"
        api, tok = self._api()
        if distro not in api.get_item_names("distro"):
            attrs = {"name": distro, "kernel": str(kernel), "initrd": str(initrd), "arch": "x86_64",
                     "breed": "redhat", "os_version": "rhel9"}  # fmt: skip
            api.xapi_object_edit("distro", distro, "add", attrs, tok)
        existing = set(api.get_item_names("profile"))
        for name in names:
            if name in existing:
                if api.get_profile(name).get("distro") != distro:
                    api.xapi_object_edit("profile", name, "edit", {"distro": distro}, tok)
            else:
                attrs = {"name": name, "distro": distro, "autoinstall": "sample.ks"}
                api.xapi_object_edit("profile", name, "add", attrs, tok)
        return distro

    def set_task_trigger(self, task: str, name: str, script: str | None) -> None:
        """Install the executable ``script`` as ``/var/lib/cobbler/triggers/task/<task>/pre/<name>``
        in cobblerd's namespace (``None``: remove it). Cobbler runs it before each ``<task>``
        background task (e.g. ``syncsystems``); a non-zero exit fails the task: tests provoke
        a failing or slow Cobbler task with it."""
        if self._cobblerd is None or self._cobblerd.poll() is not None:
            raise CobblerLabError("set_task_trigger: cobblerd is not running")
        if not re.fullmatch(r"[a-z_]+", task) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise CobblerLabError(f"set_task_trigger: bad task {task!r} or trigger name {name!r}")
        where = f"/var/lib/cobbler/triggers/task/{task}/pre"
        if script is None:
            cmd, data = f"rm -f {where}/{name}", None
        else:
            cmd, data = f"mkdir -p {where} && cat > {where}/{name} && chmod 755 {where}/{name}", script
        ns = ["nsenter", "--target", str(self._cobblerd.pid), "--mount", "--", "sh", "-c", cmd]
        p = subprocess.run(ns, input=data, capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            raise CobblerLabError(f"set_task_trigger {where}/{name}: {p.stderr.strip()}")

    def get_system(self, name: str) -> dict | None:
        """A system as Cobbler stores it, or None (for assertions in tests)."""
        s = xmlrpc.client.ServerProxy(self.xmlrpc_url, allow_none=True).get_system(name)
        return None if s == "~" else s

    def system_names(self) -> list[str]:
        return list(xmlrpc.client.ServerProxy(self.xmlrpc_url).get_item_names("system"))


def main(argv: list[str] | None = None) -> int:
    """``python -m lab.cobbler ensure-venv``: what scripts/bootstrap.sh calls."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["ensure-venv"]:
        print("usage: python -m lab.cobbler ensure-venv", file=sys.stderr)
        return 2
    print(f"Cobbler venv ready: {ensure_cobbler_venv().parent.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
