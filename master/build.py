"""The BVT builders' ``Build`` class: Buildbot's, with two start-up races closed.

Buildbot 4.3 pings the worker before a build's first step, then asserts
``workerforbuilder.worker is not None`` (``Build.startBuild``, build.py:486). If the worker
detaches between the ping's answer and that line, the assertion escapes into
``Builder._startBuildFor``'s errback ("this is a serious error") and the build is never
finished: its request stays claimed, the pool's worker stays BUILDING, the gate's run waits
until the master restarts, and a clean shutdown waits for it forever. Here that case ends the
build as ``RETRY``, exactly as Buildbot ends a build whose ping failed, so its request is
re-queued and runs when a worker is back (``RETRY`` is an infrastructure result: never
evidence against a commit).

The second window is earlier: a worker that detaches after the build was given to it but
before Buildbot prepares it (``workerforbuilder.worker`` already None) makes
``Build.buildPreparationFailure`` call ``putInQuarantine`` on None; the AttributeError escapes
the same way and the build hangs. Here the preparation step ends as RETRY ("worker lost while
worker_prepare") and Buildbot's own code then finishes the build as RETRY ("worker not
available").
"""

from __future__ import annotations

from buildbot.process.build import Build
from buildbot.process.results import RETRY
from twisted.internet import defer
from twisted.python import failure, log


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

    @defer.inlineCallbacks
    def buildPreparationFailure(self, why, state_string):
        wfb = self.workerforbuilder
        if self.stopped or wfb is None or wfb.worker is not None:
            yield super().buildPreparationFailure(why, state_string)
            return
        log.msg(f"{self}: worker {self.workername} detached before the build started ({state_string})")
        if isinstance(why, failure.Failure):
            yield self._preparation_step.addLogWithFailure(why)
        yield self.master.data.updates.setStepStateString(
            self._preparation_step.stepid, f"worker lost while {state_string}"
        )
        yield self.master.data.updates.finishStep(self._preparation_step.stepid, RETRY, False)
