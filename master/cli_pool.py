"""``qacloud pool release POOL``: return a quarantined pool to service from the command line.

It does what the ``pool-service`` force button does, through the master's REST API: log in as
``--user`` (password read from the secrets directory file named by that user's
``password_secret``, never from the command line), force the ``pool-service`` scheduler with
the pool, and wait for its build. Exit status: 0 released (or was not quarantined), 1 the
build failed, 2 bad input or the master refused or could not be reached.
"""

from __future__ import annotations

import argparse
import base64
import http.cookiejar
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from master.cli import COMMANDS
from master.inventory import load_inventory
from master.settings import ENV_VAR, Settings, load_settings
from master.yamlconf import ConfigError

POOL_SERVICE_SCHEDULER = "pool-service"
SUCCESS = 0


class CliError(Exception):
    """A failure reported as one clear line (exit status 2)."""


@dataclass
class MasterClient:
    """A logged-in session with the master's web server (cookie from ``/auth/login``)."""

    url: str
    timeout: float = 15.0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/") + "/"
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def _open(self, req: urllib.request.Request) -> bytes:
        try:
            with self._opener.open(req, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(f"cannot reach the master at {self.url}: {reason}") from None

    def login(self, user: str, password: str) -> None:
        req = urllib.request.Request(self.url + "auth/login")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        try:
            self._open(req)
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise CliError(
                    f"the master at {self.url} refused the login of {user!r} (HTTP {e.code}):"
                    " check the password in that user's secret file"
                ) from None
            raise CliError(f"login at {self.url}auth/login failed: HTTP {e.code} {e.reason}") from None

    def fetch(self, path: str) -> bytes:
        """GET ``path`` below the master's URL (no login: what anonymous viewers may see)."""
        try:
            return self._open(urllib.request.Request(self.url + path))
        except urllib.error.HTTPError as e:
            raise CliError(f"GET {self.url}{path}: HTTP {e.code} {e.reason}") from None

    def get(self, path: str) -> dict:
        try:
            return json.loads(self._open(urllib.request.Request(self.url + "api/v2/" + path)))
        except urllib.error.HTTPError as e:
            raise CliError(f"GET {self.url}api/v2/{path}: HTTP {e.code} {e.reason}") from None

    def rpc(self, path: str, method: str, params: dict) -> Any:
        body = json.dumps({"id": 1, "jsonrpc": "2.0", "method": method, "params": params}).encode()
        req = urllib.request.Request(self.url + "api/v2/" + path, data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        try:
            return json.loads(self._open(req)).get("result")
        except urllib.error.HTTPError as e:
            raise _rpc_error(e, path) from None


def _rpc_error(e: urllib.error.HTTPError, path: str) -> CliError:
    try:
        err = json.loads(e.read()).get("error")
        detail = err.get("message") if isinstance(err, dict) else err
    except ValueError:
        detail = e.reason
    if e.code == 403:
        return CliError(
            f"not authorized to {path} (HTTP 403): {detail} (roles admins or qa may release pools)"
        )
    return CliError(f"{path}: HTTP {e.code}: {detail}")


def read_password(settings: Settings, user: str) -> str:
    """The web password of ``user`` from the secrets directory (never from the command line)."""
    u = next((x for x in settings.users if x.name == user), None)
    if u is None:
        names = ", ".join(x.name for x in settings.users) or "none"
        raise CliError(f"{settings.path}: unknown user {user!r} (users: {names})")
    f = settings.secrets_path / u.password_secret
    try:
        value = f.read_text().strip()
    except OSError as e:
        raise CliError(f"cannot read the password of {user!r} from {f}: {e.strerror}") from None
    if not value:
        raise CliError(f"the password file of {user!r} is empty: {f}")
    return value


def release(settings: Settings, pool: str, user: str, url: str | None = None, timeout: float = 120) -> dict:
    """Force ``pool-service`` for ``pool`` as ``user``; return the finished build."""
    pools = load_inventory(settings.inventory_path).pool_names
    if pool not in pools:
        raise CliError(f"unknown pool {pool!r} (pools in {settings.inventory_path}: {', '.join(pools)})")
    client = MasterClient(url or settings.www.buildbot_url)
    client.login(user, read_password(settings, user))
    result = client.rpc(
        f"forceschedulers/{POOL_SERVICE_SCHEDULER}",
        "force",
        {"pool": pool, "reason": f"qacloud pool release {pool} (by {user})"},
    )
    try:
        _bsid, brids = result
        brid = next(iter(brids.values()))
    except (TypeError, ValueError, StopIteration, AttributeError):
        raise CliError(f"unexpected answer from the {POOL_SERVICE_SCHEDULER} scheduler: {result!r}") from None
    deadline = time.monotonic() + timeout
    while True:
        builds = client.get(f"builds?buildrequestid={brid}")["builds"]
        done = [b for b in builds if b["complete"]]
        if done:
            b = done[-1]
            url = f"{client.url}#/builders/{b['builderid']}/builds/{b['number']}"
            return {**b, "url": url, "text": _outcome(client, b)}
        if time.monotonic() > deadline:
            raise CliError(
                f"the {POOL_SERVICE_SCHEDULER} build (request {brid}) did not finish in {timeout:g}s"
            )
        time.sleep(0.5)


def _outcome(client: MasterClient, build: dict) -> str:
    """What the release step said (its summary, plus its ``error`` log when it failed)."""
    steps = client.get(f"builds/{build['buildid']}/steps")["steps"]
    step = next((s for s in steps if s["name"] == "release-pool"), steps[-1] if steps else None)
    if step is None:
        return build.get("state_string") or ""
    text = step.get("state_string") or build.get("state_string") or ""
    if build.get("results") != SUCCESS:
        for lg in client.get(f"steps/{step['stepid']}/logs")["logs"]:
            if lg["name"] == "error":
                content = client.get(f"logs/{lg['logid']}/contents")["logchunks"]
                text += ": " + "".join(c["content"] for c in content).strip()
    return text


def add_master_options(p: argparse.ArgumentParser) -> None:
    """``--settings`` and ``--url``: which master a command talks to (``www.url``, else
    ``http://<bind>:<port>/`` of the settings)."""
    p.add_argument("--settings", help=f"settings YAML (default: ${ENV_VAR} or the demo settings)")
    p.add_argument("--url", help="the master's web URL (default: www.url, else http://<bind>:<port>/)")


def talking_to_master(prefix: str, fn: Callable[[], int]) -> int:
    """Run a command that talks to the master: bad settings print their problems, a
    ``CliError`` one line after ``prefix``; both exit with status 2."""
    try:
        return fn()
    except ConfigError as e:
        for p in e.problems:
            print(str(p), file=sys.stderr)
        return 2
    except CliError as e:
        print(f"{prefix}: {e}", file=sys.stderr)
        return 2


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="pool_cmd", required=True, metavar="ACTION")
    r = sub.add_parser(
        "release",
        help="return a quarantined pool to service (admins and qa)",
        description="Force the pool-service scheduler for POOL as USER and wait for the result.",
    )
    r.add_argument("pool", metavar="POOL")
    add_master_options(r)
    r.add_argument("--user", required=True, help="a web user with role admins or qa (from 'users')")
    r.add_argument("--timeout", type=float, default=120, help="seconds to wait for the build (120)")


def cmd_pool(ns: argparse.Namespace) -> int:
    def release_pool() -> int:
        build = release(load_settings(ns.settings), ns.pool, ns.user, ns.url, ns.timeout)
        text = build["text"]
        if build.get("results") == SUCCESS:
            print(f"{text} ({build['url']})")
            return 0
        failed = f"the {POOL_SERVICE_SCHEDULER} build failed: {text} ({build['url']})"
        print(f"qacloud pool release: {failed}", file=sys.stderr)
        return 1

    return talking_to_master("qacloud pool release", release_pool)


COMMANDS["pool"] = ("lab admin commands on pools (release)", _add_arguments, cmd_pool)
