"""The BVT builders' ``Build`` class: Buildbot's, with one start-up race closed.

Buildbot 4.3 pings the worker before a build's first step, then asserts
``workerforbuilder.worker is not None`` (``Build.startBuild``, build.py:486). If the worker
detaches between the ping's answer and that line, the assertion escapes into
``Builder._startBuildFor``'s errback ("this is a serious error") and the build is never
finished: its request stays claimed, the pool's worker stays BUILDING, the gate's run waits
until the master restarts, and a clean shutdown waits for it forever. Here that case ends the
build as ``RETRY``, exactly as Buildbot ends a build whose ping failed, so its request is
re-queued and runs when a worker is back (``RETRY`` is an infrastructure result: never
evidence against a commit).
"""

from __future__ import annotations

from buildbot.process.build import Build
from buildbot.process.results import RETRY
from twisted.internet import defer
from twisted.python import log


class BvtBuild(Build):
    @defer.inlineCallbacks
    def startBuild(self, workerforbuilder):
        try:
            result = yield super().startBuild(workerforbuilder)
        except AssertionError:
            if workerforbuilder.worker is not None or self.finished or self.buildid is None:
                raise
            log.msg(
                f"{self}: worker {self.workername} detached while the build was starting:"
                " ending it as RETRY (its request is re-queued)"
            )
            yield self.buildFinished(["worker", "lost", "while", "starting"], RETRY)
            return None
        return result
