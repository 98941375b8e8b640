"""Fixture: the management server named in the Marvin config does not answer."""

import unittest
import urllib.request

from nose.plugins.attrib import attr


class TestListApis(unittest.TestCase):
    @attr(tags=["advanced"], required_hardware="false")
    def test_01_list_apis(self):
        mgt = self.config["mgtSvr"][0]
        url = f"http://{mgt['mgtSvrIp']}:{mgt['port']}/client/api?command=listApis&response=json"
        urllib.request.urlopen(url, timeout=5).read()
