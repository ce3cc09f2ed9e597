import json
import struct
import zlib

import pytest

from tools import lab
from tools.lab import (
    SCENARIO,
    STEP_FILES,
    Step,
    check_report,
    index_markdown,
    nodes_listing,
    publish,
    redact,
    running_webapps_in,
    server_name,
    servers_in,
    short_name,
    watcher_lines,
)


def png(width: int, height: int) -> bytes:
    """A minimal valid PNG of one grey row repeated: enough for a signature and an IHDR."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


CONFIG = """backend be_webapp
    balance roundrobin
    server webapp-aaaaaaaaaaaa 172.18.0.5:3000 check inter 2s fall 2 rise 2
    server webapp-bbbbbbbbbbbb 172.18.0.6:3000 check inter 2s fall 2 rise 2 disabled
"""

PS = """CONTAINER ID   IMAGE                  COMMAND        STATUS                      PORTS    NAMES
aaaaaaaaaaaa   discovery/webapp:dev   "python3 -m"   Up 2 seconds (healthy)      3000/tcp discovery-lab-webapp-1
bbbbbbbbbbbb   fc548798f4fe           "python3 -m"   Up 8 seconds (healthy)      3000/tcp discovery-lab-webapp-2
cccccccccccc   discovery/webapp:dev   "python3 -m"   Exited (137) 1 second ago            discovery-lab-webapp-3
dddddddddddd   discovery/ha:dev       "supervisord"  Up 8 seconds (healthy)      80/tcp   discovery-lab-ha-1
"""


def test_the_scenario_is_the_labs():
    assert [s.webapps for s in SCENARIO] == [2, 3, 4, 5, 4, 3, 2]
    assert [s.action for s in SCENARIO] == ["up", "scale", "scale", "scale", "stop", "kill", "scale"]
    slugs = [s.slug for s in SCENARIO]
    assert slugs == sorted(slugs) and len(set(slugs)) == len(slugs)


@pytest.mark.parametrize(("slug", "action", "webapps"), [("1-x", "up", 2), ("01-x", "restart", 2), ("01-x", "up", -1)])
def test_a_step_refuses_bad_values(slug, action, webapps):
    with pytest.raises(ValueError):
        Step(slug, "t", action, webapps, "lab")


def test_servers_in_a_rendered_config_include_draining_ones():
    assert servers_in(CONFIG) == ["webapp-aaaaaaaaaaaa", "webapp-bbbbbbbbbbbb"]
    assert servers_in("userlist stats_users\n    user admin insecure-password x\n") == []


def test_running_web_apps_are_read_by_name_even_when_the_image_column_is_an_id():
    assert running_webapps_in(PS) == {"webapp-aaaaaaaaaaaa", "webapp-bbbbbbbbbbbb"}
    assert server_name("aaaaaaaaaaaa" + "f" * 52) == "webapp-aaaaaaaaaaaa"


def test_redact_hides_every_secret_and_ignores_empty_ones():
    assert redact("user admin insecure-password s3cret token=t0k", ["s3cret", "", "t0k"]) == \
        "user admin insecure-password <redacted> token=<redacted>"


def test_nodes_listing_shows_each_instance_with_its_worst_check():
    def entry(sid, *statuses):
        return {"Node": {"Node": "n1"}, "Service": {"ID": sid, "Address": "10.0.0.1", "Port": 3000},
                "Checks": [{"Status": s} for s in statuses]}
    listing = nodes_listing([entry("webapp-b", "passing", "critical"), entry("webapp-a", "passing", "passing")])
    assert listing.splitlines() == ["webapp-a  10.0.0.1:3000  passing  node=n1",
                                    "webapp-b  10.0.0.1:3000  critical  node=n1"]
    assert nodes_listing([]) == "(no instances)\n"


def test_watcher_lines_leave_haproxys_out():
    log = ("[NOTICE]   (9) : Loading success.\n"
           "2026-11-25 10:51:35,251 INFO    discovery.watch: applied +webapp-x\n"
           "2026-11-25 10:51:36,000 WARNING discovery.catalog: retrying\n")
    assert watcher_lines(log).splitlines() == log.splitlines()[1:]


def test_ports_default_to_any_free_loopback_port():
    assert publish(0) == "127.0.0.1:" and publish(18080) == "127.0.0.1:18080"
    assert short_name("/discovery-lab-socket-proxy-1", "discovery-lab") == "socket-proxy-1"


def complete_report(root, steps=SCENARIO):
    """A report that check_report accepts: the servers each step lists are its running web apps."""
    records = []
    for step in steps:
        folder = root / "logs" / step.slug
        (folder / "logs").mkdir(parents=True)
        (folder / "inspect").mkdir()
        ids = [f"{i:012x}" for i in range(step.webapps)]
        servers = [server_name(cid) for cid in ids]
        rows = "".join(f"{cid}   discovery/webapp:dev   \"python3\"   1 second ago   Up 1 second   3000/tcp   "
                       f"discovery-lab-webapp-{n}\n" for n, cid in enumerate(ids, 1))
        record = {"slug": step.slug, "title": step.title, "webapps": step.webapps, "servers": servers,
                  "converged_after_s": 0.3, "started": "now"}
        records.append(record)
        config = "backend be_webapp\n" + "".join(f"    server {s} 10.0.0.1:3000 check\n" for s in servers)
        files = {"step.json": json.dumps(record), "docker-ps.txt": "CONTAINER ID   IMAGE ...\n" + rows,
                 "haproxy.cfg": config,
                 "nodes.txt": "".join(f"{s}  10.0.0.1:3000  passing  node=n1\n" for s in servers),
                 "catalog.json": json.dumps({"health": servers, "padding": "x" * 20}),
                 "watcher.log": "2026 INFO discovery.watch: applied\n", "requests.txt": "200 host=a ip=b\n" * 3}
        for name, text in files.items():
            (folder / name).write_text(text)
        for name in ("stats.png", "consul-ui.png"):
            (folder / name).write_bytes(png(1280, 800))
        for service in lab.SERVICES:
            (folder / "logs" / f"{service}-1.log").write_text("a log line, long enough\n")
            (folder / "inspect" / f"{service}-1.json").write_text('[{"Id": "a long enough container id"}]')
    (root / "logs" / "README.md").write_text(index_markdown(records))
    return root


def test_a_complete_report_passes(tmp_path):
    assert check_report(complete_report(tmp_path)) == []
    index = (tmp_path / "logs" / "README.md").read_text()
    assert all(f"[{s.slug}]({s.slug}/)" in index for s in SCENARIO)


@pytest.mark.parametrize("name", STEP_FILES)
def test_a_missing_file_is_named(tmp_path, name):
    complete_report(tmp_path)
    (tmp_path / "logs" / "03-add-fourth" / name).unlink()
    assert any(p.startswith(f"03-add-fourth/{name}") for p in check_report(tmp_path))


def test_a_small_or_broken_screenshot_is_named(tmp_path):
    complete_report(tmp_path)
    (tmp_path / "logs" / "01-start-two" / "stats.png").write_bytes(png(640, 300))
    (tmp_path / "logs" / "02-add-third" / "consul-ui.png").write_bytes(b"<html>not a picture</html>")
    assert check_report(tmp_path) == ["01-start-two/stats.png: 640x300 is too small",
                                      "02-add-third/consul-ui.png: not a PNG"]


def test_a_config_that_disagrees_with_docker_ps_is_named(tmp_path):
    complete_report(tmp_path)
    cfg = tmp_path / "logs" / "05-stop-one" / "haproxy.cfg"
    cfg.write_text(cfg.read_text() + "    server webapp-ffffffffffff 10.0.0.9:3000 check\n")
    problems = check_report(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("05-stop-one/haproxy.cfg lists")


def test_a_service_without_logs_is_named(tmp_path):
    complete_report(tmp_path)
    (tmp_path / "logs" / "07-scale-down" / "logs" / "registrator-1.log").unlink()
    assert check_report(tmp_path) == ["07-scale-down/logs/: nothing for registrator"]


def test_without_docker_the_lab_says_so_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker on it
    assert lab.main(["--output", str(tmp_path / "report")]) == lab.EXIT_USAGE
    assert "docker is not installed" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("argv", [["--project", "Bad Name"], ["--http-port", "70000"]])
def test_bad_flags_exit_2(argv):
    with pytest.raises(SystemExit) as exit_:
        lab.parse(argv, {})
    assert exit_.value.code == 2


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        lab.parse(["--help"], {})
    out = capsys.readouterr().out
    assert "Exit codes" in out and "DISCOVERY_LAB_HTTP_PORT" in out


def test_options_are_read_from_the_environ_given_and_flags_win():
    environ = {"DISCOVERY_LAB_PROJECT": "from-env", "DISCOVERY_LAB_HTTP_PORT": "18080"}
    config = lab.parse(["--http-port", "28080"], environ)
    assert (config.project, config.http_port) == ("from-env", 28080)
    assert lab.parse([], {}).project == "discovery-lab"


def test_a_bad_environment_value_exits_2():
    with pytest.raises(SystemExit) as exit_:
        lab.parse([], {"DISCOVERY_LAB_STATS_PORT": "70000"})
    assert exit_.value.code == 2
