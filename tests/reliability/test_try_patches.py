"""Bad try patches (issue #9) with the real ``buildbot try`` client against a real master.

A binary patch, a diff of a binary file without its content, a patch above
``try.max_patch_bytes`` and one too big for PB itself are refused before any build; a patch
that does not apply fails at checkout, before any later (provisioning) step. The master stays
healthy and a good try afterwards succeeds.
"""

from __future__ import annotations

import os
import time

from tests.support.procs import GitProject, make_deployment, simple_pool
from tests.test_try import BAD_PATCH, GOOD_PATCH, SUITE, try_client

LIMIT = 64 * 1024  # try.max_patch_bytes for this master


def _big_patch(size: int) -> str:
    lines = [f"+line {i:08d} of a generated file, padding padding padding\n" for i in range(size // 60)]
    head = (
        "diff --git a/big.txt b/big.txt\nnew file mode 100644\n--- /dev/null\n+++ b/big.txt\n"
        f"@@ -0,0 +1,{len(lines)} @@\n"
    )
    return head + "".join(lines)


BINARY_HUNK = """\
diff --git a/logo.png b/logo.png
index 1111111..2222222 100644
Binary files a/logo.png and b/logo.png differ
"""


def test_bad_try_patches_fail_cleanly(tmp_path, reliability):
    t0 = time.monotonic()
    proj = GitProject.create(tmp_path / "repo", SUITE)
    dep = make_deployment(
        tmp_path / "qa",
        str(proj.origin),
        [simple_pool("pool1", 1)],
        extra={"try": {"max_patch_bytes": LIMIT}},
    )
    dep.start()
    outcomes: dict[str, str] = {}
    try:
        dep.wait_workers()
        m = dep.master

        def rejected(name: str, content: bytes, expect: str) -> None:
            f = tmp_path / f"{name}.diff"
            f.write_bytes(content)
            rc, out = try_client(dep, proj, f, extra=["--wait"], timeout=60)
            line = next((x for x in out.splitlines() if x.startswith("try-bvt: ")), "")
            ok = rc == 1 and line.startswith("try-bvt: failure (rejected: ") and expect in line
            ok = ok and m.api("buildsets")["buildsets"] == []  # refused before any build
            outcomes[name] = line if ok else f"FAILED rc={rc}: {out[-600:]}"
            assert ok, out

        rejected("binary", os.urandom(2048) + b"\0" + os.urandom(2048), "binary data, not a text diff")
        rejected("binary file without content", BINARY_HUNK.encode(), "binary file b/logo.png")
        big = _big_patch(LIMIT * 2).encode()
        rejected("huge (over try.max_patch_bytes)", big, f"above the try limit of {LIMIT} bytes")
        rejected("not a diff", b"hello\nworld\n", "not a unified diff")

        # beyond what PB can carry (640 KiB): the stock 4.3 client refuses to send it (Banana's
        # SIZE_LIMIT) and then hangs without a message; nothing reaches the master
        f = tmp_path / "enormous.diff"
        f.write_text(_big_patch(3 * 1024 * 1024))
        rc, out = try_client(dep, proj, f, extra=["--wait"], timeout=8)
        ok = rc != 0 and m.api("buildsets")["buildsets"] == [] and m.api("builders")["builders"]
        how = "exited" if rc is not None else "hung, killed"
        outcomes["enormous (3 MB, over PB's 640 KiB)"] = (
            f"never sent by the client ({how}), master untouched" if ok else f"FAILED: {out[-600:]}"
        )
        assert ok, out

        # a text patch that does not apply: the build fails at checkout, nothing after it runs
        f = tmp_path / "bad.diff"
        f.write_text(BAD_PATCH)
        rc, out = try_client(dep, proj, f, extra=["--wait"])
        (build,) = m.wait_builds_finished(1)
        steps = {s["name"]: s for s in m.api(f"builds/{build['buildid']}/steps")["steps"]}
        names = list(steps)
        later = names[names.index("checkout") + 1 :]
        ok = (
            "try-bvt: failure" in out
            and build["results"] == 2
            and steps["checkout"]["results"] == 2
            and all(steps[n]["started_at"] is None for n in later)
        )
        outcomes["does not apply"] = (
            "failed at checkout, no later step ran" if ok else f"FAILED: {out[-600:]}"
        )
        assert ok, (out, steps)

        # the master is healthy: a good try afterwards succeeds
        f = tmp_path / "good.diff"
        f.write_text(GOOD_PATCH)
        rc, out = try_client(dep, proj, f, extra=["--wait"])
        assert rc == 0 and "try-bvt: success" in out, out
        log = (m.basedir / "twistd.log").read_text()
        assert "try: rejected a patch from user 'alice': the patch is binary data" in log
        assert "Traceback" not in log.split("try: rejected", 1)[1], log[-4000:]
    finally:
        dep.stop()
        survived = sum(1 for v in outcomes.values() if not v.startswith("FAILED"))
        reliability.record(
            "try: binary, huge, non-diff and non-applying patches",
            area="try",
            injected=6,
            survived=survived,
            data_lost=0,
            detail="; ".join(f"{k}: {v}" for k, v in outcomes.items())
            + "; then a good try succeeded on the same master",
            test="test_try_patches.py::test_bad_try_patches_fail_cleanly",
            seconds=time.monotonic() - t0,
        )
