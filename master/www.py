"""Web UI: views, login from secrets, and deny-by-default authorization.

Anonymous users can view everything. Force, stop, rebuild, try and un-quarantine need a
login with the right role; any other control endpoint needs ``admins`` (the final catch-all
rule), so a new endpoint is denied until a rule allows it.
"""

from __future__ import annotations

import hmac
from typing import Any

from buildbot.plugins import util
from buildbot.www.auth import CustomAuth
from buildbot.www.authz.endpointmatchers import EndpointMatcherBase, Match
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer

from master.settings import Settings

ADMINS = "admins"
QA = "qa"  # lab engineers: may force/stop/rebuild and return pools to service
DEVELOPERS = "developers"  # may rebuild their own and submit try jobs


class SecretsUserAuth(CustomAuth):
    """HTTP basic login whose passwords live in the Buildbot secrets provider.

    The file names a secret per user, never the password; the secret is fetched at login.
    """

    def __init__(self, users: dict[str, str], **kwargs: Any):
        self.user_secrets = dict(users)
        super().__init__(**kwargs)

    def check_credentials(self, username: bytes, password: bytes) -> bool:  # pragma: no cover
        raise NotImplementedError("requestAvatarId is asynchronous")

    @defer.inlineCallbacks
    def requestAvatarId(self, cred: Any):
        username = cred.username.decode("utf-8", "replace")
        name = self.user_secrets.get(username)
        details = (yield self.master.secrets_manager.get(name)) if name else None
        expected = details.value if details is not None else None
        given = cred.password if isinstance(cred.password, bytes) else str(cred.password).encode()
        if expected and hmac.compare_digest(expected.encode(), given):
            return cred.username
        raise UnauthorizedLogin()


class PoolControlEndpointMatcher(EndpointMatcherBase):
    """Pausing (quarantining) and unpausing (returning to service) a pool's worker."""

    def match_WorkerEndpoint_pause(self, epobject: Any, epdict: dict, options: dict):
        return defer.succeed(Match(self.master))

    def match_WorkerEndpoint_unpause(self, epobject: Any, epdict: dict, options: dict):
        return defer.succeed(Match(self.master))


def authz(settings: Settings) -> util.Authz:
    by_role: dict[str, list[str]] = {}
    for u in settings.users:
        for r in u.roles:
            by_role.setdefault(r, []).append(u.name)
    role_matchers = [
        util.RolesFromUsername(roles=[r], usernames=names) for r, names in sorted(by_role.items())
    ]
    # the owner of a build (its requester, e.g. a try submitter) may stop and rebuild it
    role_matchers.append(util.RolesFromOwner(role="owner"))
    rules = []
    for matcher in (
        util.ForceBuildEndpointMatcher,
        util.StopBuildEndpointMatcher,
        util.RebuildBuildEndpointMatcher,
    ):
        rules += [
            matcher(role=ADMINS, defaultDeny=False),
            matcher(role=QA, defaultDeny=False),
        ]
    rules += [
        PoolControlEndpointMatcher(role=ADMINS, defaultDeny=False),
        PoolControlEndpointMatcher(role=QA, defaultDeny=True),
        util.StopBuildEndpointMatcher(role="owner", defaultDeny=False),
        util.RebuildBuildEndpointMatcher(role="owner", defaultDeny=True),
        util.StopBuildEndpointMatcher(role="owner", defaultDeny=True),
        util.ForceBuildEndpointMatcher(role=ADMINS, defaultDeny=True),
        # deny by default: every other control endpoint needs an admin
        util.AnyControlEndpointMatcher(role=ADMINS),
    ]
    return util.Authz(allowRules=rules, roleMatchers=role_matchers)


def www_config(settings: Settings, dashboards: list[dict] | None = None) -> dict:
    plugins: dict[str, Any] = {"waterfall_view": {}, "console_view": {}, "grid_view": {}}
    if dashboards:
        plugins["wsgi_dashboards"] = dashboards
    cfg: dict[str, Any] = {
        "port": settings.www.strport,
        "plugins": plugins,
        "authz": authz(settings),
        "change_hook_dialects": {},
    }
    if settings.users:
        cfg["auth"] = SecretsUserAuth({u.name: u.password_secret for u in settings.users})
    return cfg
