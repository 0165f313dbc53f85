"""Repository contracts: the README's quick start, CI and the pins agree."""

import ast
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


def _main_guard(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and getattr(node.test.left, "id", None) == "__name__"
            and getattr(node.test.comparators[0], "value", None) == "__main__")


def _imports_cli(node) -> bool:
    return any((isinstance(n, ast.ImportFrom) and (n.module == "lfa_ray.cli" or
                                                   (n.module == "lfa_ray" and any(a.name == "cli" for a in n.names))))
               or (isinstance(n, ast.Import) and any(a.name == "lfa_ray.cli" for a in n.names))
               for n in ast.walk(node))


def test_library_modules_reach_the_cli_only_from_their_main_entry_and_before_defining_anything():
    """No library module imports lfa_ray.cli except in its ``if __name__ == "__main__"`` entry, and
    that entry comes first (after the docstring and ``from __future__``): ``python -m lfa_ray.tune``
    runs the command before the ``__main__`` copy defines anything, so the module's state (e.g.
    ``lfa_ray.tune.STARTED``) exists once, in the copy the command uses."""
    entries = []
    for path in sorted((REPO / "lfa_ray").glob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        body = ast.parse(path.read_text()).body
        for i, node in enumerate(body):
            if _main_guard(node):
                entries.append(path.stem)
                before = body[:i]
                assert all((isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                           or (isinstance(n, ast.ImportFrom) and n.module == "__future__") for n in before), path.name
            else:
                assert not _imports_cli(node), f"{path.name} imports lfa_ray.cli outside its __main__ entry"
    assert entries == ["data", "evaluate", "export", "predict", "train", "tune"]


def test_python_dash_m_lfa_ray_runs_each_command(capsys):
    """``python -m lfa_ray COMMAND`` is each command (as ``python -m lfa_ray.COMMAND`` is)."""
    import pytest

    from lfa_ray.__main__ import main

    for command in ("tune", "train", "predict", "evaluate", "export", "data"):
        with pytest.raises(SystemExit) as done:  # argparse's --help
            main([command, "--help"])
        assert done.value.code == 0 and f"usage: lfa-{command}" in capsys.readouterr().out
    run = [sys.executable, "-m", "lfa_ray"]
    printed = subprocess.run([*run, "train", "--print-config", "--set", "train.lr=0.002"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and "lr: 0.002" in printed.stdout, printed.stderr[-2000:]
    wrong = subprocess.run([*run, "trian"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.strip() == (
        "error: 'trian' is not a command; choose one of tune, train, predict, evaluate, export, data")
