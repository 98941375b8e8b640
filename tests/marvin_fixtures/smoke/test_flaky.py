"""Fixture: fails on its first run and passes when re-run (an intermittent failure)."""

import os
import unittest

from nose.plugins.attrib import attr


class TestFlaky(unittest.TestCase):
    @attr(tags=["advanced"], required_hardware="false")
    def test_01_sometimes(self):
        marker = os.path.join(self.config["logger"]["LogFolderPath"], "flaky-ran-once")
        if not os.path.exists(marker):
            open(marker, "w").close()
            self.fail("first attempt fails (simulated intermittent failure)")
