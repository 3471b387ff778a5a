"""A small SOAP "CRM" for the soap connector tests, built with spyne and served over HTTP.

Run as a script (the test suite starts it in a subprocess, which keeps spyne's
import-time warnings out of the test process)::

    python crm_server.py            # prints "PORT <n>" once it listens on 127.0.0.1

Operations (SOAP 1.1 at ``/soap``, the same service as SOAP 1.2 at ``/soap12``):

* ``CreateCustomer(id, name, email) -> CustomerRef``: a ``Client.Validation``
  fault (with a detail) for an email without ``@`` or an empty name; names
  steer failures: ``flaky`` faults ``Server.Busy`` on the first two attempts
  per id, ``down`` always faults ``Server.Unavailable``, ``slow`` answers
  after 3 s, ``echo`` faults ``Client.Rejected`` with the whole request
  (security header included) in the fault string, as careless servers do.
* ``GetCustomer(id) -> Customer``: ``Client.NotFound`` for an unknown id.

Every call needs a WS-Security UsernameToken (PasswordText or PasswordDigest)
for the user ``crm-user`` with the password in ``$CRM_PASSWORD``; otherwise
``Client.Authentication``.

Plain HTTP endpoints: ``GET /_state`` (JSON: ids received in order, customers),
``POST /_reset``, ``/unavailable`` (503 with Retry-After and an HTML page),
``/missing`` (404).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
import warnings
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# spyne 2.14 (its latest release) warns on import: the vendored `six` importer lacks find_spec/exec_module,
# and it imports the deprecated `cgi` module. Both are spyne's, not ours; silence exactly those.
warnings.filterwarnings("ignore", message=r"_SixMetaPathImporter\.(find_spec|exec_module)\(\) not found",
                        category=ImportWarning)
warnings.filterwarnings("ignore", message=r"'cgi' is deprecated", category=DeprecationWarning)

from lxml import etree  # noqa: E402
from spyne import Application, ComplexModel, Fault, ServiceBase, Unicode, rpc  # noqa: E402
from spyne.protocol.soap import Soap11, Soap12  # noqa: E402
from spyne.server.wsgi import WsgiApplication  # noqa: E402

TNS = "urn:seamline:test:crm"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
USER = "crm-user"
PASSWORD = os.environ.get("CRM_PASSWORD", "")

_lock = threading.Lock()
_customers: dict[str, dict[str, str]] = {}
_received: list[str] = []
_attempts: dict[str, int] = {}


class CustomerRef(ComplexModel):
    __namespace__ = TNS
    id = Unicode
    status = Unicode


class Customer(ComplexModel):
    __namespace__ = TNS
    id = Unicode
    name = Unicode
    email = Unicode
    tier = Unicode


def _text(token: etree._Element, name: str, ns: str = WSSE) -> str | None:
    node = token.find(f"{{{ns}}}{name}")
    return None if node is None or node.text is None else node.text.strip()


def _authenticate(ctx: object) -> None:
    doc = ctx.in_document  # type: ignore[attr-defined]
    token = doc.find(f".//{{{WSSE}}}UsernameToken")
    if token is None:
        raise Fault("Client.Authentication", "a WS-Security UsernameToken is required")
    user = _text(token, "Username")
    pw_node = token.find(f"{{{WSSE}}}Password")
    given = "" if pw_node is None or pw_node.text is None else pw_node.text.strip()
    if pw_node is not None and (pw_node.get("Type") or "").endswith("#PasswordDigest"):
        nonce = base64.b64decode(_text(token, "Nonce") or "")
        created = (_text(token, "Created", WSU) or "").encode()
        expected = base64.b64encode(hashlib.sha1(nonce + created + PASSWORD.encode()).digest()).decode()
    else:
        expected = PASSWORD
    if user != USER or not PASSWORD or given != expected:
        raise Fault("Client.Authentication", "authentication failed")


class CrmService(ServiceBase):
    @rpc(Unicode, Unicode, Unicode, _returns=CustomerRef)
    def CreateCustomer(ctx, id, name, email):
        _authenticate(ctx)
        with _lock:
            _attempts[id] = _attempts.get(id, 0) + 1
            attempt = _attempts[id]
        if name == "echo":
            raw = etree.tostring(ctx.in_document).decode()
            raise Fault("Client.Rejected", f"rejected request: {raw}")
        if not name or not email or "@" not in email:
            raise Fault(
                "Client.Validation",
                "email is invalid" if name else "name is required",
                detail={"ValidationError": {"field": "email" if name else "name", "value": email or ""}},
            )
        if name == "flaky" and attempt <= 2:
            raise Fault("Server.Busy", f"busy, attempt {attempt}")
        if name == "down":
            raise Fault("Server.Unavailable", "the CRM database is down")
        if name == "slow":
            time.sleep(3)
        with _lock:
            _customers[id] = {"id": id, "name": name, "email": email, "tier": "gold" if "vip" in name else "basic"}
            _received.append(id)
        return CustomerRef(id=id, status="created")

    @rpc(Unicode, _returns=Customer)
    def GetCustomer(ctx, id):
        _authenticate(ctx)
        with _lock:
            found = _customers.get(id)
        if found is None:
            raise Fault("Client.NotFound", f"no customer {id}")
        return Customer(**found)


def _app(protocol: type) -> WsgiApplication:
    return WsgiApplication(
        Application([CrmService], tns=TNS, name="Crm", in_protocol=protocol(), out_protocol=protocol())
    )


SOAP11 = _app(Soap11)
SOAP12 = _app(Soap12)


def app(environ: dict, start_response: object) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/soap":
        return SOAP11(environ, start_response)
    if path == "/soap12":
        return SOAP12(environ, start_response)
    if path == "/_state":
        with _lock:
            body = json.dumps({"received": list(_received), "customers": dict(_customers)}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])  # type: ignore[operator]
        return [body]
    if path == "/_reset":
        with _lock:
            _customers.clear()
            _received.clear()
            _attempts.clear()
        start_response("204 No Content", [])  # type: ignore[operator]
        return []
    if path == "/unavailable":
        start_response(  # type: ignore[operator]
            "503 Service Unavailable", [("Content-Type", "text/html"), ("Retry-After", "7")]
        )
        return [b"<html><body>maintenance</body></html>"]
    start_response("404 Not Found", [("Content-Type", "text/html")])  # type: ignore[operator]
    return [b"<html><body>not here</body></html>"]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64

    def get_request(self) -> tuple[socket.socket, object]:
        conn, addr = super().get_request()
        # wsgiref writes headers and body apart: without this, Nagle and delayed ACKs stall each call ~40 ms
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
