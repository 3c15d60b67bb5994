"""The CLI against the real worker (``handler.py --rp_serve_api`` with the stand-in model).

``local_worker_url`` comes from tests/conftest.py. The CLI runs in a temporary
directory with no RUNPOD_ENDPOINT_ID, so it uses local mode.
"""

from __future__ import annotations

import pytest
from client_fixtures import REPO_ROOT, cli_env, run_cli

from client.cli import EXIT_OK

pytestmark = pytest.mark.model

RAW = REPO_ROOT / "raw"
JOB_TIMEOUT_S = 600


def local_env(url: str) -> dict[str, str]:
    return cli_env(RUNPOD_BASE_URL=url)


@pytest.mark.timeout(JOB_TIMEOUT_S)
def test_one_document(local_worker_url, tmp_path):
    done = run_cli("--file", RAW / "EP001.md", env=local_env(local_worker_url), cwd=tmp_path, timeout=JOB_TIMEOUT_S)

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.strip()


@pytest.mark.timeout(JOB_TIMEOUT_S)
def test_one_document_async(local_worker_url, tmp_path):
    done = run_cli(
        "--file", RAW / "FF349.md", "--async", env=local_env(local_worker_url), cwd=tmp_path, timeout=JOB_TIMEOUT_S
    )

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.strip()
    assert "submitted" in done.stderr


@pytest.mark.timeout(2 * JOB_TIMEOUT_S)
def test_batch_of_raw_then_resume_skips_everything(local_worker_url, tmp_path):
    """Three of raw/'s notes (one in a subfolder): every note's summary, then a resume that skips them all."""
    raw, out = tmp_path / "raw", tmp_path / "summaries"
    for name, target in (("EP001.md", "EP001.md"), ("FF349.md", "FF349.md"), ("lab_panel_LP077.md", "labs/LP077.md")):
        (raw / target).parent.mkdir(parents=True, exist_ok=True)
        (raw / target).write_bytes((RAW / name).read_bytes())
    sources = sorted(path.relative_to(raw) for path in raw.rglob("*.md"))
    args = ("--batch", raw, "--out", out, "--concurrency", "2")

    first = run_cli(*args, env=local_env(local_worker_url), cwd=tmp_path, timeout=2 * JOB_TIMEOUT_S)

    assert first.returncode == EXIT_OK, first.stderr
    assert first.stderr.strip().splitlines()[-1] == f"{len(sources)} done, 0 skipped, 0 failed"
    written = sorted(path.relative_to(out) for path in out.rglob("*") if path.is_file())
    assert written == sources
    for relative in written:
        text = (out / relative).read_text(encoding="utf-8")
        assert text.startswith("---\nsource: ") and text.split("---\n", 2)[2].strip()

    second = run_cli(*args, env=local_env(local_worker_url), cwd=tmp_path, timeout=60)

    assert second.returncode == EXIT_OK, second.stderr
    assert second.stderr.strip().splitlines()[-1] == f"0 done, {len(sources)} skipped, 0 failed"
