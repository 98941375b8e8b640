"""git for the gate: list candidates, check ancestry, promote (plain push), revert.

``candidates`` is a plain blocking function (one ``git log`` call, fast on 40,000 commits),
used by the benchmark; the ``*_async`` functions run git through Buildbot's ``run_process``
for the scheduler. Promotion is always a plain push of exactly the tested sha to master:
never ``--force``; a rejected push is reported, never retried by rewriting.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

GIT_TIMEOUT = 300
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1 or SHA-256


class GitError(Exception):
    """A git command failed; the message names the command, the repository and git's error."""


@dataclass(frozen=True)
class PushResult:
    ok: bool
    reason: str = ""  # when not ok: "rejected: master moved", git's error text


def _log_args(master_ref: str, staging_ref: str) -> list[str]:
    # NUL-separated "sha<TAB>author" records; first parent only, oldest first
    return [
        "log",
        "--first-parent",
        "--reverse",
        "--format=%H%x09%an <%ae>%x00",
        f"{master_ref}..{staging_ref}",
    ]


def _parse_log(out: str) -> list[tuple[str, str]]:
    result = []
    for rec in out.split("\0"):
        rec = rec.strip("\n")
        if rec:
            sha, _, author = rec.partition("\t")
            result.append((sha, author))
    return result


def candidates(git_dir: str, master_ref: str, staging_ref: str) -> list[tuple[str, str]]:
    """First-parent commits of staging after master, oldest first, as (sha, author)."""
    p = subprocess.run(
        ["git", "--git-dir", str(git_dir), *_log_args(master_ref, staging_ref)],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
    )
    if p.returncode != 0:
        raise GitError(f"git log {master_ref}..{staging_ref} in {git_dir} failed: {p.stderr.strip()}")
    return _parse_log(p.stdout)


async def _git(
    reactor, git_dir: str | None, *args: str, check: bool = True, env: dict | None = None, cwd=None
):
    from buildbot.util import runprocess

    rc, out, err = await runprocess.run_process(
        reactor,
        ["git", *(["--git-dir", str(git_dir)] if git_dir else []), *args],
        workdir=cwd,
        env=env,
        collect_stdout=True,
        collect_stderr=True,
        runtime_timeout=GIT_TIMEOUT,
    )
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    if check and rc != 0:
        raise GitError(f"git {args[0]} in {git_dir or cwd} failed ({rc}): {err.strip()}")
    return rc, out, err


async def ensure_mirror(reactor, git_dir: str, url: str) -> None:
    """A bare repository at ``git_dir`` with ``origin`` = ``url`` (created once)."""
    import os

    if not os.path.exists(os.path.join(git_dir, "HEAD")):
        rc, _, err = await _git(reactor, git_dir, "init", "--bare", "-q", git_dir, check=False)
        if rc != 0:
            raise GitError(f"cannot create the gate's mirror {git_dir}: {err.strip()}")
    rc, _, _ = await _git(reactor, git_dir, "remote", "get-url", "origin", check=False)
    verb = "set-url" if rc == 0 else "add"
    await _git(reactor, git_dir, "remote", verb, "origin", url)


async def fetch(reactor, git_dir: str, master: str, staging: str) -> tuple[str, str]:
    """Fetch master and staging from origin; return their shas."""
    await _git(
        reactor,
        git_dir,
        "fetch",
        "-q",
        "--prune",
        "origin",
        f"+refs/heads/{master}:refs/gate/master",
        f"+refs/heads/{staging}:refs/gate/staging",
    )
    refs = read_refs(git_dir, "refs/gate/master", "refs/gate/staging")
    if refs is None:  # a symbolic or reftable ref: ask git
        _, out, _ = await _git(reactor, git_dir, "rev-parse", "refs/gate/master", "refs/gate/staging")
        refs = out.split()
    m, s = refs
    return m, s


def read_refs(git_dir: str, *refs: str) -> list[str] | None:
    """The shas of ``refs`` read from the repository's files (loose refs, then packed-refs),
    without starting a git process: one fewer process per poll. None when any ref is not a
    plain sha there (symbolic, a reftable repository, missing): the caller asks git."""
    packed: dict[str, str] | None = None
    out = []
    for ref in refs:
        try:
            with open(os.path.join(git_dir, ref), encoding="ascii") as f:
                value = f.read().strip()
        except (OSError, UnicodeDecodeError):
            if packed is None:
                packed = {}
                try:
                    with open(os.path.join(git_dir, "packed-refs"), encoding="ascii") as f:
                        for line in f:
                            parts = line.split()
                            if len(parts) == 2 and not line.startswith(("#", "^")):
                                packed[parts[1]] = parts[0]
                except (OSError, UnicodeDecodeError):
                    pass
            value = packed.get(ref, "")
        if not _SHA.fullmatch(value):
            return None
        out.append(value)
    return out


