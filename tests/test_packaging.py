"""The project as others install and import it.

* Every module of ``client/`` and ``medgemma/`` imports on its own, each in a fresh
  interpreter, so no import cycle can hide behind an import order that happens to work;
  the client never pulls in torch or the worker, and only engine modules pull in the
  heavy libraries.
* ``pip install ".[client]"`` into a fresh venv gives a working ``medgemma-client`` (run
  against the RunPod double) and installs no torch, no transformers and no top-level
  package with a generic name.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from runpod_double import RunPodDouble, fake_answer

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "vllm", "xgrammar", "llguidance")
# Prints which of our packages and which heavy libraries importing argv[1] loaded.
PROBE = (
    "import importlib, json, sys\n"
    "importlib.import_module(sys.argv[1])\n"
    "tops = {name.partition('.')[0] for name in sys.modules}\n"
    f"print(json.dumps(sorted(tops & {{'client', 'medgemma', *{HEAVY!r}}})))\n"
)
NOTE = "Synthetic note: 45-year-old, ankle sprain, discharged with crutches."


def modules_of(package: str) -> list[str]:
    """The package and every module under it, found on disk (so new modules are picked up).

    ``__main__`` is left out: importing it runs the program (the CLI tests run it).
    """
    names = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__":
            names.append(".".join(parts))
    return names


def import_alone(module: str) -> tuple[str, set[str] | str]:
    """Import ``module`` in a fresh interpreter: (module, top-level packages it loaded) or (module, error)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return module, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return module, set(json.loads(done.stdout.strip().splitlines()[-1]))


def import_each(modules: list[str]) -> dict[str, set[str] | str]:
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(import_alone, modules))


def test_every_client_module_imports_alone_without_torch_or_the_worker() -> None:
    modules = modules_of("client")
    assert {"client.cli", "client.jobs", "client.transport"} <= set(modules)

    loaded = import_each(modules)

    failed = {module: outcome for module, outcome in loaded.items() if isinstance(outcome, str)}
    assert not failed, f"modules that do not import on their own: {failed}"
    for module, packages in loaded.items():
        assert packages == {"client"}, f"{module} imports {sorted(packages - {'client'})}"


def test_every_worker_module_imports_alone_and_heavy_imports_stay_in_engines() -> None:
    modules = modules_of("medgemma")
    assert {"medgemma.settings", "medgemma.worker"} <= set(modules)

    loaded = import_each(modules)

    failed = {module: outcome for module, outcome in loaded.items() if isinstance(outcome, str)}
    assert not failed, f"modules that do not import on their own: {failed}"
    for module, packages in loaded.items():
        assert "client" not in packages, f"{module} imports the client"
        if not module.startswith("medgemma.engines"):
            assert not packages & set(HEAVY), f"{module} imports {sorted(packages & set(HEAVY))}"


def relative_imports(module: str) -> set[str]:
    """The package modules ``module`` imports by relative import, ``TYPE_CHECKING`` blocks included."""
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            target = f"{base}.{node.module}" if node.module else base
            found |= {f"{target}.{alias.name}" for alias in node.names} | {target}
    return found


def test_the_client_has_no_import_cycle_even_for_type_checking() -> None:
    modules = set(modules_of("client")) - {"client"}
    graph = {module: relative_imports(module) & modules - {module} for module in modules}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        for imported in sorted(graph[module]):
            found = cycle_from(imported, [*path, module])
            if found:
                return found
        return None

    cycles = [cycle for module in sorted(modules) if (cycle := cycle_from(module, []))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


def copy_checkout(target: Path) -> Path:
    """The checkout without its caches and outputs: building a wheel writes build/ and *.egg-info beside the sources."""
    skipped = {".git", ".venv", ".cache", ".mypy_cache", ".pytest_cache", "__pycache__", "build", "summaries", "out"}
    shutil.copytree(
        REPO,
        target,
        ignore=lambda _, names: [name for name in names if name in skipped or name.endswith(".egg-info")],
    )
    return target


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_client_only_install_in_a_fresh_venv_runs_a_job_without_torch(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "checkout")
    venv = tmp_path / "venv"
    # No pip inside the venv: the suite's pip installs into it (--python), which saves
    # creating one; the build itself is isolated as for any user.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python, script = venv / "bin" / "python", venv / "bin" / "medgemma-client"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", f"{source}[client]"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"medgemma-runpod", "requests", "python-dotenv", "tqdm"} <= installed
    assert not installed & {"torch", "transformers", "vllm", "runpod", "pillow"}, installed
    (site_packages,) = venv.glob("lib/python*/site-packages")
    assert (site_packages / "medgemma_client").is_dir()
    for generic in ("client", "medgemma", "builder", "tests", "handler.py"):
        assert not (site_packages / generic).exists(), f"installed a top-level {generic}"

    # Run from an empty directory with no PYTHONPATH: only what was installed can be imported.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RUNPOD_", "PYTHON"))}
    work = tmp_path / "work"
    work.mkdir()
    helped = subprocess.run([str(script), "--help"], env=env, cwd=work, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: medgemma-client")
    with RunPodDouble() as double:
        env.update(
            RUNPOD_API_KEY=double.api_key, RUNPOD_ENDPOINT_ID=double.endpoint_id, RUNPOD_BASE_URL=double.base_url
        )
        done = subprocess.run(
            [str(script), "--text", NOTE], env=env, cwd=work, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == fake_answer(NOTE) + "\n"
    assert double.count_requests("runsync") == 1
    probe = subprocess.run(
        [str(python), "-c", PROBE, "medgemma_client.cli"], env=env, cwd=work, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == [], "the installed client loaded torch or the worker"
