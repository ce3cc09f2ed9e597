import pytest

from discovery.haproxy.config import (
    Renderer,
    RenderSettings,
    TemplateError,
    ordered_routes,
    quote,
    served_state,
    server_arguments,
)
from discovery.model import DesiredState, Instance, Route, Service

# --- quote


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("a\\b", r'"a\\b"'),
        ("${HOME}", r'"\${HOME}"'),
        ('\\"$', r'"\\\"\$"'),
        (42, '"42"'),
    ],
)
def test_quote_escapes_quotes_backslashes_and_dollars(value, quoted):
    assert quote(value) == quoted


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b"])
def test_quote_refuses_line_breaks_and_nul(value):
    with pytest.raises(ValueError):
        quote(value)


# --- ordered_routes


def test_routes_are_ordered_most_specific_first():
    state = DesiredState((
        Service("hosts", routes=(Route(host="h.local"),)),
        Service("short", routes=(Route(path="/p"),)),
        Service("long", routes=(Route(path="/longer"),)),
        Service("hp", routes=(Route(host="x.local", path="/a"),)),
        Service("hplong", routes=(Route(host="x.local", path="/long/path"),)),
    ))
    assert [(route.host, route.path, service.name) for route, service in ordered_routes(state)] == [
        ("x.local", "/long/path", "hplong"),
        ("x.local", "/a", "hp"),
        (None, "/longer", "long"),
        (None, "/p", "short"),
        ("h.local", None, "hosts"),
    ]


# --- Renderer with the shipped template


def instance(service, number, address=None, port=8080):
    return Instance(service, f"{service}-{number}", address or f"10.0.0.{number}", port)


def sections(text):
    """{'backend be_web': [its indented lines], ...} from a rendered config."""
    found, current = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = found.setdefault(line.strip(), [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return found


def render(*services, settings=None):
    return Renderer().render(DesiredState(tuple(services)), settings or RenderSettings())


def servers(text, service):
    """Each server line of a backend, as `server <name> <address>` (options left out)."""
    lines = [line.split() for line in sections(text)[f"backend be_{service}"] if line.startswith("server ")]
    return [" ".join(words[:3]) for words in lines]


def test_every_instance_gives_one_server_line_in_its_backend():
    text = render(
        Service("web", (instance("web", 1), instance("web", 2, "fd00::2", 9000))),
        Service("api", (instance("api", 3),)),
    )
    assert servers(text, "web") == ["server web-1 10.0.0.1:8080", "server web-2 [fd00::2]:9000"]
    assert servers(text, "api") == ["server api-3 10.0.0.3:8080"]
    assert text.count("\n    server ") == 3


def test_service_without_instances_renders_a_backend_with_no_server():
    text = render(Service("web", (instance("web", 1),)), Service("empty"))
    assert "backend be_empty" in sections(text)
    assert servers(text, "empty") == []


def test_without_a_default_service_unmatched_requests_go_to_no_service():
    found = sections(render(Service("web", (instance("web", 1),))))
    assert "default_backend no_service" in found["frontend http"]
    assert "backend no_service" in found


def test_default_service_is_the_default_backend():
    found = sections(render(Service("web", (instance("web", 1),), is_default=True)))
    assert "default_backend be_web" in found["frontend http"]
    assert "backend no_service" not in found


def test_routes_become_use_backend_rules_in_specificity_order():
    text = render(
        Service("web", routes=(Route(host="a.local"),)),
        Service("api", routes=(Route(host="a.local", path="/api"),)),
    )
    rules = [line for line in sections(text)["frontend http"] if line.startswith("use_backend")]
    assert [rule.split()[1] for rule in rules] == ["be_api", "be_web"]
    assert "a.local" in rules[0] and "path_beg /api" in rules[0]


def test_equal_states_render_identical_text():
    one, two = instance("web", 1), instance("web", 2)
    first = render(Service("web", (one, two), (Route(path="/a"), Route(host="b.local"))), Service("api"))
    again = render(Service("api"), Service("web", (two, one), (Route(host="b.local"), Route(path="/a"))))
    assert first == again


# --- user templates


def user_template(tmp_path, text):
    path = tmp_path / "mine.cfg.j2"
    path.write_text(text)
    return Renderer(path)


def test_user_template_can_use_the_quote_filter(tmp_path):
    renderer = user_template(tmp_path, "{% for s in services %}# {{ s.name | quote }}\n{% endfor %}")
    assert renderer.render(DesiredState((Service("web"),)), RenderSettings()) == '# "web"\n'


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("global\n    maxconn {{ settings.maxconn\n", ":2:"),
        ("{% for s in services %}\n{% endif %}\n", ":2:"),
        ("global\n    maxconn {{ settings.max_connections }}\n", "UndefinedError"),
        ("{{ no_such_name }}\n", "no_such_name"),
        ("{{ 'a\\nb' | quote }}\n", "line break"),
    ],
    ids=["unclosed-expression", "mismatched-block", "undefined-attribute", "undefined-name", "quote-refuses"],
)
def test_bad_user_template_raises_template_error_naming_the_file(tmp_path, text, words):
    renderer = user_template(tmp_path, text)
    with pytest.raises(TemplateError) as error:
        renderer.render(DesiredState(), RenderSettings())
    assert str(tmp_path / "mine.cfg.j2") in str(error.value)
    assert words in str(error.value)


def test_missing_user_template_raises_template_error(tmp_path):
    with pytest.raises(TemplateError, match="not found"):
        Renderer(tmp_path / "absent.j2").render(DesiredState(), RenderSettings())


def test_draining_servers_are_listed_disabled_and_sticky_adds_cookies():
    draining = instance("web", 2)
    text = render(Service("web", (instance("web", 1),), draining=(draining,)),
                  settings=RenderSettings(sticky=True, server_state_file="/run/h.state"))
    lines = [line for line in sections(text)["backend be_web"] if line.startswith("server ")]
    assert lines[0].endswith("cookie web-1") and lines[1].endswith("cookie web-2 disabled")
    assert "server-state-file /run/h.state" in text and "load-server-state-from-file global" in text


def test_server_arguments_are_what_add_server_needs():
    text = render(Service("web", (instance("web", 1),)), Service("api", (instance("api", 3),)))
    assert server_arguments(text) == {
        ("be_web", "web-1"): "10.0.0.1:8080 check inter 2s fall 2 rise 2",
        ("be_api", "api-3"): "10.0.0.3:8080 check inter 2s fall 2 rise 2",
    }
    assert server_arguments(text, {"be_api"}) == {("be_api", "api-3"): "10.0.0.3:8080 check inter 2s fall 2 rise 2"}


def test_a_rendered_file_reads_back_as_the_services_it_serves():
    web = Service("web", (Instance("web", "web-1", "10.0.0.1", 80), Instance("web", "web-2", "2001:db8::2", 8080)),
                  (Route(host="www.example.com"),), is_default=True)
    api = Service("api", (Instance("api", "api-1", "10.0.0.3", 3000),), (Route(path="/api"),),
                  draining=(Instance("api", "api-0", "10.0.0.9", 3000),))
    served = served_state(render(web, api))
    # Routes are not read back; draining servers do not serve.
    assert served == DesiredState((Service("api", api.instances), Service("web", web.instances, is_default=True)))


def test_nothing_served_reads_back_as_nothing():
    assert served_state(render()) == DesiredState()
    assert served_state("backend be_x\n    server a not-an-address:1\n") == DesiredState()
