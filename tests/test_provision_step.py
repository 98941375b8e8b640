"""ProvisionPool/TeardownPool as unit steps (TestBuildStepMixin): bad input is an infra failure."""

from __future__ import annotations

import tempfile
from pathlib import Path

from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import TestBuildStepMixin
from twisted.trial import unittest

from master.inventory import load_inventory
from master.settings import Provisioning
from steps.provision import ProvisionPool, TeardownPool
from tests.support.procs import simple_pool, write_inventory


class ProvisionStepInput(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    def setUp(self):
        self.setup_test_reactor()
        path = write_inventory(
            Path(tempfile.mkdtemp(prefix="qacloud-inv-")) / "inventory.yaml", [simple_pool("pool1", 61)]
        )
        self.inventory = load_inventory(path)
        return self.setup_test_build_step(with_secrets={})

    def test_unknown_pool_is_an_infra_failure(self):
        self.setup_step(ProvisionPool(self.inventory, Provisioning()))
        self.build.setProperty("pool", "nope", "test")
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure", "no pool named 'nope' in " + self.inventory.path + " (pools: pool1)"
        )
        return self.run_step()

    def test_missing_secret_is_an_infra_failure(self):
        self.setup_step(ProvisionPool(self.inventory, Provisioning()))
        self.build.setProperty("pool", "pool1", "test")
        self.expect_outcome(result=FAILURE)
        self.expect_property(
            "infra_failure",
            f"Cobbler at {self.inventory.pool('pool1').cobbler.url}: "
            "secret 'cobbler' is missing from the secrets directory",
        )
        return self.run_step()

    def test_teardown_keeps_hosts_after_a_failure_when_configured(self):
        self.setup_step(TeardownPool(self.inventory, Provisioning(keep_hosts_on_failure=True)))
        self.build.setProperty("pool", "pool1", "test")
        self.build.results = FAILURE
        self.expect_outcome(
            result=SUCCESS, state_string="kept pool1's hosts on for debugging (keep_hosts_on_failure)"
        )
        return self.run_step()
