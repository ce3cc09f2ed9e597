import pytest

from discovery import model
from discovery.model import (
    ConsulAddress,
    DesiredState,
    HttpCheck,
    Instance,
    InvalidValue,
    Registration,
    Route,
    Service,
    server_name,
)


def test_instance_normalises_and_names_itself():
    instance = Instance("web", "web-abc", "10.0.0.5", "3000")
    assert instance.port == 3000
    assert instance.server_name == "web-abc"
    assert instance.endpoint == "10.0.0.5:3000"
    assert Instance("web", "x", "fd00::1", 80).endpoint == "[fd00::1]:80"


@pytest.mark.parametrize(
    "field, value",
    [
        ("service", "bad name"),
        ("service", "web\n  bind :8081"),
        ("service", ""),
        ("address", "not-an-ip"),
        ("address", "0.0.0.0"),
        ("address", "10.0.0.1\n"),
        ("port", 0),
        ("port", 70000),
        ("port", "80 check"),
        ("id", ""),
    ],
)
def test_instance_refuses_values_haproxy_would_misread(field, value):
    fields = {"service": "web", "id": "web-1", "address": "10.0.0.1", "port": 80, field: value}
    with pytest.raises(InvalidValue):
        Instance(**fields)


def test_server_names_are_stable_and_safe():
    assert server_name("web-1") == "web-1"
    odd = server_name("web 1#x")
    assert odd == server_name("web 1#x")
    assert odd.startswith("id-") and " " not in odd and "#" not in odd


def test_routes_validate_host_and_path():
    assert Route(host="API.Example.org").host == "api.example.org"
    assert Route(path="/v2").path == "/v2"
    for bad in ({}, {"host": "a b"}, {"path": "v2"}, {"path": "/a b"}, {"path": "/x#y"}, {"host": "x\ny"}):
        with pytest.raises(InvalidValue):
            Route(**bad)


def test_service_orders_instances_and_refuses_strangers():
    a, b = Instance("web", "b", "10.0.0.2", 80), Instance("web", "a", "10.0.0.1", 80)
    assert Service("web", (a, b)).instances == (b, a)
    with pytest.raises(InvalidValue):
        Service("web", (Instance("api", "x", "10.0.0.3", 80),))


def test_desired_state_is_canonical_and_single_default():
    state = DesiredState((Service("b", is_default=True), Service("a")))
    assert [s.name for s in state.services] == ["a", "b"]
    assert state.default is not None and state.default.name == "b"
    with pytest.raises(InvalidValue):
        DesiredState((Service("a", is_default=True), Service("b", is_default=True)))
    with pytest.raises(InvalidValue):
        DesiredState((Service("a"), Service("a")))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://127.0.0.1:8500", "http://127.0.0.1:8500"),
        ("consul:8500", "http://consul:8500"),
        ("https://consul.example", "https://consul.example:8500"),
        ("http://[::1]:8501", "http://[::1]:8501"),
    ],
)
def test_consul_address_parses(text, expected):
    assert str(ConsulAddress.parse(text)) == expected


@pytest.mark.parametrize("text", ["ftp://x:1", "http://:8500", "http://x:99999", "http://a b:1"])
def test_consul_address_refuses(text):
    with pytest.raises(InvalidValue):
        ConsulAddress.parse(text)


def test_registration_marks_ownership_and_check():
    reg = Registration("web-abc", "web", "172.18.0.2", 3000, ("lb", "lb.default", "lb"), HttpCheck(), "abc", "host1")
    assert reg.tags == ("lb", "lb.default")
    assert reg.meta == {
        "managed-by": "discovery-registrator", "registrator": "host1", "container": "abc",
        "check": "http /health 2s 1s",
    }
    with pytest.raises(InvalidValue):
        Registration("web abc", "web", "172.18.0.2", 3000)
    with pytest.raises(InvalidValue):
        Registration("web-abc", "web", "172.18.0.2", 3000, ("lb\nbind :1",))
    with pytest.raises(InvalidValue):
        HttpCheck("/health", "2 s")


def test_link_local_addresses_are_refused():
    with pytest.raises(InvalidValue, match="link-local"):
        Instance("web", "w", "169.254.169.254", 80)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Instance("web\n", "w", "10.0.0.1", 80),
        lambda: Route(host="a.b\n"),
        lambda: Route(path="/x\n"),
        lambda: Registration("web-1\n", "web", "10.0.0.1", 80),
        lambda: Registration("web-1", "web", "10.0.0.1", 80, ("lb\n",)),
    ],
)
def test_a_trailing_line_break_is_refused_everywhere(make):
    with pytest.raises(InvalidValue):
        make()


@pytest.mark.parametrize("address", ["fe80::1%eth0", "2001:db8::1%x\n    bind :8081", "::ffff:169.254.169.254",
                                     "::ffff:0.0.0.0", "::ffff:10.0.0.1"])
def test_scoped_and_ipv4_mapped_ipv6_addresses_are_refused(address):
    with pytest.raises(InvalidValue):
        Instance("web", "w", address, 80)


def test_a_server_id_with_a_trailing_line_break_gets_a_digest_name():
    assert server_name("web-1\n").startswith("id-")


def test_a_refused_value_is_shown_quoted_and_cut_short():
    with pytest.raises(InvalidValue) as refused:
        model.service_name("x" * 5000 + "\n  bind :8081")
    message = str(refused.value)
    assert len(message) < 200 and "5013 characters" in message and "\n" not in message
