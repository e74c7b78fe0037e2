"""The deployment files, checked as far as a machine without a container runtime can: compose.yaml
parses and wires migrate -> serve; every `maskline` command they run exists; the image installs the
wheel (not an editable checkout), runs as a user without privileges and checks /readyz; and
docs/deploy.md explains every setting compose passes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:  # type: ignore[type-arg]
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def _maskline_commands() -> list[list[str]]:
    """Every `maskline ...` command line compose.yaml and the Dockerfile run."""
    found = [
        [str(part) for part in service["command"]]
        for service in _compose()["services"].values()
        if service.get("command") and service["command"][0] == "maskline"
    ]
    for match in re.finditer(r"^CMD \[(.*)\]$", (ROOT / "Dockerfile").read_text(), re.M):
        parts = [p.strip().strip('"') for p in match.group(1).split(",")]
        if parts[0] == "maskline":
            found.append(parts)
    return found


def test_compose_wires_redis_postgres_migrate_and_serve() -> None:
    services = _compose()["services"]
    assert {"redis", "postgres", "migrate", "maskline"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    serve = services["maskline"]
    assert serve["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert serve["depends_on"]["redis"]["condition"] == "service_healthy"
    assert serve["environment"]["MASKLINE_EMBEDDED"] == "never"
    # A reload's stopping worker hands its queued connections to another (docs/deploy.md).
    assert serve["sysctls"]["net.ipv4.tcp_migrate_req"] == 1


def test_every_maskline_command_the_files_run_exists() -> None:
    commands = _maskline_commands()
    assert {tuple(c[:2]) for c in commands} >= {("maskline", "serve"), ("maskline", "migrate")}
    for command in commands:
        words = [w for w in command[1:] if not w.startswith("-") and "$" not in w]
        # the subcommand words, then --help: the parser must know every option the file passes
        options = [w for w in command[1:] if w.startswith("--")]
        result = subprocess.run(
            [sys.executable, "-m", "maskline", *words[:2], "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (command, result.stderr)
        for option in options:
            assert option in result.stdout, (command, option)


def test_the_image_installs_the_wheel_runs_unprivileged_and_checks_readiness() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM .* AS build$", dockerfile, re.M) and dockerfile.count("FROM ") == 2
    assert "pip wheel" in dockerfile and "pip install --no-cache-dir /wheels/*.whl" in dockerfile
    assert " -e " not in dockerfile and "COPY tests" not in dockerfile and "COPY bench" not in dockerfile
    user = re.search(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    for package in ("core", "pool", "sessions", "audit", "relay", "maskline", "migrations"):
        assert f"COPY {package} {package}" in dockerfile, f"the wheel would miss {package}/"


def test_deploy_doc_explains_every_setting_compose_passes() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    passed = {
        name for service in _compose()["services"].values() for name in (service.get("environment") or {})
    }
    passed |= {"MASKLINE_WORKERS"}
    missing = sorted(name for name in passed if name.startswith("MASKLINE_") and name not in doc)
    assert not missing, f"docs/deploy.md does not explain {missing}"
