"""The fleet gate: the only door into the SuperLink that hospitals are given.

Flower 1.42 serves every SuperLink API on one HTTP port: the Fleet API that SuperNodes
use and the Control API (``flwr run``, ``flwr supernode register``, ``flwr ls``) alike, so
whoever can reach a SuperNode's address can also register keys and start ServerApps. The
coordinator therefore binds the SuperLink to loopback and puts this gate on the public
address: it forwards the Fleet API's calls (``POST /v1/fleet/<call>``, byte for byte,
SuperNode signatures included) and ``GET /health``, and answers everything else 403. The
control plane stays on the coordinator's host.

Paths are matched exactly (``/v1/fleet/`` and a lower-case call name, no dot, no slash, no
query), so no ``..`` or encoding can turn a forwarded path into a control call; request
bodies are bounded before they are read in full.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

FLEET_CALL = re.compile(r"/v1/fleet/[a-z][a-z-]{0,63}")
"""A Fleet API call's path; nothing else is forwarded but the health check."""
HEALTH = "/health"
MAX_BODY_BYTES = 512 * 2**20  # a Fleet call carries one object of a message: a few MiB
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
    | {"content-length", "proxy-authorization", "proxy-authenticate"}
)
UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=30.0)


def allowed(method: str, path: str, query: str) -> bool:
    """Whether a request may pass: a Fleet API call or the health check, without a query."""
    if query:
        return False
    if method == "POST":
        return FLEET_CALL.fullmatch(path) is not None
    return method == "GET" and path == HEALTH


async def _bounded_body(request: Request) -> bytes | None:
    """The request's body, or ``None`` once it exceeds :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def gate_app(
    upstream: str,
    verify: ssl.SSLContext | bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The gate as an ASGI app forwarding to the SuperLink at ``upstream`` (a base URL).

    Args:
        upstream: e.g. ``https://127.0.0.1:8000``.
        verify: how the SuperLink's certificate is checked (its CA as an SSL context).
        transport: how to reach it (default: the network; tests pass a mock).
    """
    client = httpx.AsyncClient(
        base_url=upstream, verify=verify, timeout=UPSTREAM_TIMEOUT, transport=transport
    )

    async def forward(request: Request) -> Response:
        path, query = request.url.path, request.url.query
        peer = request.client.host if request.client else "?"
        if not allowed(request.method, path, query):
            log.warning("refused %s %s from %s: not a Fleet API call", request.method, path, peer)
            return PlainTextResponse("the fleet gate passes only the Fleet API\n", 403)
        try:
            body = await _bounded_body(request)
        except ClientDisconnect:
            return PlainTextResponse("client went away\n", 400)
        if body is None:
            log.warning("refused %s from %s: body over %d bytes", path, peer, MAX_BODY_BYTES)
            return PlainTextResponse(f"body over {MAX_BODY_BYTES} bytes\n", 413)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            reply = await client.request(request.method, path, content=body, headers=headers)
        except httpx.HTTPError as error:
            log.warning("%s from %s: the SuperLink did not answer (%s)", path, peer, error)
            return PlainTextResponse("the SuperLink did not answer\n", 502)
        kept = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
        kept.pop("content-encoding", None)  # httpx has decoded the body
        return Response(reply.content, reply.status_code, headers=kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client:
            yield

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def serve_gate(
    listen_host: str,
    listen_port: int,
    superlink: str,
    ca_certificate: Path | None,
    certificate: Path | None,
    private_key: Path | None,
) -> None:
    """Serve the gate until interrupted (TLS on both sides unless no certificate is given).

    Args:
        listen_host: the public address hospitals connect to.
        listen_port: its port.
        superlink: the SuperLink's ``HOST:PORT``, normally on 127.0.0.1.
        ca_certificate: the CA that signed the SuperLink's certificate (None: plain HTTP).
        certificate: the gate's certificate, for the public host name (with ``private_key``).
        private_key: the certificate's key.
    """
    import uvicorn

    tls = ca_certificate is not None
    verify: ssl.SSLContext | bool = False
    if ca_certificate is not None:
        verify = ssl.create_default_context(cafile=str(ca_certificate))
    app = gate_app(f"{'https' if tls else 'http'}://{superlink}", verify)
    uvicorn.run(
        app,
        host=listen_host,
        port=listen_port,
        ssl_certfile=str(certificate) if certificate else None,
        ssl_keyfile=str(private_key) if private_key else None,
        log_level="warning",
        access_log=False,
    )
