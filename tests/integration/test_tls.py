"""A loopback deployment with TLS and SuperNode authentication (slow: one run, ~1-2 min).

One federation serves every test of the module: the honest hospB (registered as hospB),
an impostor registered as hospA that calls itself hospB, a node whose key was never
registered, and a node that only runs apps signed by an entity it trusts. Certificates and
keys are made fresh by ``LocalFederation(tls=True)``.
"""

from types import SimpleNamespace

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from server.catalog import Catalog
from server.local import APP_DIR, LocalFederation
from tests.integration.flower import flower_processes, one_task_plan, site_config

pytestmark = pytest.mark.slow


def _trusted_entities(path):
    """A ``--trusted-entities`` file naming one Ed25519 key (which signed nothing)."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.write_text(yaml.safe_dump({"fpk_csfl_test": line.decode()}))
    return path


@pytest.fixture(scope="module")
def tls_run(tmp_path_factory, tiny_sites):
    tmp = tmp_path_factory.mktemp("tls")
    plan = one_task_plan(tmp, rounds=1, steps=2, min_sites=1)
    config = {"plan": str(plan), "catalog": str(tmp / "catalog")}
    honest = site_config(tiny_sites["hospB"])
    with LocalFederation(tmp / "flower", simulation=False, nodes=[honest], tls=True) as fed:
        impostor = fed.add_node(
            site_config(tiny_sites["hospA"], "hospB", tmp / "cache-impostor"), register_as="hospA"
        )
        unregistered = fed.add_node(site_config(tiny_sites["hospA"]), register_as=None)
        verifier = fed.add_node(
            site_config(tiny_sites["hospC"]),
            extra_args=["--trusted-entities", str(_trusted_entities(tmp / "trusted.yaml"))],
        )
        fed.wait_online([impostor, verifier])
        result = fed.run(APP_DIR, config, timeout=600)
        unregistered.process.wait(timeout=60)
    return SimpleNamespace(
        result=result,
        catalog=Catalog(tmp / "catalog"),
        impostor=impostor,
        unregistered=unregistered,
        verifier=verifier,
        leftover=flower_processes(fed),
    )


def test_a_registered_node_trains_over_tls(tls_run):
    assert tls_run.result.returncode == 0, tls_run.result.stderr[-2000:]
    assert tls_run.catalog.has_task("abdomen")
    provenance = tls_run.catalog.tasks()[0]["versions"][0]["provenance"]
    assert provenance["sites"] == ["hospB"] and provenance["bytes_up"]["hospB"] > 0
    assert not tls_run.leftover


def test_an_unregistered_node_is_refused(tls_run):
    assert tls_run.unregistered.process.returncode != 0
    assert "Exit Code: 305" in tls_run.unregistered.log.read_text()


def test_a_node_registered_under_another_site_name_is_refused(tls_run):
    # the name given to `flwr supernode register --name` reaches the ServerApp (NodeInfo.name)
    line = f"node {tls_run.impostor.node_id} is registered as 'hospA' but calls itself 'hospB'"
    assert line in tls_run.result.stdout
    (start,) = [e for e in tls_run.catalog.events() if e["event"] == "run-start"]
    assert start["sites"] == ["hospB"]


def test_an_unsigned_app_is_refused_by_a_node_that_verifies_apps(tls_run):
    assert "The FAB could not be verified" in tls_run.verifier.log.read_text()
    assert f"node {tls_run.verifier.node_id} could not describe itself" in tls_run.result.stdout
