"""REPORT.md and the committed report/: every question of the seed lab quoted and answered, every
number with a unit found in a generated file, every link and picture present, and the generated
logs complete (the same check the lab runs on itself)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.lab import SCENARIO, check_report

ROOT = Path(__file__).resolve().parents[2]
REPORT = (ROOT / "REPORT.md").read_text()

# The seed lab's questions and deliverables, as the lab text words them (whitespace aside).
QUESTIONS = [
    "[M1]** Do you think we can use the current solution for a production environment?",
    "What are the main problems when deploying it in a production environment?",
    "[M2]** Describe what you need to do to add new webapp container to the infrastructure.",
    "[M3]** Based on your previous answers, you have detected some issues in the current solution.",
    "[M4]** You probably noticed that the list of web application nodes is hardcoded",
    "How can we manage the web app nodes in a more dynamic fashion?",
    "[M5]** In the physical or virtual machines of a typical infrastructure",
    "Do you think our current solution is able to run additional management processes",
    "[M6]** In our current solution, although the load balancer configuration is changing dynamically",
    "What happens if we add more web server nodes? Do you think it is really dynamic?",
    "Take a screenshot of the stats page of HAProxy at http://192.168.42.42:1936.",
    "Give the URL of your repository URL in the lab report.",
    "It should be really similar to the screenshot of the previous task.",
    "Explain in your own words why are we installing a process supervisor.",
    "Provide the docker log output for each of the containers: ha, s1 and s2.",
    "Give the answer to the question about the existing problem with the current solution.",
    "Give an explanation on how Serf is working.",
    "Try to find other solutions that can be used to solve similar situations",
    "Provide the logs from the ha container gathered directly from the /var/log/serf.log file",
    "What can we do to mitigate that?",
    "Tell us about the pros and cons to merge as much as possible of the command.",
    "They are talking about squashing or flattening images.",
    "Propose a different approach to architecture our images",
    "Provide the /tmp/haproxy.cfg file generated in the ha container after each step.",
    "Based on the three output files you have collected, what can you say about the way we generate it?",
    "Provide the file /usr/local/etc/haproxy/haproxy.cfg generated in the ha container after each step.",
    "Provide the list of files from the /nodes folder inside the ha container.",
    "Provide the configuration file after you stopped one container and the list of nodes present",
    "Propose a different approach to manage the list of backend nodes.",
    "Take a screenshots of the HAProxy stat page showing more than 2 web applications running.",
    "Also provide the output of docker ps in a log file.",
    "Give your own feelings about the final solution.",
    "Present a live demo where you add and remove a backend container.",
]

# What counts as a generated file: the benchmark's results, and the lab's index and configs.
GENERATED = [ROOT / "bench" / "RESULTS.md", ROOT / "report" / "logs" / "README.md",
             *sorted((ROOT / "report" / "logs").glob("*/haproxy.cfg"))]


def quoted_text() -> str:
    lines = [line[1:].strip() for line in REPORT.splitlines() if line.startswith(">")]
    return " ".join(" ".join(lines).split())


@pytest.mark.parametrize("question", QUESTIONS)
def test_every_question_of_the_seed_lab_is_quoted(question):
    assert " ".join(question.split()) in quoted_text()


def test_every_quoted_question_is_followed_by_an_answer():
    """The text after a quote, up to the next quote or heading, is its answer."""
    answers: list[list[str]] = []  # one list of answer lines per quote
    current: list[str] | None = None  # the answer being read; None after a heading
    in_quote = False
    for line in REPORT.splitlines():
        if line.startswith(">"):
            if not in_quote:
                current = []
                answers.append(current)
            in_quote = True
            continue
        in_quote = False
        if line.startswith("#"):
            current = None
        elif current is not None:
            current.append(line)
    assert len(answers) == 27  # M1-M6 and every task's deliverables
    short = [n for n, lines in enumerate(answers) if len(" ".join(lines).split()) < 8]
    assert short == []


def test_every_number_with_a_unit_comes_from_a_generated_file():
    generated = "\n".join(path.read_text() for path in GENERATED)
    numbers = re.findall(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s?(?:ms|s|\u00d7|MiB|MB|requests|req/s)(?!\w)", REPORT)
    assert len(numbers) > 20
    missing = [n for n in numbers if not re.search(rf"(?<![\d.]){re.escape(n.replace(',', ''))}(?!\.?\d)",
                                                   generated.replace(",", ""))]
    assert missing == []


def test_every_link_and_picture_exists():
    targets = re.findall(r"\]\(([^)#\s]+)\)", REPORT)
    assert len(targets) > 30
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert missing == []


def test_the_report_embeds_screenshots_and_the_benchmark_plot():
    pictures = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", REPORT)
    assert "bench/results/latency.png" in pictures
    assert sum(p.endswith("stats.png") for p in pictures) >= 3 and any(p.endswith("consul-ui.png") for p in pictures)


def test_the_committed_report_is_complete():
    assert check_report(ROOT / "report") == []
    assert {p.name for p in (ROOT / "report" / "logs").iterdir() if p.is_dir()} == {s.slug for s in SCENARIO}


def test_the_committed_report_stays_small():
    size = sum(p.stat().st_size for p in (ROOT / "report").rglob("*") if p.is_file())
    assert size < 5_000_000
