"""The wheel, built from this checkout: what it holds, and that an installed copy (the checkout
nowhere on sys.path) migrates, serves, stops cleanly, and refuses the benchmarks it does not ship."""

from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The interpreter running the tests is the project's virtualenv (.venv/bin/python under `make test`):
# it builds the wheel, and its site-packages provide the third-party dependencies.
PYTHON = sys.executable
PACKAGES = ("core", "pool", "audit", "sessions", "relay", "maskline", "migrations")
SHIPPED_SUFFIXES = (".py", ".lua", ".sql", ".json", ".html")
SERVE_READY_S = 20


@dataclass(frozen=True)
class Installed:
    target: Path  # where `pip install --target` put the wheel
    site_dirs: tuple[Path, ...]  # the venv's site-packages, for third-party dependencies only
    cwd: Path
    env: dict[str, str]
    logs: Path

    def command(self, *args: str) -> list[str]:
        # -S: no site module, so the venv's .pth files do not run; one of them installs the editable
        # install's finder, which maps `maskline` & co. to the checkout. PYTHONPATH alone decides.
        return [PYTHON, "-S", *args]

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "pip", *args],
        env={**(env or os.environ), "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the source tree by default (build/, maskline.egg-info), and build/lib keeps
    # the files of earlier builds, which then land in the wheel. Build in a scratch folder instead.
    scratch = tmp_path_factory.mktemp("wheel-build")
    config = scratch / "setup.cfg"
    config.write_text(f"[build]\nbuild_base = {scratch / 'build'}\n[egg_info]\negg_base = {scratch}\n")
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(config)}
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT), env=env)
    wheels = sorted(out.glob("maskline-*.whl"))
    assert len(wheels) == 1, f"expected one maskline wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def installed(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str
) -> Installed:
    target = tmp_path_factory.mktemp("installed")
    _pip("install", "--no-deps", "--target", str(target), str(wheel))
    paths = sysconfig.get_paths()
    site_dirs = tuple(dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MASKLINE_"))}
    env |= {
        "PYTHONPATH": os.pathsep.join(str(p) for p in (target, *site_dirs)),
        "MASKLINE_DATABASE_URL": database_url,
        "MASKLINE_REDIS_URL": redis_url,
        "MASKLINE_EMBEDDED": "never",
        "MASKLINE_DATA_DIR": str(tmp_path_factory.mktemp("data")),
    }
    cwd = tmp_path_factory.mktemp("elsewhere")  # `python -m` puts the cwd first on sys.path
    return Installed(target, site_dirs, cwd, env, tmp_path_factory.mktemp("logs"))


def _shipped_by_the_checkout() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.suffix in SHIPPED_SUFFIXES and "__pycache__" not in p.parts
    }


def test_the_wheel_holds_the_service_and_its_data_files_but_no_bench_or_tests(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    files = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    stray = sorted(n for n in names if n.split("/")[0] in ("bench", "tests"))
    assert not stray, f"the wheel must not ship bench/ or tests/: {stray}"
    assert "core/lua/_lib.lua" in files, "core/lua/_lib.lua (every script's helpers) is not in the wheel"
    for pattern in ("pool/lua/*.lua", "sessions/lua/*.lua", "migrations/*.sql"):
        wanted = {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern)}
        assert wanted, f"no {pattern} in the checkout"
        assert wanted <= files, f"{pattern} files missing from the wheel: {sorted(wanted - files)}"
    checkout = _shipped_by_the_checkout()
    assert files == checkout, (
        f"wheel and checkout differ: missing from the wheel {sorted(checkout - files)}, "
        f"in the wheel only (stale?) {sorted(files - checkout)}"
    )


def test_the_console_script_is_maskline_cli_main(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"maskline": "maskline.cli:main"}


def test_the_installed_copy_imports_from_the_install_not_the_checkout(installed: Installed) -> None:
    probe = (
        "import importlib, importlib.util, json, sys\n"
        f"files = {{n: importlib.import_module(n).__file__ for n in {PACKAGES!r}}}\n"
        "from maskline.migrate import find_migrations\n"
        "print(json.dumps({'files': files, 'path': sys.path,"
        " 'meta_path': [repr(f) for f in sys.meta_path],"
        " 'migrations': [version for version, _ in find_migrations()],"
        " 'bench': importlib.util.find_spec('bench') is not None}))\n"
    )
    done = installed.run("-c", "import maskline, migrations; print(maskline.__file__, migrations.__file__)")
    assert done.returncode == 0, done.stderr
    for file in done.stdout.split():
        assert Path(file).is_relative_to(installed.target), f"{file} is not from {installed.target}"
    done = installed.run("-c", probe)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    elsewhere = {n: f for n, f in seen["files"].items() if not Path(f).is_relative_to(installed.target)}
    assert not elsewhere, f"imported from outside {installed.target}: {elsewhere}"
    entries = {entry: (installed.cwd / entry).resolve() for entry in seen["path"]}  # '' is the cwd
    checkout_entries = [
        entry
        for entry, path in entries.items()
        if path.is_relative_to(ROOT) and path not in {p.resolve() for p in installed.site_dirs}
    ]
    assert not checkout_entries, f"sys.path names the checkout: {checkout_entries}"
    assert not [f for f in seen["meta_path"] if "editable" in f.lower()], seen["meta_path"]
    assert seen["migrations"] == sorted(p.stem for p in (ROOT / "migrations").glob("*.sql"))
    assert seen["bench"] is False, "bench is importable from the installed copy"


def test_the_installed_copy_migrates(installed: Installed) -> None:
    done = installed.run("-m", "maskline", "migrate", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "migration(s)" in done.stdout, done.stdout


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status)


def test_the_installed_copy_serves_health_and_stops_cleanly_on_sigterm(
    installed: Installed, app_port: int
) -> None:
    out, err = installed.logs / "serve.out", installed.logs / "serve.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        server = subprocess.Popen(
            installed.command("-m", "maskline", "serve", "--port", str(app_port)),
            cwd=installed.cwd,
            env=installed.env,
            stdout=stdout,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{app_port}"
    try:
        deadline = time.monotonic() + SERVE_READY_S
        status = None
        while status is None:
            if server.poll() is not None:
                pytest.fail(f"serve exited {server.returncode} before answering:\n{err.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no answer on {base}/healthz within {SERVE_READY_S} s:\n{err.read_text()}")
            try:
                status = _get(f"{base}/healthz")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert status == 200
        assert _get(f"{base}/readyz") == 200, "the installed copy does not reach Redis and Postgres"
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0, (
            f"serve exited {server.returncode} on SIGTERM:\n{err.read_text()}"
        )
        assert "maskline stopping" in out.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_installed_copy_says_the_benchmarks_ship_with_the_checkout(installed: Installed) -> None:
    done = installed.run("-m", "maskline", "bench", "sessions", timeout=60)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "benchmarks ship with the source checkout" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
