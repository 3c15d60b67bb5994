"""MedGemma 1.5 4B's shapes as a random-weight model, and prompts built from token ids.

The repo's one copy of MedGemma 1.5 4B's config.json (``build_config``), the model built from
it on any device (``build_model``), the worker's own ``HFBackend`` around it (``as_loaded``,
with a tokenizer and processor that serve token-id prompts), and prompts laid out as the chat
template lays them out (``make_prepared``). Shared by ``bench.gpu``, ``bench.rehearsal`` and
``bench.kv_table``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.common import pin_generation

# MedGemma 1.5 4B (google/medgemma-1.5-4b-it), as in its config.json.
BOS, BOI, EOI, IMAGE_TOKEN = 2, 255_999, 256_000, 262_144
EOS_IDS, PAD = [1, 106], 0
TEXT_SHAPES: dict[str, Any] = dict(
    vocab_size=262_208,
    hidden_size=2560,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    intermediate_size=10_240,
    sliding_window=1024,
    query_pre_attn_scalar=256,
    max_position_embeddings=131_072,
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
)
VISION_SHAPES: dict[str, Any] = dict(
    image_size=896,
    patch_size=14,
    hidden_size=1152,
    num_hidden_layers=27,
    intermediate_size=4304,
    num_attention_heads=16,
    layer_norm_eps=1e-6,
    vision_use_head=False,
)
MM_TOKENS = 256
SLIDING_PATTERN = 6  # 5 local layers then 1 global
ROPE = {"global": 1_000_000.0, "local": 10_000.0, "linear_factor": 8.0}
# Plumbing check without a GPU (--cpu-dry-run): the same code on toy shapes. Every width is
# a multiple of 64: bitsandbytes' CPU 4-bit kernels quantize in blocks of 64 input features.
TINY_TEXT: dict[str, Any] = {
    **TEXT_SHAPES,
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "head_dim": 32,  # the smallest head vLLM's CPU attention serves
    "intermediate_size": 128,
    "sliding_window": 64,
}
TINY_VISION: dict[str, Any] = {
    **VISION_SHAPES,
    "image_size": 56,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 2,
}
TINY_MM_TOKENS = 4


# -- the model -------------------------------------------------------------------------------


def build_config(tiny: bool, text_layers: int | None = None, vision_layers: int | None = None) -> Any:
    """A Gemma3Config with MedGemma 1.5 4B's shapes (or toy shapes for the CPU dry run).

    ``text_layers`` / ``vision_layers`` cut the depth and nothing else (a fast shape check);
    a cut decoder still ends with a global-attention layer, so both kinds are exercised.
    """
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    shapes = dict(TINY_TEXT if tiny else TEXT_SHAPES)
    vision_shapes = dict(TINY_VISION if tiny else VISION_SHAPES)
    if vision_layers is not None:
        vision_shapes["num_hidden_layers"] = vision_layers
    layer_types = [
        "full_attention" if (index + 1) % SLIDING_PATTERN == 0 else "sliding_attention"
        for index in range(shapes["num_hidden_layers"])
    ]
    if text_layers is not None:
        shapes["num_hidden_layers"] = text_layers
        layer_types = layer_types[: text_layers - 1] + ["full_attention"]
    common = dict(shapes, layer_types=layer_types, eos_token_id=EOS_IDS, pad_token_id=PAD, bos_token_id=BOS)
    try:  # transformers 5: one rope dict per attention type
        text = Gemma3TextConfig(
            **common,
            rope_parameters={
                "full_attention": {
                    "rope_type": "linear",
                    "factor": ROPE["linear_factor"],
                    "rope_theta": ROPE["global"],
                },
                "sliding_attention": {"rope_type": "default", "rope_theta": ROPE["local"]},
            },
        )
    except TypeError:  # transformers 4.x spelling
        text = Gemma3TextConfig(
            **common,
            rope_theta=ROPE["global"],
            rope_local_base_freq=ROPE["local"],
            rope_scaling={"rope_type": "linear", "factor": ROPE["linear_factor"]},
        )
    vision = SiglipVisionConfig(**vision_shapes)
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TINY_MM_TOKENS if tiny else MM_TOKENS,
        boi_token_index=BOI,
        eoi_token_index=EOI,
        image_token_index=IMAGE_TOKEN,
        eos_token_id=EOS_IDS,
    )


def build_model(config: Any, device: str) -> Any:
    """Random-weight bf16 model created on the device itself (no minutes-long CPU init and copy)."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    # HF zero-initialises the projector, which would make images a no-op.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.02)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = EOS_IDS, PAD
    model.generation_config.bos_token_id = BOS
    return model.eval()


