"""schedulers.gitops against real git repositories (a bare origin with master and staging)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.trial import unittest

from schedulers import gitops
from tests.support.procs import GitProject, git


def _project(tmp) -> tuple[GitProject, list[str]]:
    proj = GitProject.create(tmp, {"README": "x\n"})
    shas = [proj.commit(f"c{i}", {f"f{i}": str(i)}, author=f"Dev{i} <dev{i}@example.org>") for i in range(3)]
    proj.push_staging()
    return proj, shas


def test_candidates_first_parent_oldest_first(tmp_path):
    proj, shas = _project(tmp_path)
    got = gitops.candidates(str(proj.origin), "master", "staging")
    assert got == [(s, f"Dev{i} <dev{i}@example.org>") for i, s in enumerate(shas)]
    assert gitops.candidates(str(proj.origin), "staging", "staging") == []


def test_read_refs_matches_git_for_loose_and_packed_refs_and_defers_otherwise(tmp_path):
    proj, shas = _project(tmp_path)
    repo = str(proj.origin)
    want = [git("rev-parse", r, cwd=proj.origin) for r in ("refs/heads/master", "refs/heads/staging")]
    assert gitops.read_refs(repo, "refs/heads/master", "refs/heads/staging") in (want, None)
    git("pack-refs", "--all", cwd=proj.origin)  # no loose ref files left: packed-refs alone
    assert not (proj.origin / "refs/heads/staging").exists()
    assert gitops.read_refs(repo, "refs/heads/master", "refs/heads/staging") == want
    (proj.origin / "refs/heads/staging").write_text(shas[0] + "\n")  # a loose ref wins over packed
    assert gitops.read_refs(repo, "refs/heads/staging") == [shas[0]]
    (proj.origin / "refs/heads/sym").write_text("ref: refs/heads/master\n")
    assert gitops.read_refs(repo, "refs/heads/master", "refs/heads/sym") is None  # git decides
    assert gitops.read_refs(repo, "refs/heads/missing") is None


class AsyncGit(unittest.TestCase):
    async def _scenario(self, tmp):
        proj, shas = _project(tmp)
        mirror = str(tmp / "mirror.git")
        await gitops.ensure_mirror(reactor, mirror, str(proj.origin))
        m, s = await gitops.fetch(reactor, mirror, "master", "staging")
        assert s == shas[-1]
        cands = await gitops.candidates_async(reactor, mirror, m, s)
        assert [c for c, _ in cands] == shas
        assert await gitops.is_ancestor(reactor, mirror, shas[0], shas[2])
        assert (await gitops.push_master(reactor, mirror, shas[1], "master")).ok
        assert proj.head("master") == shas[1]
        # master moved outside the gate: a plain push of an older commit is rejected, not forced
        assert not (await gitops.push_master(reactor, mirror, shas[0], "master")).ok
        assert proj.head("master") == shas[1]
        revert = await gitops.revert_on_staging(reactor, mirror, shas[2], "staging", "qacloud <gate@x>")
        assert proj.head("staging") == revert
        assert git("show", "-s", "--format=%an", revert, cwd=proj.origin) == "qacloud"
        assert "f2" not in git("ls-tree", "--name-only", revert, cwd=proj.origin).split()
        # a restarted master finds the revert it pushed before it died, and only that one
        assert await gitops.gate_revert_on_staging(reactor, mirror, shas[2]) is None  # not fetched yet
        await gitops.fetch(reactor, mirror, "master", "staging")
        assert await gitops.gate_revert_on_staging(reactor, mirror, shas[2]) == revert
        assert await gitops.gate_revert_on_staging(reactor, mirror, shas[1]) is None

    def test_fetch_push_revert(self):
        tmp = Path(tempfile.mkdtemp(prefix="qacloud-gitops-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        return defer.ensureDeferred(self._scenario(tmp))
