"""ACL bootstrap against a real Consul with `default_policy = deny`: idempotent, and each token
can do what its component needs and nothing more."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from consul.exceptions import ACLPermissionDenied

from discovery import acl
from discovery.model import ConsulAddress
from tests.processes import ConsulAgent, WebApps, consul_dev, watcher_process
from tests.support import http_get, wait_until

pytestmark = pytest.mark.integration

# Without token persistence: a dev agent would write acl-tokens.json into the working directory.
ACLS = 'acl { enabled = true, default_policy = "deny", down_policy = "extend-cache" }'


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ConsulAgent]:
    with consul_dev(tmp_path, "-hcl", ACLS) as agent:
        yield agent


def bootstrap(agent: ConsulAgent, tmp_path: Path, services: tuple[str, ...] = ("webapp",),
              wait: float = 120.0) -> dict[str, str]:
    dirs = {component: tmp_path / component for component in acl.COMPONENTS}
    asyncio.run(acl.Bootstrap(ConsulAddress.parse(agent.address), tmp_path / "admin", dirs, services, wait,
                              tmp_path / "agent" / "agent-token.json").run())
    return {component: (directory / acl.TOKEN_FILE).read_text().strip() for component, directory in dirs.items()}


def as_token(agent: ConsulAgent, token: str | None) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.port, token=token)


def get_status(port: int) -> int:
    return http_get(port)[0]


def test_bootstrap_is_idempotent_and_keeps_every_secret(secured, tmp_path):
    first = bootstrap(secured, tmp_path)
    management = (tmp_path / "admin" / acl.MANAGEMENT_FILE).read_text()
    second = bootstrap(secured, tmp_path, ("webapp", "api"))
    assert second == first
    assert (tmp_path / "admin" / acl.MANAGEMENT_FILE).read_text() == management
    assert (tmp_path / "admin" / acl.MANAGEMENT_FILE).stat().st_mode & 0o777 == 0o400
    # More servers load the agent token as configuration.
    agent_config = json.loads((tmp_path / "agent" / "agent-token.json").read_text())
    assert agent_config == {"acl": {"tokens": {"agent": (tmp_path / "admin" / "agent.token").read_text().strip()}}}
    policies = {p["Name"] for p in as_token(secured, management.strip()).acl.policy.list()}
    assert {"discovery-registrator", "discovery-watcher", "discovery-agent"} <= policies
    # The second run widened the registrator's policy to the new list.
    as_token(secured, first["registrator"]).agent.service.register("api", service_id="api-1", port=1)


def test_each_token_has_the_least_it_needs(secured, tmp_path):
    tokens = bootstrap(secured, tmp_path)
    registrator, watcher, anonymous = (as_token(secured, tokens["registrator"]), as_token(secured, tokens["watcher"]),
                                       as_token(secured, None))
    registrator.agent.service.register("webapp", service_id="webapp-1", address="127.0.0.1", port=8080)
    # Anonymous: nothing to see, nothing to write.
    assert anonymous.catalog.services()[1] == {}
    with pytest.raises(ACLPermissionDenied):
        anonymous.agent.service.register("webapp", service_id="webapp-2", port=1)
    # The registrator: its own services only; no KV.
    with pytest.raises(ACLPermissionDenied):
        registrator.agent.service.register("evil", service_id="evil-1", port=1)
    with pytest.raises(ACLPermissionDenied):
        registrator.kv.get("anything")
    with pytest.raises(ACLPermissionDenied):
        registrator.kv.put("anything", "x")
    # The watcher: reads services and nodes (health answers need both), writes nothing.
    assert "webapp" in watcher.catalog.services()[1]
    assert [e["Service"]["ID"] for e in watcher.health.service("webapp")[1]] == ["webapp-1"]
    with pytest.raises(ACLPermissionDenied):
        watcher.agent.service.register("webapp", service_id="webapp-3", port=1)
    with pytest.raises(ACLPermissionDenied):
        watcher.agent.service.deregister("webapp-1")
    with pytest.raises(ACLPermissionDenied):
        watcher.kv.put("anything", "x")


def test_watcher_follows_a_secured_consul_with_its_token_file(secured, tmp_path):
    tokens = bootstrap(secured, tmp_path)
    apps = WebApps()
    try:
        port = apps.start("a")
        as_token(secured, tokens["registrator"]).agent.service.register(
            "webapp", service_id="webapp-a", address="127.0.0.1", port=port, tags=["lb", "lb.default"])
        token_file = str(tmp_path / "watcher" / acl.TOKEN_FILE)
        with watcher_process(tmp_path, secured.address, "--token-file", token_file) as watcher:
            wait_until(lambda: watcher.server_lines() == ["webapp-a"], "the watcher to render webapp-a")
            wait_until(lambda: get_status(watcher.http_port) == 200, "HAProxy to route to webapp-a")
            assert watcher.tags_served() == {"a"}
    finally:
        apps.stop_all()


def test_a_foreign_bootstrap_is_a_clear_error_not_a_new_token(secured, tmp_path):
    secured.client.acl.bootstrap()  # someone else bootstrapped; we never saw the token
    with pytest.raises(acl.BootstrapError, match="bootstrapped by someone else"):
        bootstrap(secured, tmp_path)
    assert not (tmp_path / "admin" / acl.MANAGEMENT_FILE).exists()


def test_keygen_makes_one_key_and_keeps_it(tmp_path):
    out = tmp_path / "keys" / "gossip.json"
    assert acl.keygen(out) is True
    key = json.loads(out.read_text())["encrypt"]
    assert acl.keygen(out) is False
    assert json.loads(out.read_text())["encrypt"] == key
    assert len(__import__("base64").b64decode(key)) == 32


def test_a_wiped_consul_gets_every_token_back_with_the_secrets_kept(tmp_path):
    (tmp_path / "first").mkdir()
    (tmp_path / "wiped").mkdir()
    with consul_dev(tmp_path / "first", "-hcl", ACLS) as first:
        tokens = bootstrap(first, tmp_path)
    with consul_dev(tmp_path / "wiped", "-hcl", ACLS) as wiped:  # a new, empty Consul; the volumes kept
        assert bootstrap(wiped, tmp_path) == tokens
        as_token(wiped, tokens["registrator"]).agent.service.register("webapp", service_id="webapp-1", port=1)
        assert "webapp" in as_token(wiped, tokens["watcher"]).catalog.services()[1]
        ui = (tmp_path / "admin" / "ui.token").read_text().strip()
        assert "webapp" in as_token(wiped, ui).catalog.services()[1]


def test_a_kept_token_another_bootstrap_replaced_is_fatal_after_the_wait(secured, tmp_path):
    (tmp_path / "admin").mkdir()
    (tmp_path / "admin" / acl.MANAGEMENT_FILE).write_text("00000000-0000-4000-8000-000000000000\n")
    secured.client.acl.bootstrap()
    with pytest.raises(acl.BootstrapError, match="nor allows a bootstrap"):
        bootstrap(secured, tmp_path, wait=1)
