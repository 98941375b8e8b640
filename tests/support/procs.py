"""Real processes for integration tests: Buildbot master and workers, git repos, PostgreSQL.

Everything binds 127.0.0.1 on free ports and is stopped by the fixture that started it.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy
import yaml

from lab.pools import NO_COBBLER_URL, simple_pool  # noqa: F401  (re-exported: tests import them from here)
from lab.secrets import write_secrets
from master.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:
            last_exc = e
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def run(argv, cwd=None, env=None, check=True, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def git(*args, cwd, env=None, check=True) -> str:
    e = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
        **(env or {}),
    }
    return run(["git", *args], cwd=cwd, env=e, check=check).stdout.strip()


@dataclass
class GitProject:
    """A bare origin with ``master`` and ``staging`` plus a working clone to commit from."""

    origin: Path
    work: Path

    @classmethod
    def create(cls, root: Path, files: dict[str, str]) -> GitProject:
        root.mkdir(parents=True, exist_ok=True)
        origin, work = root / "origin.git", root / "work"
        git("init", "-q", "--bare", "-b", "master", str(origin), cwd=root)
        git("init", "-q", "-b", "master", str(work), cwd=root)
        proj = cls(origin, work)
        proj.commit("initial", files)
        git("remote", "add", "origin", str(origin), cwd=work)
        git("push", "-q", "origin", "master", "master:staging", cwd=work)
        git("checkout", "-q", "-b", "staging", cwd=work)
        return proj

    def commit(self, message: str, files: dict[str, str], author: str = "Test <test@example.org>") -> str:
        for name, text in files.items():
            p = self.work / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            if name.endswith(".sh"):
                p.chmod(0o755)
        git("add", "-A", cwd=self.work)
        name, _, email = author.partition(" <")
        git(
            "commit",
            "-q",
            "-m",
            message,
            cwd=self.work,
            env={"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">")},
        )
        return git("rev-parse", "HEAD", cwd=self.work)

    def push_staging(self) -> None:
        git("push", "-q", "origin", "HEAD:staging", cwd=self.work)

    def head(self, branch: str) -> str:
        return git("rev-parse", branch, cwd=self.origin)


@dataclass
class Postgres:
    """A private PostgreSQL cluster (Debian's binaries) on 127.0.0.1 and a free port.

    Its data directory lives in its own temp dir (pytest's are root-only, and the server
    runs as the ``postgres`` user); ``stop()`` removes it.
    """

    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qacloud-pg-")))

    @staticmethod
    def bindir() -> Path:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not candidates:
            raise AssertionError("PostgreSQL is not installed: run `make test` (it installs postgresql)")
        return candidates[-1].parent

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def start(self) -> str:
        data = self.root / "pgdata"
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        b = self.bindir()
        run(self._as_postgres(str(b / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data)))
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(
            self._as_postgres(
                str(b / "pg_ctl"), "-D", str(data), "-l", str(self.root / "pg.log"), "-w", "-o", opts, "start"
            ),
            timeout=60,
        )
        run(
            self._as_postgres(
                str(b / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "qacloud"
            )
        )
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/qacloud"

    def stop(self) -> None:
        run(
            self._as_postgres(
                str(self.bindir() / "pg_ctl"), "-D", str(self.root / "pgdata"), "-m", "fast", "-w", "stop"
            ),
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_if_alive(pid: int | None, basedir: Path, grace: float) -> None:
    """SIGKILL ``pid`` if it is still alive after ``grace`` seconds (a daemon that did not stop)
    and still the daemon of ``basedir`` (its working directory: never a reused pid)."""
    if not pid:
        return

    def ours() -> bool:
        try:
            return _alive(pid) and os.readlink(f"/proc/{pid}/cwd") == str(basedir.resolve())
        except OSError:
            return False

    deadline = time.monotonic() + grace
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    if ours():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_for(lambda: not _alive(pid), 10, f"process {pid} to die after SIGKILL")


def write_inventory(path: Path, pools: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"lab": "test lab", "pools": pools}, sort_keys=False))
    return path


@dataclass
class Master:
    """A real Buildbot master process (``buildbot start``) for given settings."""

    basedir: Path
    settings: Path
    web_port: int
    secrets: dict[str, str]
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    def _env(self) -> dict:
        return dict(os.environ, QACLOUD_SETTINGS=str(self.settings), **self.env)

    def create(self) -> None:
        run(
            [str(BIN / "qacloud"), "create-master", str(self.basedir), "--settings", str(self.settings)],
            env=self._env(),
            timeout=180,
        )

    def start(self) -> None:
        p = run(
            [str(BIN / "buildbot"), "start", str(self.basedir)], env=self._env(), check=False, timeout=180
        )
        if p.returncode != 0:
            raise AssertionError(f"master failed to start:\n{p.stdout}\n{p.stderr}\n{self.log_tail()}")
        wait_for(lambda: self.api("workers") is not None, 30, "the master's REST API")

    def pid(self) -> int | None:
        f = self.basedir / "twistd.pid"
        return int(f.read_text()) if f.exists() else None

    def stop(self) -> None:
        """``buildbot stop``; a master still running after it is killed (a clean shutdown can
        wait forever for a wedged build, as Buildbot 4.3's start-up race did before
        master/build.py), so no test leaves a daemon behind."""
        pid = self.pid()
        run([str(BIN / "buildbot"), "stop", str(self.basedir)], env=self._env(), check=False, timeout=120)
        _kill_if_alive(pid, self.basedir, grace=5)

    def kill(self) -> None:
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: not _alive(pid), 10, "the master to die")
            (self.basedir / "twistd.pid").unlink(missing_ok=True)

    def log_tail(self, n: int = 80) -> str:
        f = self.basedir / "twistd.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-n:]) if f.exists() else "(no twistd.log)"

    def opener(self, user: str | None = None, password: str | None = None):
        """A URL opener; with a user, logged in through /auth/login (session cookie)."""
        if user is None:
            return urllib.request.build_opener()
        jar = http.cookiejar.CookieJar()
        op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        pw = password if password is not None else self.secrets[f"user-{user}"]
        req = urllib.request.Request(self.url + "auth/login")
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        op.open(req, timeout=10).read()
        return op

    def _request(self, path: str, data=None, user: str | None = None, method=None):
        req = urllib.request.Request(self.url + "api/v2/" + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        return self.opener(user).open(req, timeout=10)

    def api(self, path: str, user: str | None = None) -> dict:
        with self._request(path, user=user) as r:
            return json.loads(r.read())

    def rpc(self, path: str, method: str, params: dict, user: str | None = None) -> tuple[int, dict]:
        """JSON-RPC control call; returns (HTTP status, body)."""
        body = json.dumps({"id": 1, "jsonrpc": "2.0", "method": method, "params": params}).encode()
        try:
            with self._request(path, data=body, user=user, method="POST") as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, {"error": text.decode(errors="replace")}

    def builds(self, **filters) -> list[dict]:
        q = "&".join(f"{k}={v}" for k, v in filters.items())
        return self.api("builds" + (f"?{q}" if q else ""))["builds"]

    def force(self, pool: str, reason: str, builder: str = "gate-bvt", user: str = "admin") -> int:
        """Force a BVT build on ``pool`` as ``user`` (through the REST API); returns the builder id."""
        builders = {b["name"]: b["builderid"] for b in self.api("builders")["builders"]}
        args = {"builderid": str(builders[builder]), "pool": pool, "reason": reason}
        status, body = self.rpc("forceschedulers/force", "force", args, user=user)
        assert status == 200, body
        return builders[builder]

    def wait_builds_finished(self, count: int, timeout: float = 120) -> list[dict]:
        def done():
            b = self.builds()
            return b if len([x for x in b if x["complete"]]) >= count else None

        try:
            return wait_for(done, timeout, f"{count} finished builds")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- twistd.log ---\n{self.log_tail()}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@dataclass
class Worker:
    """A real ``buildbot-worker`` process."""

    basedir: Path
    name: str
    password: str
    master_port: int

    def create(self) -> None:
        self.basedir.parent.mkdir(parents=True, exist_ok=True)
        run(
            [
                str(BIN / "buildbot-worker"),
                "create-worker",
                "-q",
                "--umask=0o022",
                str(self.basedir),
                f"127.0.0.1:{self.master_port}",
                self.name,
                self.password,
            ]
        )

    def start(self) -> None:
        pid = self.pid()
        if pid:  # after kill(): the SIGKILLed daemon may still be dying; twistd would refuse to start
            wait_for(lambda: not _alive(pid), 10, "the killed worker to die")
            (self.basedir / "twistd.pid").unlink(missing_ok=True)
        run([str(BIN / "buildbot-worker"), "start", str(self.basedir)], timeout=60)

    def pid(self) -> int | None:
        f = self.basedir / "twistd.pid"
        return int(f.read_text()) if f.exists() else None

    def stop(self) -> None:
        pid = self.pid()
        run([str(BIN / "buildbot-worker"), "stop", str(self.basedir)], check=False, timeout=60)
        _kill_if_alive(pid, self.basedir, grace=5)

    def kill(self) -> None:
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Deployment:
    """Settings + inventory + secrets + a master and one worker per pool, in a temp dir."""

    root: Path
    master: Master
    workers: list[Worker]

    def start(self) -> None:
        self.master.start()
        for w in self.workers:
            w.start()

    def wait_workers(self, timeout: float = 30) -> None:
        names = {w.name for w in self.workers}

        def connected():
            ws = self.master.api("workers")["workers"]
            return all(any(c for c in w["connected_to"]) for w in ws if w["name"] in names)

        wait_for(connected, timeout, "workers to connect")

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.master.stop()


def make_deployment(
    root: Path,
    repo_url: str,
    pools: list[dict],
    extra: dict | None = None,
    database: str | None = None,
    extra_secrets: dict[str, str] | None = None,
) -> Deployment:
    root.mkdir(parents=True, exist_ok=True)
    inv_path = write_inventory(root / "inventory.yaml", pools)
    web, pb, try_port = free_port(), free_port(), free_port()
    settings = {
        "title": "qacloud test",
        "database": database or "sqlite:///state.sqlite",
        "www": {"port": web},
        "workers": {"port": pb},
        "repository": {"url": repo_url, "poll_interval": 1},
        "inventory": str(inv_path),
        "secrets_dir": str(root / "secrets"),
        "users": [
            {"name": "admin", "password_secret": "user-admin", "roles": ["admins"]},
            {
                "name": "alice",
                "password_secret": "user-alice",
                "roles": ["developers"],
                "email": "alice@example.org",
            },
        ],
        "try": {"port": try_port, "users": ["alice", "admin"]},
        "bvt": {"mode": "demo", "command": ["sh", "./run-tests.sh"], "timeout": 120},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    settings_path = root / "settings.yaml"
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    inv = load_inventory(inv_path)
    names = inv.secret_names() | {"user-admin", "user-alice"}
    secret_values = write_secrets(root / "secrets", names, extra_secrets)
    master = Master(root / "master", settings_path, web, secret_values)
    master.create()
    workers = [
        Worker(root / "workers" / p.worker, p.worker, secret_values[p.worker_secret], pb) for p in inv.pools
    ]
    for w in workers:
        w.create()
    return Deployment(root, master, workers)


def gate_builds(dep: Deployment) -> list[dict]:
    """Gate builds over REST, with their gate properties flattened into ``props``."""
    q = "builds?" + "&".join(
        f"property={p}" for p in ("gate_run_id", "gate_kind", "bvt_tests", "revision", "pool")
    )
    out = []
    for b in dep.master.api(q)["builds"]:
        props = {k: v[0] for k, v in (b.get("properties") or {}).items()}
        if props.get("gate_run_id"):
            out.append({**b, "props": props})
    return out


def wait_promoted(dep: Deployment, proj: GitProject, sha: str, timeout: float, what: str) -> None:
    """Wait for origin's master to be ``sha``; on timeout, fail with the master's log tail."""
    try:
        wait_for(lambda: proj.head("master") == sha, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{dep.master.log_tail(80)}") from None


def gate_state(dep: Deployment, key: str = "view") -> dict | None:
    """The gate scheduler's persisted object state ``key`` (SQLite or PostgreSQL)."""
    url = _db_url(dep)
    eng = sqlalchemy.create_engine(url)
    try:
        with eng.connect() as conn:
            row = conn.execute(
                sqlalchemy.text(
                    "SELECT s.value_json FROM object_state s JOIN objects o ON o.id = s.objectid"
                    " WHERE o.name = 'gate' AND o.class_name = 'GateScheduler' AND s.name = :k"
                ),
                {"k": key},
            ).fetchone()
    finally:
        eng.dispose()
    return json.loads(row[0]) if row else None


def _db_url(dep: Deployment) -> str:
    url = yaml.safe_load(dep.master.settings.read_text())["database"]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{dep.master.basedir / url[len('sqlite:///') :]}"
    return url
