#!/bin/sh
# The image's entrypoint: decide where the Hugging Face cache lives, then run the CMD.
#
# - Weights baked in at build time (PRELOAD_MODEL=true) sit in the image's HF_HOME: serve
#   them offline, so a cold start never waits on the hub (nor is refused by the gated repo).
# - Otherwise, when a RunPod network volume is mounted at /runpod-volume, keep the cache
#   on it: the ~8.6 GB download then happens once per volume instead of once per worker.
# An HF_HOME or HF_HUB_OFFLINE set on the endpoint always wins.
set -eu
IMAGE_HF_HOME=/models/huggingface  # the Dockerfile's ENV HF_HOME
RUNPOD_VOLUME=/runpod-volume

if [ "${HF_HOME:-}" = "$IMAGE_HF_HOME" ]; then
    if [ -d "$IMAGE_HF_HOME/hub" ]; then
        export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
    elif [ -d "$RUNPOD_VOLUME" ]; then
        export HF_HOME="$RUNPOD_VOLUME/huggingface"
    fi
fi
exec "$@"
