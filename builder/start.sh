#!/bin/sh
# The image's entrypoint. Where the weights come from (baked into the image, RunPod's cached
# models, a network volume, or a download) is decided by the worker itself, in
# medgemma/sources.py, where it is tested; this only runs the CMD.
set -eu
exec "$@"
