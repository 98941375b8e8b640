"""Push webhook: ``POST /change_hook/qacloud`` makes the gate fetch staging now.

An alternative to waiting for the poll (``repository.poll_interval``): a GitHub- or
Gitea-style *push* payload (JSON body, or the form field ``payload``) for
``refs/heads/<repository.staging>`` pokes the gate scheduler (``GateScheduler.poke()``), which
fetches master and staging itself, so the path does not depend on the GitPoller. Pushes to
other refs and non-push events are answered 200 "ignored".

When ``repository.webhook_secret`` names a secret, every request must carry
``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body>`` (Gitea's ``X-Gitea-Signature``,
the bare hex digest, is accepted too), compared in constant time; the value comes from the
Buildbot secrets provider at each request and is never logged. Answers:

* 202 accepted (the gate fetches in the background), 200 ignored,
* 400 malformed payload (names the field), 403 missing or wrong signature,
* 500 the configured secret is missing, 503 the gate is not active on this master.

It is a Buildbot change-hook dialect (``change_hook_dialects`` ``custom_class``) that returns
no Changes: the gate reads the repository itself, and the GitPoller keeps recording Changes.
Buildbot's change-hook resource only knows 202/400/500, so :func:`_respond` writes the answer
and makes the resource's own status and body writes no-ops for that request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from buildbot.www.hooks.base import BaseHookHandler
from twisted.internet import defer
from twisted.python import log

from master.settings import Settings

DIALECT = "qacloud"
GATE_SCHEDULER = "gate"
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class WebhookError(Exception):
    """A request the webhook answers with ``code`` and ``message`` (never a traceback)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Push:
    """The fields of a push payload the gate cares about."""

    ref: str
    after: str
    repository: str
    commits: int


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header value for ``body`` (what the sender computes)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str, body: bytes, hub_header: str | None, gitea_header: str | None = None
) -> None:
    """Raise ``WebhookError(403)`` unless a signature header matches ``body`` under ``secret``."""
    if hub_header:
        given = hub_header.strip()
        if not given.startswith("sha256="):
            raise WebhookError(403, "X-Hub-Signature-256 must be 'sha256=<hex digest>'")
    elif gitea_header:
        given = "sha256=" + gitea_header.strip()
    else:
        raise WebhookError(
            403, "missing signature: X-Hub-Signature-256 is required (repository.webhook_secret is set)"
        )
    if not hmac.compare_digest(sign(secret, body).encode(), given.lower().encode()):
        raise WebhookError(403, "wrong signature: X-Hub-Signature-256 does not match the body")


def parse_push(
    body: bytes, content_type: str = "application/json", form_payload: bytes | None = None
) -> Push:
    """Validate a push payload; ``WebhookError(400)`` names the field that is wrong."""
    raw = form_payload if "application/x-www-form-urlencoded" in content_type else body
    if raw is None:
        raise WebhookError(400, "form-encoded webhook without a 'payload' field")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise WebhookError(400, f"payload is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise WebhookError(400, f"payload must be a JSON object, got {type(data).__name__}")
    ref, after, repo, commits = (data.get(k) for k in ("ref", "after", "repository", "commits"))
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        raise WebhookError(400, f"payload field 'ref': expected 'refs/heads/<branch>', got {ref!r}")
    if not isinstance(after, str) or not _SHA.match(after):
        raise WebhookError(400, f"payload field 'after': expected a commit sha, got {str(after)[:80]!r}")
    if not isinstance(repo, dict):
        raise WebhookError(400, "payload field 'repository': expected an object")
    if not isinstance(commits, list) or not all(isinstance(c, dict) for c in commits):
        raise WebhookError(400, "payload field 'commits': expected a list of objects")
    name = repo.get("full_name") or repo.get("name") or repo.get("clone_url") or repo.get("url") or "?"
    return Push(ref, after, str(name), len(commits))


def dialects(settings: Settings) -> dict[str, dict[str, Any]]:
    """``www['change_hook_dialects']``: the qacloud push dialect at ``/change_hook/qacloud``."""
    repo = settings.repository
    return {DIALECT: {"custom_class": PushHook, "staging": repo.staging, "secret": repo.webhook_secret}}


def _respond(request: Any, code: int, message: str) -> None:
    """Answer ``request`` now and ignore the change-hook resource's later 202 and body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.write(message.encode() + b"\n")
    request.setResponseCode = lambda *a, **kw: None
    request.write = lambda data: None


class PushHook(BaseHookHandler):
    """The ``qacloud`` change-hook dialect (see the module docstring)."""

    def _options(self) -> dict[str, Any]:
        # read at each request: `buildbot reconfig` changes the config, not the cached handler
        www = getattr(getattr(self.master, "config", None), "www", None) or {}
        return (www.get("change_hook_dialects") or {}).get(DIALECT) or self.options or {}

    def getChanges(self, request: Any) -> defer.Deferred:  # type: ignore[override]
        d = defer.ensureDeferred(self._handle(request))

        def answer(result: tuple[int, str]) -> tuple[list, None]:
            _respond(request, *result)
            return [], None

        return d.addCallback(answer)

    async def _handle(self, request: Any) -> tuple[int, str]:
        client = getattr(request.getClientAddress(), "host", "?")
        try:
            code, message = await self._accept(request, client)
        except WebhookError as e:
            log.msg(f"webhook: rejected a request from {client} ({e.code}): {e.message}")
            return e.code, e.message
        log.msg(f"webhook: {message} (from {client})")
        return code, message

    async def _accept(self, request: Any, client: str) -> tuple[int, str]:
        opts = self._options()
        staging = opts.get("staging") or "staging"
        request.content.seek(0)
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise WebhookError(400, f"payload larger than {MAX_BODY} bytes")
        secret_name = opts.get("secret")
        if secret_name:
            details = await self.master.secrets_manager.get(secret_name)
            if details is None or not details.value:
                raise WebhookError(
                    500,
                    f"webhook secret {secret_name!r} (settings repository.webhook_secret) is not in the"
                    " secrets provider: refusing unverified webhooks",
                )
            verify_signature(
                details.value,
                body,
                _header(request, "X-Hub-Signature-256"),
                _header(request, "X-Gitea-Signature"),
            )
        event = _header(request, "X-GitHub-Event") or _header(request, "X-Gitea-Event")
        if event and event != "push":
            return 200, f"ignored: {event!r} event (only push events matter)"
        form = (request.args or {}).get(b"payload")
        push = parse_push(body, _header(request, "Content-Type") or "", form[0] if form else None)
        if push.ref != f"refs/heads/{staging}":
            return 200, f"ignored: push to {push.ref} (the gate watches refs/heads/{staging})"
        if set(push.after) == {"0"}:
            return 200, f"ignored: {staging} was deleted"
        gate = self.master.scheduler_manager.namedServices.get(GATE_SCHEDULER)
        if gate is None or not getattr(gate, "active", False):
            raise WebhookError(
                503, "the gate scheduler is not active on this master; its poll will see the push"
            )
        gate.poke().addErrback(log.err, "webhook: gate fetch failed")
        return 202, (
            f"accepted: push to {staging} at {push.after[:12]} of {push.repository}"
            f" ({push.commits} commit(s)): the gate fetches now"
        )


def _header(request: Any, name: str) -> str | None:
    v = request.getHeader(name)
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
