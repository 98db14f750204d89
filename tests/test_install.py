"""``pip install .`` into a fresh venv gives a working ``lanrage`` command, used from outside the checkout.

The source is copied first (without the checkout's venv, caches and build output), so
that the build writes nothing into the checkout and the installed command can only use
what the package ships: the migrations, the dashboard, every subcommand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

from lab.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("serve", "control-server", "relay-server", "party", "status", "events", "replay", "history",
               "diagnose", "sql", "db", "dashboard", "lab")
INSTALL_TIMEOUT_S = 600  # resolving and unpacking every dependency (from pip's cache when warm)


def _copy_source(target: Path) -> Path:
    ignored = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info", ".pytest_cache",
                                     ".ruff_cache", ".hypothesis", "*.db", "*.db-wal", "*.db-shm")
    return Path(shutil.copytree(ROOT, target, ignore=ignored, symlinks=True))


def test_pip_install_gives_the_lanrage_command(tmp_path: Path) -> None:
    source = _copy_source(tmp_path / "source")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                                str(source)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                               check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    lanrage = environment / "bin" / "lanrage"
    assert lanrage.is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = tmp_path / "state"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "LANRAGE_DB",
                                                                          "LANRAGE_STATE_DIR", "LANRAGE_API")}
    env["THESPIAN_BASE_IPADDR"] = "127.0.0.1"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(lanrage), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    # The command runs the installed copy, not the checkout's, and the package ships its data files.
    probe = ("import cli, store, api, pathlib; print(cli.__file__, store.__file__, "
             "(pathlib.Path(api.__file__).parent / 'dashboard.html').is_file())")
    where = subprocess.run([str(python), "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=60, check=True)
    assert str(ROOT) not in where.stdout and str(environment) in where.stdout
    assert where.stdout.split()[-1] == "True"

    # Only the product's top-level names, as the README lists them; never the tests. (pystun3,
    # a dependency, installs a top-level `tests` of its own: the files are counted by owner.)
    site = Path(where.stdout.split()[0]).parent
    record = next(site.glob("lanrage-*.dist-info")) / "RECORD"
    installed_names = {line.split("/")[0].split(",")[0] for line in record.read_text().splitlines()
                       if line and not line.startswith("..")}
    installed_names -= {"__pycache__", *(name for name in installed_names if name.endswith(".dist-info"))}
    ours = {"actors", "agent", "api", "cli.py", "commands", "events", "lab", "mesh", "migrations", "store"}
    assert installed_names == ours
    readme = (ROOT / "README.md").read_text()
    assert "top-level names: " + ", ".join(f"`{name.removesuffix('.py')}`" for name in sorted(ours)) in readme

    # One version number: the package's, `--version`'s and the one the events record.
    from actors.node import SOFTWARE_VERSION

    assert run("--version").stdout == f"lanrage {SOFTWARE_VERSION}\n"
    shown = subprocess.run([str(python), "-m", "pip", "show", "lanrage"], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert f"Version: {SOFTWARE_VERSION}" in shown.splitlines()

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: lanrage ")
    listed = {line.split()[0] for line in helped.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(SUBCOMMANDS)
    for command in SUBCOMMANDS:
        sub = run(command, "--help")
        assert sub.returncode == 0, f"{command}: {sub.stderr}"
        assert sub.stdout.startswith(f"Usage: lanrage {command}"), sub.stdout[:200]

    nobody = f"127.0.0.1:{free_port()}"
    status = run("status", "--api", nobody, "--state-dir", str(state))
    assert status.returncode == 2
    assert status.stdout == ""
    assert status.stderr.startswith(f"lanrage: no agent running at http://{nobody} ")
    assert "start one with `lanrage serve`" in status.stderr and len(status.stderr.splitlines()) == 1

    upgraded = run("db", "upgrade", "--state-dir", str(state))
    assert upgraded.returncode == 0, upgraded.stderr
    assert (state / "lanrage.db").is_file()
    views = run("sql", "SELECT count(*) AS n FROM connection_history", "--state-dir", str(state), "--json")
    assert views.returncode == 0, views.stderr
    assert '"n": 0' in views.stdout


def test_requirements_lock_satisfies_the_package_ranges() -> None:
    """Every pin in requirements.txt is inside the range pyproject.toml declares for it."""
    import tomllib

    from packaging.requirements import Requirement

    declared = {Requirement(text).name.lower(): Requirement(text)
                for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pinned[requirement.name.lower()] = next(iter(requirement.specifier)).version
    missing = sorted(set(declared) - set(pinned))
    assert not missing, f"declared in pyproject.toml but not pinned in requirements.txt: {missing}"
    for name, requirement in declared.items():
        assert requirement.specifier.contains(pinned[name]), \
            f"{name}=={pinned[name]} is outside {requirement}"
