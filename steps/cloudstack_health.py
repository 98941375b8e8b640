"""Zone health check through the CloudStack API: system VMs Running, built-in template Ready.

The same gate Marvin's ``testSetupSuccess.py`` and Trillian apply after a deployment
(notes/cloudstack.md §1.5). Standard library only: ``steps.cloudstack.HealthCheck`` copies this
file to the pool's QA VM (which can reach the management server's integration port, 8096)
and runs it there::

    python3 cloudstack_health.py --url http://MGMT:8096/client/api --timeout 1800

Exit 0 = healthy, 1 = not healthy before the timeout, 2 = the API never answered. The last
line printed is the reason, naming the management server.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def judge(system_vms: list[dict], templates: list[dict], zones: list[dict]) -> list[str]:
    """What is still missing (empty = healthy)."""
    problems = []
    if not zones:
        problems.append("no zone is deployed")
    for z in zones:
        vms = [v for v in system_vms if v.get("zoneid") == z.get("id")]
        for kind in ("secondarystoragevm", "consoleproxy"):
            states = [v.get("state") for v in vms if v.get("systemvmtype") == kind]
            if "Running" not in states:
                problems.append(f"zone {z.get('name')}: {kind} not Running (states: {states or 'none'})")
        ready = [
            t
            for t in templates
            if t.get("templatetype") == "BUILTIN"
            and t.get("isready")
            and t.get("zoneid") in (None, z.get("id"))
        ]
        if not ready:
            problems.append(f"zone {z.get('name')}: no BUILTIN template is Ready")
    return problems


def call(url: str, command: str, timeout: float, **params: str) -> dict:
    q = urllib.parse.urlencode({"command": command, "response": "json", **params})
    with urllib.request.urlopen(f"{url}?{q}", timeout=timeout) as r:
        body = json.loads(r.read())
    return body.get(f"{command.lower()}response", {})


def check_once(url: str, timeout: float = 30) -> list[str]:
    zones = call(url, "listZones", timeout).get("zone", [])
    vms = call(url, "listSystemVms", timeout).get("systemvm", [])
    templates = call(url, "listTemplates", timeout, templatefilter="all").get("template", [])
    return judge(vms, templates, zones)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="http://MGMT:8096/client/api (integration port)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--interval", type=float, default=10)
    args = ap.parse_args(argv)
    host = urllib.parse.urlsplit(args.url).netloc
    deadline = time.monotonic() + args.timeout
    answered, problems, error = False, ["not checked"], ""
    while True:
        try:
            problems = check_once(args.url)
            answered = True
            print(f"{time.strftime('%H:%M:%S')} {'; '.join(problems) or 'healthy'}", flush=True)
            if not problems:
                print(f"management server {host}: system VMs Running, built-in template Ready")
                return 0
        except (OSError, ValueError) as e:
            error = str(e)
            print(f"{time.strftime('%H:%M:%S')} API at {host} did not answer: {e}", flush=True)
        if time.monotonic() + args.interval > deadline:
            break
        time.sleep(args.interval)
    if not answered:
        print(f"management server {host}: API did not answer within {args.timeout:g}s ({error})")
        return 2
    print(f"management server {host}: not healthy after {args.timeout:g}s: {'; '.join(problems)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
