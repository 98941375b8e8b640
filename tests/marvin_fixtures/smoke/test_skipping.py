"""Fixture: a skipped test next to a passing one."""

import unittest

from nose.plugins.attrib import attr


class TestSnapshots(unittest.TestCase):
    @attr(tags=["advanced"], required_hardware="false")
    def test_01_snapshot_root_disk(self):
        self.assertTrue(True)

    @attr(tags=["advanced"], required_hardware="false")
    def test_02_snapshot_on_local_storage(self):
        raise unittest.SkipTest("local storage is not enabled in this zone")
