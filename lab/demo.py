"""`make demo`: the lab in a box on 127.0.0.1.

Current scope: prepares the demo's secrets and bare repository, starts the master and one
worker per pool on the demo settings, and prints the web UI URL. `stop` stops them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from lab.secrets import write_secrets
from master.inventory import load_inventory
from master.settings import DEMO_SETTINGS, REPO_ROOT, load_settings

VAR = REPO_ROOT / "var" / "demo"
BIN = Path(sys.executable).parent


def prepare_secrets(settings_file: Path = DEMO_SETTINGS) -> dict[str, str]:
    s = load_settings(settings_file)
    inv = load_inventory(s.inventory_path)
    names = inv.secret_names() | {u.password_secret for u in s.users}
    return write_secrets(s.secrets_path, names)


def _run(*argv: str, **kw) -> None:
    subprocess.run(list(argv), check=True, **kw)


def prepare_repository(path: Path) -> None:
    """A bare `demo-project` with master and staging and a small test suite."""
    if path.exists():
        return
    work = path.parent / "demo-project-work"
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="qacloud demo",
        GIT_AUTHOR_EMAIL="demo@example.org",
        GIT_COMMITTER_NAME="qacloud demo",
        GIT_COMMITTER_EMAIL="demo@example.org",
    )
    _run("git", "init", "-q", "--bare", "-b", "master", str(path))
    _run("git", "init", "-q", "-b", "master", str(work))
    (work / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (work / "test_calc.py").write_text(
        "import unittest\n\nimport calc\n\n\nclass CalcTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n"
    )
    _run("git", "add", "-A", cwd=work, env=env)
    _run("git", "commit", "-q", "-m", "demo-project: initial", cwd=work, env=env)
    _run("git", "push", "-q", str(path), "master", "master:staging", cwd=work, env=env)


def start() -> None:
    s = load_settings(DEMO_SETTINGS)
    inv = load_inventory(s.inventory_path)
    secrets = prepare_secrets()
    prepare_repository(Path(s.repo_url))
    mdir = VAR / "master"
    if not (mdir / "buildbot.tac").exists():
        _run(str(BIN / "qacloud"), "create-master", str(mdir), "--settings", str(DEMO_SETTINGS))
    _run(str(BIN / "buildbot"), "start", str(mdir))
    for p in inv.pools:
        wdir = VAR / "workers" / p.worker
        if not (wdir / "buildbot.tac").exists():
            _run(
                str(BIN / "buildbot-worker"),
                "create-worker",
                "-q",
                str(wdir),
                f"127.0.0.1:{s.workers.port}",
                p.worker,
                secrets[p.worker_secret],
            )
        _run(str(BIN / "buildbot-worker"), "start", str(wdir))
    print(f"qacloud demo: web UI at {s.www.buildbot_url} (stop with `make demo-stop`)")


def stop() -> None:
    for wdir in sorted((VAR / "workers").glob("*")):
        subprocess.run([str(BIN / "buildbot-worker"), "stop", str(wdir)], check=False)
    if (VAR / "master" / "buildbot.tac").exists():
        subprocess.run([str(BIN / "buildbot"), "stop", str(VAR / "master")], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.demo")
    ap.add_argument("action", choices=["run", "stop", "secrets"])
    ns = ap.parse_args(argv)
    if ns.action == "secrets":
        prepare_secrets()
    elif ns.action == "stop":
        stop()
    else:
        start()
        if os.environ.get("CI") != "true":
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
