# syntax=docker/dockerfile:1
# MedGemma 1.5 4B serverless worker for RunPod (BuildKit, docker's default builder):
#
#   docker build -t medgemma-worker .      # weights downloaded at first start (set HF_TOKEN on the endpoint)
#   docker build --secret id=hf_token,env=HF_TOKEN --build-arg PRELOAD_MODEL=true -t medgemma-worker .
#   docker build --secret id=hf_token,env=HF_TOKEN --build-arg PRELOAD_MODEL=true --build-arg PREQUANTIZE=true \
#       -t medgemma-worker:nf4 .           # bakes a ready 4-bit copy instead of the bf16 weights

# Picks the final stage (bottom); declared before the first FROM so that a FROM can read it.
ARG PREQUANTIZE=false

# The image runs the versions the test suite ran (tests/test_builder.py checks it): torch
# 2.13.0 and vLLM 0.32.0 as CUDA 13 builds from PyPI (the suite runs their CPU twins), and
# the same transformers and bitsandbytes. The wheels bring their own CUDA libraries, so the
# base needs only the driver interface: hosts need a CUDA >= 13.0 driver (>= 580); restrict
# the endpoint's allowed CUDA versions accordingly. Ubuntu 24.04's Python is 3.12.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS worker

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# This image needs a GPU: DEVICE=cuda makes a worker without one stop with one line and
# ask RunPod for another machine, instead of serving minutes-long jobs on the CPU.
# ENGINE=vllm: a folder of notes is the main job, and vLLM does several times the documents/s
# (ENGINE=transformers starts faster, for sporadic traffic; figures: docs/performance.md).
# HF_HOME is where baked weights go; builder/start.sh moves it to a network volume when
# nothing is baked. RUNPOD_LOG_LEVEL=INFO: at DEBUG the SDK logs every job's input.
LABEL org.opencontainers.image.description="MedGemma on RunPod serverless; needs an NVIDIA GPU with a CUDA 13 driver"
ENV MODEL_ID=google/medgemma-1.5-4b-it \
    DEVICE=cuda \
    ENGINE=vllm \
    HF_HOME=/models/huggingface \
    RUNPOD_LOG_LEVEL=INFO \
    PYTHONUNBUFFERED=1
WORKDIR /worker

# Dependencies first, so that this layer is rebuilt only when they change.
COPY builder/requirements.txt builder/requirements.txt
RUN pip install --no-cache-dir -r builder/requirements.txt

COPY handler.py ./
COPY medgemma/ medgemma/
COPY builder/ builder/

# Optional weights (builder/download_model.py). The token is a BuildKit secret file,
# mounted for this RUN only; an ARG or ENV would be kept in the image's history.
# $HF_HOME/xet is only the downloader's chunk cache.
# PREQUANTIZE=true quantizes the downloaded weights to nf4 in the same layer and deletes
# the bf16 snapshot, so the image keeps only the ~3 GB 4-bit copy; it needs the weights,
# hence PRELOAD_MODEL=true. A docker build sees no GPU, so this quantizes on the builder's
# CPU, which bitsandbytes 0.50.2 supports (a pure PyTorch kernel writing the CUDA
# kernel's packed layout); the GPU then loads the result as is.
# ADAPTERS (docs/adapters.md): with PRELOAD_MODEL=true the hub adapters it names are baked
# too; the endpoint then sets the same ADAPTERS to serve them. The nf4 copy's directory is
# named after the model, so adapters trained on google/medgemma-1.5-4b-it recognise it as
# their base, and only the bf16 snapshot is deleted (baked adapters stay).
ARG PRELOAD_MODEL=false
ARG PREQUANTIZE
ARG ADAPTERS=""
RUN --mount=type=secret,id=hf_token python -m builder.download_model \
 && rm -rf "$HF_HOME/xet" \
 && if [ "$PREQUANTIZE" = true ]; then \
        [ "$PRELOAD_MODEL" = true ] || { echo "PREQUANTIZE=true needs PRELOAD_MODEL=true: it quantizes the downloaded weights" >&2; exit 1; }; \
        HF_HUB_OFFLINE=1 python -m builder.prequantize --output /models/nf4/medgemma-1.5-4b-it \
        && rm -rf "$HF_HOME/hub/models--google--medgemma-1.5-4b-it"; \
    fi

ENTRYPOINT ["/bin/sh", "/worker/builder/start.sh"]
CMD ["python", "-u", "handler.py"]

# The final image: the worker as built, or the worker serving its pre-quantized copy.
FROM worker AS prequantize-false
FROM worker AS prequantize-true
# The bitsandbytes nf4 copy is served by the transformers engine (its fastest cold start).
ENV MODEL_ID=/models/nf4/medgemma-1.5-4b-it ENGINE=transformers
FROM prequantize-${PREQUANTIZE}
