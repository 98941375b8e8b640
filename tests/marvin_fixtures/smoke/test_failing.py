"""Fixture: one pass, one assertion failure, one error raised by the code under test."""

import unittest

from nose.plugins.attrib import attr


class TestVolumes(unittest.TestCase):
    @attr(tags=["advanced"], required_hardware="false")
    def test_01_create_volume(self):
        self.assertTrue(True)

    @attr(tags=["advanced"], required_hardware="false")
    def test_02_resize_volume(self):
        self.assertEqual(10, 20, "volume size after resize")

    @attr(tags=["advanced"], required_hardware="false")
    def test_03_detach_volume(self):
        raise KeyError("virtualmachineid")
