"""The README's first two commands, run as written with Debian's own ``python3``.

Debian's system Python is "externally managed" (PEP 668): ``pip install`` into it stops
with ``externally-managed-environment``, and a fresh Debian has no pip at all. The commands
must therefore make their own virtual environment. The test runs them in a copy of the
repository with a ``PATH`` of Debian's directories only, so neither this interpreter nor
anything installed for it can help. The ``apt-get`` steps are not run (they need the
network); the packages they name are checked instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".*_cache")


def readme_commands() -> tuple[str, str]:
    """The first two ``sh`` blocks of "Try it, then test it": install + demo, then tests."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Try it, then test it")[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return blocks[0], blocks[1]


def steps(block: str) -> list[str]:
    """One shell command per ``&&`` step, in order."""
    return [s.strip() for line in block.splitlines() for s in line.split("&&") if s.strip()]


def externally_managed(python: Path) -> bool:
    """PEP 668's marker sits in the interpreter's stdlib directory."""
    done = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return (Path(done.stdout.strip()) / "EXTERNALLY-MANAGED").exists()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh copy of the repository, with no virtual environment in it."""
    if not DEBIAN_PYTHON.exists() or not externally_managed(DEBIAN_PYTHON):
        pytest.skip("no externally managed /usr/bin/python3 (not a Debian-style system)")
    target = tmp_path_factory.mktemp("install") / "retention"
    shutil.copytree(ROOT, target, ignore=NOT_COPIED)
    yield target


def run_shell(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``command`` under bash with Debian's PATH and none of this test run's Python settings."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYENV_VERSION")
    environment = {k: v for k, v in os.environ.items() if k not in dropped}
    environment["PATH"] = SYSTEM_PATH
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_readme_install_line_installs_the_packages_a_fresh_debian_lacks() -> None:
    apt = [s for s in steps(readme_commands()[0]) if "apt-get install" in s]

    assert len(apt) == 1
    packages = shlex.split(apt[0])
    assert "docker-registry" in packages
    assert "python3-venv" in packages, "Debian's python3 cannot make a venv without it"


def test_debians_python_refuses_pip_install_as_the_readme_must_expect(checkout: Path) -> None:
    done = run_shell("python3 -m pip install --dry-run -e .", checkout)

    assert done.returncode != 0
    assert "externally-managed-environment" in done.stderr or "No module named pip" in (
        done.stderr
    ), done.stderr


def first_command(checkout: Path) -> subprocess.CompletedProcess[str]:
    """The README's first command, run in the checkout, ``apt-get`` steps left out."""
    runnable = [s for s in steps(readme_commands()[0]) if not s.startswith("apt-get")]
    return run_shell(" && ".join(runnable), checkout)


def install_pip_step() -> str:
    """``tests/install.sh``'s one pip line: what the second command installs, and into what."""
    script = (ROOT / "tests" / "install.sh").read_text(encoding="utf-8")
    (line,) = [s.strip() for s in script.splitlines() if " -m pip install " in s]
    return line


def test_ci_runs_the_readmes_test_command_as_written() -> None:
    """Every CI run is the second command in a fresh clone: ``.ci/run`` runs it verbatim."""
    (test_command,) = (s.strip() for s in readme_commands()[1].splitlines() if s.strip())
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()

    assert any(line.strip() == test_command for line in ci), test_command


@pytest.mark.slow
def test_the_readme_commands_in_order_run_the_demo_then_resolve_the_test_extras(
    checkout: Path,
) -> None:
    """Both commands, in order, in one checkout, as a reader following the README does
    ("Try it, then test it"). The first runs as written: a fresh venv from Debian's python3,
    the install, the demo. The second's install (``tests/install.sh``) is resolved against
    the venv the first made (its pip line with ``--dry-run``), which is what could differ
    from CI: installed versions that clash with the test extras. Its real install and the
    test run are what ``.ci/run`` does in every fresh clone (the test above), so running
    them here again would cost 50 s of pip and prove nothing new.
    """
    done = first_command(checkout)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "pushed 46 tags" in done.stderr
    where = ".venv/bin/python -c 'import retention; print(retention.__file__)'"
    imported = run_shell(where, checkout)
    assert imported.stdout.strip() == str(checkout / "retention" / "__init__.py")
    base = run_shell(".venv/bin/python -c 'import sys; print(sys.base_prefix)'", checkout)
    assert base.stdout.strip() == "/usr", "the venv is made from Debian's own python3"

    install, test = (s for s in steps(readme_commands()[1]))
    assert install == "bash tests/install.sh"
    assert shlex.split(test)[0] == ".venv/bin/python", "pytest must run from the venv it installs"
    pip = install_pip_step()
    assert pip.startswith(".venv/bin/python -m pip install"), "install.sh adds to the same venv"

    resolved = run_shell(f"{pip} --dry-run --report -", checkout)

    assert resolved.returncode == 0, resolved.stdout[-2000:] + resolved.stderr[-4000:]
    added = {i["metadata"]["name"].lower() for i in json.loads(resolved.stdout)["install"]}
    assert {"retention", "pytest", "pytest-xdist", "mypy", "ruff"} <= added, sorted(added)
