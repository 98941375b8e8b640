"""Serve Cobbler's ``/cblr/svc/*`` WSGI app and the ``/cobbler_api`` proxy with stdlib wsgiref.

Stand-in for the Apache + mod_wsgi front end of a Cobbler server (lab use only). It runs with
*Cobbler's* venv Python inside cobblerd's private mount namespace (it reads
``/etc/cobbler/settings.yaml``), binds 127.0.0.1 and imports nothing from qacloud.

Usage: ``python cobbler_svc.py PORT XMLRPC_PORT``. ``POST /cobbler_api`` is forwarded to
cobblerd's XML-RPC port, as Apache's ``ProxyPass /cobbler_api`` does; everything else goes to the wheel's
``var/www/cobbler/svc/services.py`` (``nopxe``, ``autoinstall``, ``list``, ``ipxe``, ``trig``...).

Log (stderr): the access log line of every request (written after the answer is sent), and for
each proxied XML-RPC call a ``svc xmlrpc <method>`` line written *before* the answer is sent, so
a caller that got its answer finds its call logged (tests count API calls with it). Only the
method name is logged, never the arguments (``login`` carries the password).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import sysconfig
import urllib.error
import urllib.request
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import yaml


def _load_services():
    path = os.path.join(sysconfig.get_paths()["purelib"], "var/www/cobbler/svc/services.py")
    spec = importlib.util.spec_from_file_location("cobbler_svc_wsgi", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SETTINGS = "/etc/cobbler/settings.yaml"


def _check_port(xmlrpc_port: int) -> None:
    """The wheel's svc app finds cobblerd through ``xmlrpc_port`` in settings.yaml: it must match."""
    with open(SETTINGS) as fh:
        port = yaml.safe_load(fh).get("xmlrpc_port")
    if port != xmlrpc_port:
        sys.exit(f"cobbler_svc: {SETTINGS}: xmlrpc_port is {port!r}, but cobblerd listens on {xmlrpc_port}")


_METHOD = re.compile(rb"<methodName>\s*([A-Za-z0-9_.]{1,100})\s*</methodName>")


def _log_call(body: bytes) -> None:
    m = _METHOD.search(body[:4096])
    method = m.group(1).decode() if m else "?"
    os.write(2, f"svc xmlrpc {method}\n".encode())  # one write(2) to an O_APPEND log: whole lines


def make_app(xmlrpc_port: int):
    services = _load_services()
    xmlrpc = f"http://127.0.0.1:{xmlrpc_port}/"

    def proxy(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        req = urllib.request.Request(xmlrpc, data=body, headers={"Content-Type": "text/xml"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                data, status = r.read(), "200 OK"
        except urllib.error.HTTPError as e:
            data, status = e.read(), f"{e.code} {e.reason}"
        except OSError as e:
            data, status = f"cobblerd at {xmlrpc} is not answering: {e}".encode(), "502 Bad Gateway"
        _log_call(body)
        start_response(status, [("Content-Type", "text/xml"), ("Content-Length", str(len(data)))])
        return [data]

    def app(environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/cobbler_api"):
            return proxy(environ, start_response)
        # mod_wsgi provides REQUEST_URI; wsgiref does not.
        environ.setdefault("REQUEST_URI", environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        return services.application(environ, start_response)

    return app


class _Threaded(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Handler(WSGIRequestHandler):
    def log_message(self, format, *args):
        sys.stderr.write("svc %s\n" % (format % args))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python cobbler_svc.py PORT XMLRPC_PORT")
    port, xmlrpc_port = int(sys.argv[1]), int(sys.argv[2])
    _check_port(xmlrpc_port)
    app = make_app(xmlrpc_port)
    httpd = make_server("127.0.0.1", port, app, server_class=_Threaded, handler_class=_Handler)
    print(f"serving /cblr/svc and /cobbler_api on http://127.0.0.1:{port}/", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