async def candidates_async(reactor, git_dir: str, master_ref: str, staging_ref: str) -> list[tuple[str, str]]:
    _, out, _ = await _git(reactor, git_dir, *_log_args(master_ref, staging_ref))
    return _parse_log(out)


async def is_ancestor(reactor, git_dir: str, older: str, newer: str) -> bool:
    rc, _, err = await _git(reactor, git_dir, "merge-base", "--is-ancestor", older, newer, check=False)
    if rc not in (0, 1):
        raise GitError(f"git merge-base --is-ancestor {older[:12]} {newer[:12]} failed: {err.strip()}")
    return rc == 0


async def push_master(reactor, git_dir: str, sha: str, master: str) -> PushResult:
    """Plain (never forced) push of exactly ``sha`` to master."""
    rc, _, err = await _git(
        reactor, git_dir, "push", "-q", "origin", f"{sha}:refs/heads/{master}", check=False
    )
    if rc == 0:
        return PushResult(True)
    text = err.strip()
    if "non-fast-forward" in text or "fetch first" in text:
        return PushResult(False, f"rejected: master moved ({text.splitlines()[-1] if text else ''})")
    if "remote rejected" in text or "rejected" in text:
        # refused by the origin itself (a hook, a protected branch): say why, in git's words
        said = [ln.removeprefix("remote:").strip() for ln in text.splitlines() if ln.startswith("remote:")]
        why = [ln.strip() for ln in text.splitlines() if "rejected" in ln]
        return PushResult(False, "rejected by the origin: " + "; ".join([*filter(None, said), *why]))
    return PushResult(False, text or f"git push exited {rc}")


def revert_subject(culprit: str) -> str:
    """The subject of the gate's revert of ``culprit``."""
    return f"Revert {culprit[:12]}: blamed by the qacloud gate for breaking the BVT"


async def gate_revert_on_staging(reactor, git_dir: str, culprit: str) -> str | None:
    """The gate's revert of ``culprit`` already on the fetched staging (after the culprit), or None."""
    _, out, _ = await _git(
        reactor,
        git_dir,
        "log",
        "--format=%H",
        "--fixed-strings",
        f"--grep={revert_subject(culprit)}",
        f"{culprit}..refs/gate/staging",
    )
    shas = out.split()
    return shas[0] if shas else None


async def revert_on_staging(reactor, git_dir: str, culprit: str, staging: str, author: str) -> str:
    """Commit a revert of ``culprit`` on top of the fetched staging (authored by the gate) in
    a temporary worktree of the mirror, and push it to staging (plain push). Returns its sha."""
    import os
    import shutil
    import tempfile

    _, tip, _ = await _git(reactor, git_dir, "rev-parse", "refs/gate/staging")
    name, _, email = author.partition(" <")
    ident = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">")}
    ident |= {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email.rstrip(">")}
    env = {**os.environ, **ident}
    wt = tempfile.mkdtemp(prefix="gate-revert-")
    try:
        await _git(reactor, git_dir, "worktree", "add", "-q", "--detach", wt, tip.strip())
        msg = revert_subject(culprit)
        await _git(reactor, None, "revert", "--no-edit", culprit, env=env, cwd=wt)
        await _git(reactor, None, "commit", "--amend", "-q", "-m", msg, env=env, cwd=wt)
        _, sha, _ = await _git(reactor, None, "rev-parse", "HEAD", cwd=wt)
        sha = sha.strip()
    finally:
        await _git(reactor, git_dir, "worktree", "remove", "--force", wt, check=False)
        shutil.rmtree(wt, ignore_errors=True)
    rc, _, err = await _git(
        reactor, git_dir, "push", "-q", "origin", f"{sha}:refs/heads/{staging}", check=False
    )
    if rc != 0:
        raise GitError(f"pushing the revert of {culprit[:12]} to {staging} failed: {err.strip()}")
    return sha
