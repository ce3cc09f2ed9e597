import pytest

from discovery.model import HttpCheck, Registration
from discovery.register.labels import NotRegistrable, registration

CONTAINER = "4f66ad9a0b2e" + "5d" * 26


def inspect(labels=None, env=(), exposed=("8080/tcp",), networks=None):
    """A trimmed `docker inspect` of a running container."""
    if networks is None:
        networks = {"app_default": {"IPAddress": "172.18.0.5", "Gateway": "172.18.0.1", "NetworkID": "9c1e"}}
    return {
        "Id": CONTAINER,
        "Name": "/app-web-1",
        "State": {"Status": "running", "Running": True, "Pid": 4242},
        "Config": {
            "Hostname": CONTAINER[:12],
            "Image": "demo/web:1",
            "Env": ["PATH=/usr/local/bin:/usr/bin", *env],
            "Labels": {"com.docker.compose.service": "web", **(labels or {})},
            "ExposedPorts": {port: {} for port in exposed},
        },
        "NetworkSettings": {"Networks": networks},
    }


def two_networks():
    return {"front": {"IPAddress": "172.18.0.5"}, "back": {"IPAddress": "172.19.0.7"}}


def test_labels_make_a_full_registration():
    attrs = inspect({"discovery.service": "web", "discovery.tags": " lb, lb.default ,,lb.host=a.local"})
    assert registration(attrs, "host-a") == Registration(
        id=f"web-{CONTAINER[:12]}", name="web", address="172.18.0.5", port=8080,
        tags=("lb", "lb.default", "lb.host=a.local"), check=HttpCheck("/health", "2s", "1s"),
        container=CONTAINER, owner="host-a",
    )


def test_registrator_environment_variables_work():
    attrs = inspect(env=["SERVICE_NAME=api", "SERVICE_TAGS=lb,lb.path=/v2", "SERVICE_CHECK_HTTP=/ready",
                         "SERVICE_PORT=9000", "SERVICE_CHECK_INTERVAL=5s"], exposed=())
    r = registration(attrs, "host-a")
    assert (r.name, r.port, r.tags) == ("api", 9000, ("lb", "lb.path=/v2"))
    assert r.check == HttpCheck("/ready", "5s", "1s")


def test_labels_win_over_environment_variables():
    attrs = inspect({"discovery.service": "web", "discovery.port": "8080", "discovery.tags": "lb"},
                    env=["SERVICE_NAME=api", "SERVICE_PORT=9000", "SERVICE_TAGS=other"])
    r = registration(attrs, "host-a")
    assert (r.name, r.port, r.tags) == ("web", 8080, ("lb",))


@pytest.mark.parametrize(
    ("labels", "env"),
    [
        ({}, []),
        ({"discovery.service": ""}, []),
        ({"discovery.service": "web", "discovery.ignore": "true"}, []),
        ({}, ["SERVICE_NAME=web", "SERVICE_IGNORE=1"]),
    ],
    ids=["no-opt-in", "empty-name", "ignore-label", "ignore-env"],
)
def test_containers_that_did_not_opt_in_give_none(labels, env):
    assert registration(inspect(labels, env), "host-a") is None


def test_only_exposed_tcp_port_is_used_without_a_port_label():
    attrs = inspect({"discovery.service": "web"}, exposed=("53/udp", "9000/tcp"))
    assert registration(attrs, "host-a").port == 9000


def test_port_label_chooses_among_several_exposed_ports():
    attrs = inspect({"discovery.service": "web", "discovery.port": "9000"}, exposed=("8080/tcp", "9000/tcp"))
    assert registration(attrs, "host-a").port == 9000


@pytest.mark.parametrize(
    ("network_label", "network_flag", "address"),
    [("back", None, "172.19.0.7"), (None, "front", "172.18.0.5"), ("back", "front", "172.19.0.7")],
)
def test_network_label_or_flag_chooses_the_address(network_label, network_flag, address):
    labels = {"discovery.service": "web"}
    if network_label:
        labels["discovery.network"] = network_label
    attrs = inspect(labels, networks=two_networks())
    assert registration(attrs, "host-a", network_flag).address == address


@pytest.mark.parametrize("value", ["none", "None"])
def test_check_none_registers_without_a_check(value):
    attrs = inspect({"discovery.service": "web", "discovery.check.http": value})
    assert registration(attrs, "host-a").check is None


@pytest.mark.parametrize(
    ("labels", "exposed", "networks", "words"),
    [
        ({}, ("8080/tcp", "9000/tcp"), None, "discovery.port"),
        ({}, (), None, "discovery.port"),
        ({}, ("8080/tcp",), two_networks(), "discovery.network"),
        ({"discovery.network": "nowhere"}, ("8080/tcp",), None, "nowhere"),
        ({}, ("8080/tcp",), {"host": {"IPAddress": ""}}, "no IP address"),
        ({"discovery.tags": "lb,lb\n bind :1"}, ("8080/tcp",), None, "tag"),
        ({"discovery.port": "80 x"}, ("8080/tcp",), None, "port"),
        ({"discovery.port": "70000"}, ("8080/tcp",), None, "port"),
        ({"discovery.service": "web app"}, ("8080/tcp",), None, "web app"),
        ({"discovery.service": "web\nbackend x"}, ("8080/tcp",), None, "web"),
        ({"discovery.check.http": "/health now"}, ("8080/tcp",), None, "health check path"),
        ({"discovery.check.interval": "often"}, ("8080/tcp",), None, "interval"),
    ],
    ids=["several-ports", "no-port", "several-networks", "unknown-network", "no-address", "hostile-tag",
         "hostile-port", "port-range", "name-with-space", "name-with-newline", "hostile-check", "bad-interval"],
)
def test_unusable_opt_in_is_not_registrable_with_a_reason(labels, exposed, networks, words):
    attrs = inspect({"discovery.service": "web", **labels}, exposed=exposed, networks=networks)
    with pytest.raises(NotRegistrable, match=words.replace("\n", "\\n")):
        registration(attrs, "host-a")


def test_longest_valid_service_name_is_registrable():
    name = "s" * 63
    assert registration(inspect({"discovery.service": name}), "host-a").name == name
