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
import logging, os, socket, sys
def refuse(*args, **kwargs):
    raise SystemExit(f"network: {args[:1]!r}")
socket.getaddrinfo = refuse
socket.socket.connect = refuse
for name in sys.argv[1:]:  # the libraries lfa_ray uses first: some set variables of their own at import
    if name.startswith("+"):
        __import__(name[1:])
before = dict(os.environ), logging.getLogger().level, len(logging.getLogger().handlers)
for name in sys.argv[1:]:
    if not name.startswith("+"):
        __import__(name)
changed = sorted(set(os.environ.items()) ^ set(before[0].items()))
print("ok" if not changed and before[1:] == (logging.getLogger().level, len(logging.getLogger().handlers))
      else f"changed: {changed}")
"""


def test_importing_lfa_ray_reaches_for_no_network_and_changes_no_global_state():
    """Every Ray worker imports these; albumentations alone asks PyPI for updates at import, which an
    offline GPU node answers only after its name lookup fails. Importing them leaves the process's
    environment variables and root logger as they were (Ray's settings are made when Ray starts)."""
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}

    def imports(*modules: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _NO_NETWORK, *modules], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=120)

    bare = imports("albumentations")
    assert bare.returncode != 0 and "network: ('pypi.org'" in bare.stderr  # what lfa_ray turns off
    libraries = ["+ray.train.torch", "+ray.tune", "+cv2", "+torch", "+pyarrow.fs", "+pandas", "+optuna",
                 "+tensorboardX"]
    modules = [f"lfa_ray.{p.stem}" for p in sorted((REPO / "lfa_ray").glob("*.py")) if p.stem != "__main__"]
    ours = imports(*libraries, *modules)
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
    assert entries == ["data", "evaluate", "export", "predict", "report", "train", "tune"]


def _library_imports() -> dict[str, set[str]]:
    """Which lfa_ray modules each library module imports, at its top or inside a function (its
    ``__main__`` entry left out; cli and __main__ are the commands, not the library)."""
    graph = {}
    for path in sorted((REPO / "lfa_ray").glob("*.py")):
        if path.name in ("cli.py", "__main__.py", "__init__.py"):
            continue
        found = set()
        for node in ast.parse(path.read_text()).body:
            if _main_guard(node):
                continue
            for n in ast.walk(node):
                if isinstance(n, ast.ImportFrom) and n.module == "lfa_ray":
                    found |= {a.name for a in n.names}
                elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lfa_ray."):
                    found.add(n.module.split(".")[1])
                elif isinstance(n, ast.Import):
                    found |= {a.name.split(".")[1] for a in n.names if a.name.startswith("lfa_ray.")}
        graph[path.stem] = found - {path.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of imports (its modules, the first repeated at the end), or [] where there is none."""
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> list[str]:
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return []
        for n in sorted(graph.get(m, ())):
            if found := visit(n, path + [m]):
                return found
        done.add(m)
        return []

    return next((c for m in sorted(graph) if (c := visit(m, []))), [])


def test_the_library_has_no_circle_of_imports():
    """Each module can be read with only the ones below it in mind: no two library modules import
    each other, directly or round a circle, not even inside a function."""
    graph = _library_imports()
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself finds one
    assert {"infer", "checkpoint", "runs", "refine"} <= set(graph) and "refine" in graph["infer"] | graph["runs"]
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_python_dash_m_lfa_ray_runs_each_command(capsys):
    """``python -m lfa_ray COMMAND`` is each command (as ``python -m lfa_ray.COMMAND`` is)."""
    import pytest

    from lfa_ray.__main__ import main

    for command in ("tune", "train", "predict", "evaluate", "export", "data", "report"):
        with pytest.raises(SystemExit) as done:  # argparse's --help
            main([command, "--help"])
        assert done.value.code == 0 and f"usage: lfa-{command}" in capsys.readouterr().out
    run = [sys.executable, "-m", "lfa_ray"]
    printed = subprocess.run([*run, "train", "--print-config", "--set", "train.lr=0.002"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0 and "lr: 0.002" in printed.stdout, printed.stderr[-2000:]
    wrong = subprocess.run([*run, "trian"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.strip() == (
        "error: 'trian' is not a command; choose one of tune, train, predict, evaluate, export, data, report")
