"""deploy/Dockerfile and deploy/compose.yaml, checked statically: no registry nor docker engine is reachable here."""

from __future__ import annotations

import json
import re
import shlex
import tomllib

import yaml

from tests.conftest import REPO_ROOT
from tests.deploy.test_systemd import worst_case_stop


DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
COMPOSE = REPO_ROOT / "deploy" / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        word, _, rest = pending.partition(" ")
        result.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "a continuation line ends the file"
    return result


def all_of(name: str) -> list[str]:
    return [args for word, args in instructions() if word == name]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), args
    return value


def test_the_base_is_a_pinned_slim_python() -> None:
    (base,) = all_of("FROM")
    image, _, tag = base.partition("@")[0].partition(":")
    assert image == "python"
    assert re.fullmatch(r"3\.\d+\.\d+-slim-[a-z]+", tag), f"{base}: pin a patch release and a Debian release"
    assert "latest" not in base
    python = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert tag.startswith("3.11") and python == ">=3.11"


def test_it_installs_the_project_itself_and_runs_as_a_user_of_its_own() -> None:
    steps = instructions()
    copied = {shlex.split(args)[0] for word, args in steps if word == "COPY"}
    packages = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]["include"]
    assert {"pyproject.toml", *(name.rstrip("*") for name in packages)} <= copied
    runs = " ".join(all_of("RUN"))
    assert re.search(r"pip install (--\S+ )*\.", runs), "pip install from the copied project"
    assert "-e ." not in runs
    users = all_of("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    words = [word for word, _ in steps]
    assert words.index("USER") > max(
        i for i, (word, _) in enumerate(steps) if word == "RUN"
    )  # nothing runs as root after


def test_data_lives_in_a_volume_and_the_ports_are_exposed() -> None:
    assert [exec_form(args) for args in all_of("VOLUME")] == [["/data"]]
    assert "CAPTURE_DATA_DIR=/data" in " ".join(all_of("ENV"))
    command = exec_form(all_of("CMD")[-1])
    exposed = {port for args in all_of("EXPOSE") for port in args.split()}
    for flag in ("--webhook-port", "--metrics-port"):
        assert command[command.index(flag) + 1] in exposed
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0"  # scraped from outside the container


def test_the_healthcheck_asks_healthz_on_the_metrics_port_and_sigterm_stops_pid_1() -> None:
    (healthcheck,) = all_of("HEALTHCHECK")
    command = exec_form(all_of("CMD")[-1])
    port = command[command.index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/healthz" in healthcheck
    assert re.search(r"--interval=\d+s", healthcheck) and re.search(r"--timeout=\d+s", healthcheck)
    assert all_of("STOPSIGNAL") == ["SIGTERM"]
    assert exec_form(all_of("ENTRYPOINT")[-1]) == ["capture"]  # exec form: capture itself is PID 1


def test_compose_runs_ingest_with_the_webhook_and_the_backfill_on_one_volume() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    (service,) = spec["services"].values()
    command = service["command"]
    assert command[0] == "ingest" and "--backfill-follow" in command and "--webhook-port" in command
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE.parent / service["build"]["context"] / "pyproject.toml").exists()
    (volume,) = service["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/data" and name in spec["volumes"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # a TLS proxy in front
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= worst_case_stop()
    assert service["env_file"] == "capture.env"
    assert (COMPOSE.parent / "capture.env.example").exists()
    assert "deploy/capture.env" in (REPO_ROOT / ".gitignore").read_text()
