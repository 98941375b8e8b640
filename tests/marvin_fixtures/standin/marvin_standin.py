"""STAND-IN for CloudStack Marvin's nose plugin (``marvin.marvinPlugin.MarvinPlugin``).

Real Marvin is built from ``tools/marvin`` of a CloudStack tree (Maven: apidoc, codegenerator,
sdist) and cannot be installed here; it is also NOT the unrelated PyPI package ``marvin``. This
stand-in registers under the same plugin name (``--with-marvin``), accepts Marvin's options
(``--marvin-config``, ``--zone``, ``--hypervisor``, ``--log-folder-path``, ``--deploy``) and,
like Marvin, injects the parsed configuration into each test class as ``cls.config`` so the
fixture tests can reach the "management server" named in it. It makes no API calls itself.
"""

from __future__ import annotations

import json
import os

from nose.plugins import Plugin


class MarvinStandinPlugin(Plugin):
    name = "marvin"

    def options(self, parser, env):
        super().options(parser, env)
        parser.add_option("--marvin-config", dest="marvin_config", default=env.get("MARVIN_CONFIG"))
        parser.add_option("--zone", dest="zone", default=None)
        parser.add_option("--hypervisor", dest="hypervisor", default=None)
        parser.add_option("--log-folder-path", dest="log_folder_path", default=None)
        parser.add_option("--deploy", dest="deploy", action="store_true", default=False)

    def configure(self, options, conf):
        super().configure(options, conf)
        if not self.enabled:
            return
        if not options.marvin_config or not os.path.exists(options.marvin_config):
            raise SystemExit(f"Marvin Init Failed: config file {options.marvin_config!r} not found")
        with open(options.marvin_config) as f:
            self.config = json.load(f)
        self.config["_zone"], self.config["_hypervisor"] = options.zone, options.hypervisor

    def prepareTestCase(self, test):
        cls = type(getattr(test, "test", test))
        cls.config = self.config
