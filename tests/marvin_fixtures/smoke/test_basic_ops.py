"""Fixture: two passing BVT tests and one needing hardware (deselected by the tags)."""

import unittest

from nose.plugins.attrib import attr


class TestBasicOps(unittest.TestCase):
    @attr(tags=["advanced", "smoke"], required_hardware="false")
    def test_01_list_zones(self):
        self.assertEqual(self.config["zones"][0]["networktype"], "Advanced")

    @attr(tags=["advanced"], required_hardware="false")
    def test_02_list_hosts(self):
        self.assertTrue(self.config["zones"][0]["pods"][0]["clusters"][0]["hosts"])

    @attr(tags=["advanced"], required_hardware="true")
    def test_03_needs_hardware(self):
        raise AssertionError("must not be selected with required_hardware=false")
