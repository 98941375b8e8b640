"""STAND-IN for a CloudStack management server's API (tests and the demo only).

A real management server cannot run here (it needs CloudStack's Maven build, MySQL and
hypervisors), so this small HTTP server on 127.0.0.1 answers, at the protocol boundary, the
calls qacloud's zone health check makes on the unauthenticated integration port
(``/client/api?command=...&response=json``): ``listZones``, ``listSystemVms``,
``listTemplates``, ``listApis``. Knobs simulate a slow or broken deployment.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Knobs:
    system_vms_after: float = 0.0  # seconds after start until SSVM/CPVM are Running
    system_vms_never: bool = False  # "system VMs never come up" (stuck in Starting)
    template_ready: bool = True
    zones: int = 1
    calls: list[str] = field(default_factory=list)


class CloudStackStandin:
    """``with CloudStackStandin() as cs: cs.url`` -> http://127.0.0.1:PORT/client/api."""

    def __init__(self, knobs: Knobs | None = None, port: int = 0):
        self.knobs = knobs or Knobs()
        self.started = time.monotonic()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query))
                if u.path != "/client/api" or "command" not in q:
                    self.send_error(404, "not a CloudStack API call")
                    return
                cmd = q["command"]
                standin.knobs.calls.append(cmd)
                body = standin.answer(cmd, q)
                if body is None:
                    self.send_response(432)
                    payload = {f"{cmd.lower()}response": {"errorcode": 432, "errortext": f"unknown {cmd}"}}
                else:
                    self.send_response(200)
                    payload = {f"{cmd.lower()}response": body}
                data = json.dumps(payload).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/client/api"

    def answer(self, cmd: str, q: dict) -> dict | None:
        k = self.knobs
        zones = [
            {"id": f"z{i}", "name": f"zone{i}", "networktype": "Advanced"} for i in range(1, k.zones + 1)
        ]
        if cmd == "listZones":
            return {"count": len(zones), "zone": zones}
        if cmd == "listSystemVms":
            up = not k.system_vms_never and time.monotonic() - self.started >= k.system_vms_after
            state = "Running" if up else "Starting"
            vms = [
                {"id": f"{z['id']}-{t}", "zoneid": z["id"], "systemvmtype": t, "state": state}
                for z in zones
                for t in ("secondarystoragevm", "consoleproxy")
            ]
            return {"count": len(vms), "systemvm": vms}
        if cmd == "listTemplates":
            t = [
                {
                    "id": f"{z['id']}-builtin",
                    "zoneid": z["id"],
                    "templatetype": "BUILTIN",
                    "name": "CentOS 5.5(64-bit) no GUI (KVM)",
                    "isready": k.template_ready,
                }
                for z in zones
            ]
            return {"count": len(t), "template": t}
        if cmd == "listApis":
            return {"count": 3, "api": [{"name": n} for n in ("listZones", "listSystemVms", "listTemplates")]}
        return None

    def __enter__(self) -> CloudStackStandin:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
