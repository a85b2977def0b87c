"""The fleet gate passes the Fleet API to the SuperLink and refuses everything else."""

import asyncio

import httpx
import pytest

from server import gate
from server.gate import allowed, gate_app


def _echoing_superlink(seen):
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"reply:" + request.content, headers={"x-up": "1"})

    return httpx.MockTransport(answer)


@pytest.fixture
def upstream():
    seen: list[httpx.Request] = []
    return _client(_echoing_superlink(seen)), seen


def _client(superlink):
    """A synchronous client of the gate (the ASGI app driven in-process)."""
    app = gate_app("http://superlink", transport=superlink)

    class Sync:
        def post(self, path, **kwargs):
            async def call():
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://gate") as c:
                    return await c.post(path, **kwargs)

            return asyncio.run(call())

    return Sync()


@pytest.mark.parametrize(
    ("method", "path", "query", "passes"),
    [
        ("POST", "/v1/fleet/pull-messages", "", True),
        ("POST", "/v1/fleet/push-object", "", True),
        ("GET", "/health", "", True),
        ("POST", "/v1/control/register-node", "", False),
        ("POST", "/v1/control/start-run", "", False),
        ("POST", "/v1/runtime/pull-messages", "", False),
        ("POST", "/v1/fleet/../control/register-node", "", False),
        ("POST", "/v1/fleet/%2e%2e/control/start-run", "", False),
        ("POST", "/v1/fleet/pull-messages/", "", False),
        ("POST", "/v1/fleet/pull-messages", "x=1", False),
        ("GET", "/v1/fleet/pull-messages", "", False),
        ("POST", "/health", "", False),
    ],
)
def test_only_fleet_calls_and_the_health_check_pass(method, path, query, passes):
    assert allowed(method, path, query) is passes


def test_a_fleet_call_reaches_the_superlink_with_its_body_and_signature(upstream):
    client, seen = upstream
    signed = {"flwr-public-key": "a2V5", "flwr-signature": "c2ln", "content-type": "x/proto"}
    reply = client.post("/v1/fleet/send-node-heartbeat", content=b"\x00\x01", headers=signed)
    assert reply.status_code == 200 and reply.content == b"reply:\x00\x01"
    assert reply.headers["x-up"] == "1"
    (request,) = seen
    assert request.url.path == "/v1/fleet/send-node-heartbeat"
    assert request.content == b"\x00\x01"
    assert {k: request.headers[k] for k in signed} == signed


def test_control_calls_are_refused_and_never_reach_the_superlink(upstream):
    client, seen = upstream
    for path in ("/v1/control/register-node", "/v1/control/start-run", "/v1/control/list-nodes"):
        reply = client.post(path, content=b"x")
        assert reply.status_code == 403 and "only the Fleet API" in reply.text
    assert seen == []


def test_a_body_over_the_bound_is_refused_before_it_is_read(upstream, monkeypatch):
    client, seen = upstream
    monkeypatch.setattr(gate, "MAX_BODY_BYTES", 8)
    assert client.post("/v1/fleet/push-object", content=b"x" * 9).status_code == 413
    assert client.post("/v1/fleet/push-object", content=b"x" * 8).status_code == 200
    assert len(seen) == 1


def test_a_superlink_that_does_not_answer_gives_502():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = _client(httpx.MockTransport(refuse))
    assert client.post("/v1/fleet/pull-messages", content=b"").status_code == 502
