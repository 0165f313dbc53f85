"""Repository contracts: the README's quick start, CI and the pins agree."""

import os
import re
import subprocess
import sys
import tomllib

from helpers import REPO


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the quick start is exactly two commands"
    main_cmd, test_cmd = block
    assert "lfa_ray.tune" in main_cmd and "pytest" in test_cmd
    assert test_cmd in (REPO / ".ci" / "run").read_text()


def test_dependencies_are_pinned_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["test"]
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]
    assert "torch==2.13.0" in deps and "ray[default,train,tune]==2.60.0" in deps


def test_the_code_passes_the_linter():
    """ruff (pinned in the test extra, rules in pyproject.toml) over the package, tests and benchmarks."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


_NO_NETWORK = """
import socket, sys
def refuse(*args, **kwargs):
    raise SystemExit(f"network: {args[:1]!r}")
socket.getaddrinfo = refuse
socket.socket.connect = refuse
for name in sys.argv[1:]:
    __import__(name)
print("ok")
"""


def test_importing_lfa_ray_reaches_for_no_network():
    """Every Ray worker imports these; albumentations alone asks PyPI for updates at import, which an
    offline GPU node answers only after its name lookup fails."""
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}

    def imports(*modules: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _NO_NETWORK, *modules], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=120)

    bare = imports("albumentations")
    assert bare.returncode != 0 and "network: ('pypi.org'" in bare.stderr  # what lfa_ray turns off
    ours = imports("lfa_ray.data", "lfa_ray.ray_train", "lfa_ray.tune", "lfa_ray.predict", "lfa_ray.evaluate")
    assert ours.returncode == 0 and ours.stdout.strip() == "ok", ours.stderr[-2000:]
