"""Shared pytest fixtures. Each engineer keeps their fixtures in a clearly marked block."""

from __future__ import annotations

import secrets

import pytest

# --- Cobbler (lab/cobbler.py) -------------------------------------------------------------------
# One real cobblerd per test module, on free ports (any number run side by side: parallel test
# runs, the demo, the bench); use ``cobbler_server.url``/``xmlrpc_url``, never a fixed port.
# Profiles every inventory in the tests uses exist; tests that need others call
# ``cobbler_server.ensure_profiles([...])``. Use unique system/pool names per test.

COBBLER_PROFILES = ("qacloud-mgmt", "qacloud-kvm", "qacloud-xen", "qacloud-esxi")


@pytest.fixture(scope="module")
def cobbler_server(tmp_path_factory):
    """The real Cobbler daemon + its /cblr/svc server on 127.0.0.1 (``lab.cobbler.CobblerServer``)."""
    from lab.cobbler import CobblerServer

    server = CobblerServer(tmp_path_factory.mktemp("cobbler"), password=secrets.token_urlsafe(12))
    server.start()
    try:
        server.ensure_profiles(COBBLER_PROFILES)
        yield server
    finally:
        server.stop()


# --- end Cobbler ---------------------------------------------------------------------------------


# --- trial TestCases (Buildbot's step/scheduler harnesses) ---------------------------------------
# ``twisted.trial`` TestCases create their ``mktemp()`` directories relative to the working
# directory: run them in the test's own tmp_path so nothing lands in the checkout.


@pytest.fixture(autouse=True)
def _trial_tests_in_tmp_path(request, tmp_path, monkeypatch):
    from twisted.trial.unittest import SynchronousTestCase

    if isinstance(request.instance, SynchronousTestCase):
        monkeypatch.chdir(tmp_path)
    yield


# --- end trial TestCases -------------------------------------------------------------------------
