"""Bake MedGemma's weights (and any LoRA adapters) into the image's Hugging Face cache at build time.

The Dockerfile runs it as ``RUN --mount=type=secret,id=hf_token python -m builder.download_model``.
With ``PRELOAD_MODEL=true`` it downloads ``MODEL_ID`` into ``HF_HOME``, so a cold start
reads ~8.6 GB from local disk instead of from the hub, and every hub adapter named in
``ADAPTERS`` (its two files), which the worker then finds in the cache before asking the
hub; otherwise it skips, touching no network, and the worker downloads at its first start.

MedGemma is gated on the hub, so the download needs a token from an account that has
accepted its terms. The token is read only from the BuildKit secret file: a build ARG or
ENV would be recorded in the image's history, a secret mount is not. It is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TypedDict, Unpack

from medgemma.adapters import ADAPTER_FILES
from medgemma.errors import SettingsError
from medgemma.settings import EnvReader, Settings

SECRET_FILE = Path("/run/secrets/hf_token")
# Other frameworks' copies of the weights, which the worker never reads.
IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.gguf"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--token-file",
        type=Path,
        default=SECRET_FILE,
        help=f"file holding the Hugging Face token (default: the BuildKit secret {SECRET_FILE})",
    )
    args = parser.parse_args(argv)
    try:
        if not EnvReader(os.environ).boolean("PRELOAD_MODEL", default=False):
            print(
                "download_model: PRELOAD_MODEL is not true; skipped (the worker downloads the weights at its first start)"
            )
            return
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        sys.exit(f"download_model: {error}")
    model_id = settings.model_id
    if model_id is None:
        sys.exit("download_model: PRELOAD_MODEL=true needs MODEL_ID, e.g. google/medgemma-1.5-4b-it")
    # (what, hub id, snapshot_download filters): the model unless it is a local directory, then the hub adapters
    wanted: list[tuple[str, str, SnapshotFilters]] = (
        [("MODEL_ID", model_id, {"ignore_patterns": IGNORE_PATTERNS})] if not Path(model_id).is_dir() else []
    )
    wanted += [
        (f"adapter {spec.name}", spec.source, {"allow_patterns": list(ADAPTER_FILES)})
        for spec in settings.adapters
        if not Path(spec.source).is_dir()
    ]
    if not wanted:
        print(
            f"download_model: MODEL_ID is the local directory {model_id} and no adapter is on the hub; nothing to download"
        )
        return
    token = read_token(args.token_file, model_id)
    for what, repo_id, filters in wanted:
        started = time.perf_counter()
        path = download(repo_id, token, **filters)
        size_gb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9
        print(f"download_model: {what} {repo_id} -> {path} ({size_gb:.2f} GB in {time.perf_counter() - started:.0f} s)")


def read_token(token_file: Path, model_id: str) -> str:
    """The token from the secret file, or exit with what to do about its absence."""
    token = token_file.read_text().strip() if token_file.is_file() else ""
    if not token:
        sys.exit(
            f"download_model: PRELOAD_MODEL=true but there is no Hugging Face token in {token_file}. "
            f"{model_id} is gated: accept its terms at https://huggingface.co/{model_id}, then build with "
            "HF_TOKEN set and `docker build --secret id=hf_token,env=HF_TOKEN ...`"
        )
    return token


class SnapshotFilters(TypedDict, total=False):
    """snapshot_download's allow/ignore patterns."""

    allow_patterns: list[str]
    ignore_patterns: list[str]


def download(model_id: str, token: str, **filters: Unpack[SnapshotFilters]) -> Path:
    """snapshot_download (``filters``: its allow/ignore patterns) into HF_HOME's hub cache; one clear line on any failure."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(model_id, token=token, **filters))
    except GatedRepoError:
        problem = f"the token's account has no access to the gated {model_id}: accept its terms at https://huggingface.co/{model_id}"
    except RepositoryNotFoundError:
        problem = f"{model_id} was not found, or the token is invalid"
    except (HfHubHTTPError, OSError) as error:
        problem = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    sys.exit(f"download_model: downloading {model_id} failed: {problem}")


if __name__ == "__main__":
    main()