class _IdsOnlyTokenizer:
    """What HFBackend needs from a tokenizer when prompts arrive as token ids."""

    eos_token_id, pad_token_id, unk_token_id = EOS_IDS[0], PAD, 3

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self.unk_token_id] * len(tokens)  # no thinking markers to strip

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""  # random weights: the text is meaningless, and decoding is not what is measured


class _IdsOnlyProcessor:
    """What HFBackend needs from a processor when prompts arrive as token ids (its prompt builder is unused)."""

    tokenizer = _IdsOnlyTokenizer()
    chat_template = ""
    boi_token = full_image_sequence = "<start_of_image>"


def as_loaded(model: Any, label: str, load_seconds: float, **overrides: Any) -> Any:
    """Wrap a model in the worker's own HFBackend, so "ours" runs the worker's collate/generate code."""
    from medgemma.engines.base import ModelInfo
    from medgemma.engines.transformers import HFBackend

    device = str(next(model.parameters()).device.type)
    info = ModelInfo(
        engine="transformers",
        source=f"random-weights:{label}",
        run_mode=f"{device}/{label}",
        device=device,
        dtype="bfloat16",
        quantization=label,
        load_seconds=round(load_seconds, 2),
        context_length=int(model.config.get_text_config().max_position_embeddings),
        vision=True,
        max_concurrency=1,
    )
    loaded = HFBackend(_IdsOnlyProcessor(), model, info)
    pin_generation(loaded, **overrides)
    return loaded


# -- prompts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Everything that decides a prompt's cost."""

    text_tokens: int
    image: bool
    new_tokens: int


def make_prepared(shape: Shape, config: Any, seed: int) -> Any:
    """A ``medgemma.engines.base.Prepared`` built from token ids, laid out like the chat template's output."""
    import torch

    from medgemma.engines.base import Prepared
    from medgemma.request import GenerationRequest
    from medgemma.tokens import Prompt

    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1000, 250_000, (shape.text_tokens,), generator=generator)
    text[0] = BOS
    types = torch.zeros_like(text)
    pixels = None
    if shape.image:  # system prompt, then the image, then the document, as the template puts them
        head, tail = text[:16], text[16:]
        mm = config.mm_tokens_per_image
        image = torch.tensor([BOI] + [IMAGE_TOKEN] * mm + [EOI])
        text = torch.cat([head, image, tail])
        types = torch.zeros_like(text)
        types[len(head) + 1 : len(head) + 1 + mm] = 1
        size = config.vision_config.image_size
        pixels = torch.ones((1, 3, size, size))  # a white image after (x - 0.5) / 0.5 normalisation
    request = GenerationRequest(
        text="(token ids)",
        system_prompt="",
        mode="summarize",
        used_dummy_image=shape.image,
        max_new_tokens=shape.new_tokens,
    )
    features = {"input_ids": text, "token_type_ids": types}
    if pixels is not None:
        features["pixel_values"] = pixels
    return Prepared(request=request, prompt=Prompt(ids=text.tolist()), prepare_seconds=0.0, features=features)


def naive_inputs(prepared: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """What ``processor(...).to(device, dtype)`` hands to ``generate`` in the original projects."""
    inputs = {
        "input_ids": prepared.features["input_ids"][None].to(device),
        "attention_mask": prepared.features["input_ids"].new_ones((1, prepared.prompt_tokens)).to(device),
        "token_type_ids": prepared.features["token_type_ids"][None].to(device),
    }
    if "pixel_values" in prepared.features:
        inputs["pixel_values"] = prepared.features["pixel_values"].to(device, dtype=dtype)
    return inputs


def naive_quantization() -> Any:
    """The original projects' BitsAndBytesConfig: nf4 with float16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float16,
    )
