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
