"""The demo's repository ``demo-project`` and its scripted committers.

A small Python project (``calc.py``) with a unittest suite. The script is three pushes to
``staging``: one good commit; a batch of good commits with one that breaks a test (by a named
author) in the middle; later, that author's fix. The gate must promote the good prefix, name
the breaking commit as the culprit and finally promote the fix.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ALICE = ("Alice Adams", "alice@example.org")
BOB = ("Bob Breaker", "bob@example.org")
CAROL = ("Carol Codd", "carol@example.org")
COMMITTER = ("qacloud demo", "demo@example.org")

_FUNCS = {
    "add": "def add(a, b):\n    return a + b\n",
    "sub": "def sub(a, b):\n    return a - b\n",
    "sub_broken": "def sub(a, b):\n    # faster: no temporary\n    return b - a\n",
    "sub_fixed": "def sub(a, b):\n    # faster: no temporary (and the right way round)\n    return a - b\n",
    "mul": "def mul(a, b):\n    return a * b\n",
    "div": "def div(a, b):\n    if b == 0:\n        raise ZeroDivisionError('div')\n    return a / b\n",
    "neg": "def neg(a):\n    return -a\n",
    "power": "def power(a, b):\n    return a**b\n",
    "mean": "def mean(xs):\n    return sum(xs) / len(xs)\n",
}
_TESTS = {
    "add": "    def test_add(self):\n        self.assertEqual(calc.add(2, 3), 5)\n",
    "sub": "    def test_sub(self):\n        self.assertEqual(calc.sub(7, 3), 4)\n",
    "mul": "    def test_mul(self):\n        self.assertEqual(calc.mul(4, 3), 12)\n",
    "div": "    def test_div(self):\n        self.assertEqual(calc.div(8, 2), 4)\n"
    "\n    def test_div_zero(self):\n        self.assertRaises(ZeroDivisionError, calc.div, 1, 0)\n",
    "neg": "    def test_neg(self):\n        self.assertEqual(calc.neg(5), -5)\n",
    "power": "    def test_power(self):\n        self.assertEqual(calc.power(2, 10), 1024)\n",
    "mean": "    def test_mean(self):\n        self.assertEqual(calc.mean([1, 2, 3]), 2)\n",
}
BROKEN_TEST = "test_calc.CalcTest.test_sub"


def _tree(funcs: list[str], tests: list[str]) -> dict[str, str]:
    calc = '"""demo-project: a tiny calculator (the demo\'s stand-in for CloudStack)."""\n\n\n'
    calc += "\n\n".join(_FUNCS[f] for f in funcs)
    test = "import unittest\n\nimport calc\n\n\nclass CalcTest(unittest.TestCase):\n"
    test += "\n".join(_TESTS[t] for t in tests)
    return {"calc.py": calc, "test_calc.py": test}


@dataclass(frozen=True)
class Commit:
    message: str
    author: tuple[str, str]
    files: dict[str, str]


@dataclass(frozen=True)
class Push:
    """One push of the script: ``name`` for the narration, the commits in order."""

    name: str
    commits: tuple[Commit, ...]


def _steps() -> list[tuple[str, tuple[str, str], list[str], list[str]]]:
    """(message, author, functions, tests) of every scripted commit, in order."""
    base = ["add", "sub"]
    return [
        ("calc: add mul()", ALICE, [*base, "mul"], [*base, "mul"]),
        ("calc: add div() with a zero check", CAROL, [*base, "mul", "div"], [*base, "mul", "div"]),
        ("calc: add neg()", ALICE, [*base, "mul", "div", "neg"], [*base, "mul", "div", "neg"]),
        ("calc: faster sub()", BOB, ["add", "sub_broken", "mul", "div", "neg"], [*base, "mul", "div", "neg"]),
        (
            "calc: add power()",
            CAROL,
            ["add", "sub_broken", "mul", "div", "neg", "power"],
            [*base, "mul", "div", "neg", "power"],
        ),
        (
            "calc: add mean()",
            ALICE,
            ["add", "sub_broken", "mul", "div", "neg", "power", "mean"],
            [*base, "mul", "div", "neg", "power", "mean"],
        ),
        (
            "calc: fix sub() argument order",
            BOB,
            ["add", "sub_fixed", "mul", "div", "neg", "power", "mean"],
            [*base, "mul", "div", "neg", "power", "mean"],
        ),
    ]


def script() -> list[Push]:
    """The committers' script: first push, the batch with the breaking commit, the fix."""
    commits = [Commit(m, a, _tree(f, t)) for m, a, f, t in _steps()]
    return [
        Push("first push: one good commit", (commits[0],)),
        Push("a batch of 5 commits, the 3rd of them breaks test_sub", tuple(commits[1:6])),
        Push("the fix", (commits[6],)),
    ]


CULPRIT_MESSAGE = "calc: faster sub()"
CULPRIT_AUTHOR = f"{BOB[0]} <{BOB[1]}>"


def _git(*args: str, cwd: Path, author: tuple[str, str] = COMMITTER) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME=author[0],
        GIT_AUTHOR_EMAIL=author[1],
        GIT_COMMITTER_NAME=COMMITTER[0],
        GIT_COMMITTER_EMAIL=COMMITTER[1],
    )
    env.pop("GIT_DIR", None)
    p = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout.strip()


@dataclass
class DemoProject:
    """The bare ``demo-project`` (what the gate watches) and a working clone the committers use."""

    origin: Path
    work: Path
    shas: dict[str, str] = field(default_factory=dict)  # commit message -> sha

    @classmethod
    def create(cls, origin: Path) -> DemoProject:
        """A fresh bare repository with ``master`` == ``staging`` at the initial commit."""
        origin = Path(origin)
        work = origin.parent / "demo-project-work"
        for d in (origin, work):
            if d.exists():
                raise FileExistsError(f"{d} already exists (remove the demo's var directory first)")
        origin.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", "--bare", "-b", "master", str(origin), cwd=origin.parent)
        _git("init", "-q", "-b", "staging", str(work), cwd=origin.parent)
        proj = cls(origin, work)
        proj._commit(
            Commit("demo-project: calculator with add() and sub()", COMMITTER, _tree(*[["add", "sub"]] * 2))
        )
        _git("remote", "add", "origin", str(origin), cwd=work)
        _git("push", "-q", "origin", "staging:master", "staging:staging", cwd=work)
        return proj

    def _commit(self, c: Commit) -> str:
        for name, text in c.files.items():
            (self.work / name).write_text(text)
        _git("add", "-A", cwd=self.work)
        _git("commit", "-q", "-m", c.message, cwd=self.work, author=c.author)
        sha = _git("rev-parse", "HEAD", cwd=self.work)
        self.shas[c.message] = sha
        return sha

    def push(self, p: Push) -> list[str]:
        """Commit ``p``'s commits and push them to staging in one push; return their shas."""
        shas = [self._commit(c) for c in p.commits]
        _git("push", "-q", "origin", "HEAD:staging", cwd=self.work)
        return shas

    def head(self, branch: str) -> str:
        return _git("rev-parse", branch, cwd=self.origin)

    def subject(self, sha: str) -> str:
        return _git("log", "-1", "--format=%s (%an)", sha, cwd=self.origin)
