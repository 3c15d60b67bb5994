"""LoRA adapters on the stand-in: loaded at start-up, checked against the model, chosen per job, with provenance.

The adapters are built once per session with PEFT (``tests/lora_adapters.py``), with fixed
random weights that change the answers, for the stand-in both engines serve (``<engine>_kit``
is the same kit for each). Tests of what every
engine must do take ``engine``, ``kit`` and ``adapter_worker``, which follow ENGINES; tests of
the transformers engine's own batching and of PEFT's reference answers name it. Answers are a
few tokens: behaviour, not wording.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image

import handler
from client.results import OutputAssembler
from client.summary_files import render_summary
from medgemma.adapters import ADAPTER_FILES
from medgemma.engines.batching import BatchEngine
from medgemma.errors import SettingsError
from medgemma.images import encode_image
from medgemma.provenance import directory_hash
from medgemma.settings import AdapterSpec
from medgemma.sources import resolve_source
from medgemma.worker import Worker
from tests.conftest import ENGINES, run
from tests.lora_adapters import MLP, build_lora, edited_copy

pytestmark = pytest.mark.model

TOKENS = 5
TEXTS = [
    "SYNTHETIC. 64-year-old with exertional chest pain; troponin negative; ECG normal.",
    "SYNTHETIC. Sodium 128, potassium 5.9, creatinine 2.4. Summarize.",
    "What is sepsis?",
]


@dataclass(frozen=True)
class Kit:
    """The adapters built for the stand-in, and the base model PEFT built them on (for PEFT's own answers)."""

    base: object  # the stand-in, as transformers loads it
    cardio: Path  # rank 4 on attention
    notes: Path  # rank 8 on the MLP
    wrong_targets: Path  # cardio, claiming a layer the model lacks
    wrong_base: Path  # cardio, claiming another base model

    def specs(self, *names: str) -> tuple[AdapterSpec, ...]:
        return tuple(AdapterSpec(name, str(getattr(self, name.replace("-", "_")))) for name in names)


def build_kit(settings, root: Path) -> Kit:
    """Two adapters and two broken copies for the stand-in."""
    import torch
    from transformers import AutoModelForImageTextToText

    source = resolve_source(settings)
    base = AutoModelForImageTextToText.from_pretrained(source.location, dtype=torch.float32).eval()
    cardio = build_lora(base, root / "cardio", seed=1, rank=4)
    return Kit(
        base=base,
        cardio=cardio,
        notes=build_lora(base, root / "notes", seed=2, rank=8, targets=MLP),
        wrong_targets=edited_copy(cardio, root / "wrong-targets", target_modules=["q_proj", "v_proj", "wqkv"]),
        wrong_base=edited_copy(cardio, root / "wrong-base", base_model_name_or_path="google/gemma-3-1b-it"),
    )


@pytest.fixture(scope="session")
def transformers_kit(settings, tmp_path_factory) -> Kit:
    return build_kit(settings, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def transformers_adapter_worker(settings, transformers_kit):
    """The stand-in with two adapters, through Worker.start (the cold start, ADAPTERS set)."""
    specs = transformers_kit.specs("cardio", "notes")
    loaded = Worker.start(replace(settings, engine="transformers", adapters=specs))
    yield loaded
    loaded.engine.close()


@pytest.fixture(scope="session")
def vllm_kit(transformers_kit) -> Kit:
    return transformers_kit  # both engines serve the same multimodal checkpoint


@pytest.fixture(scope="module")
def vllm_adapter_worker(vllm_worker, vllm_kit):
    """The stand-in on vLLM with two adapters, through Worker.start (a second vLLM engine, closed
    after this module so that the rest of the session does not hold its memory)."""
    specs = vllm_kit.specs("cardio", "notes")
    loaded = Worker.start(replace(vllm_worker.settings, adapters=specs))
    yield loaded
    loaded.engine.close()


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture
def kit(engine, request) -> Kit:
    return request.getfixturevalue(f"{engine}_kit")


@pytest.fixture
def adapter_worker(engine, request) -> Worker:
    return request.getfixturevalue(f"{engine}_adapter_worker")


def job(text: str = TEXTS[0], **fields) -> dict:
    return {"id": "adapter-job", "input": {"text": text, "max_new_tokens": TOKENS, **fields}}


def together(worker: Worker, inputs: list[dict]) -> list[dict]:
    async def all_at_once():
        return await asyncio.gather(*(worker.run({"id": f"job-{i}", "input": data}) for i, data in enumerate(inputs)))

    return run(all_at_once())


# ---- start-up ------------------------------------------------------------------------------


def test_two_adapters_load_with_their_ranks_and_revisions(adapter_worker, kit):
    adapters = {adapter.name: adapter for adapter in adapter_worker.engine.info.adapters}
    assert list(adapters) == ["cardio", "notes"]
    assert (adapters["cardio"].rank, adapters["notes"].rank) == (4, 8)
    assert adapters["cardio"].revision == directory_hash(kit.cardio, ADAPTER_FILES)
    assert (
        adapters["cardio"].revision.startswith("sha256:") and adapters["notes"].revision != adapters["cardio"].revision
    )


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (("cardio", "wrong-targets"), "adapter 'wrong-targets' (.*) targets wqkv, which this model has no linear"),
        (("wrong-base",), "adapter 'wrong-base' (.*) was trained on 'google/gemma-3-1b-it', not on the model"),
    ],
)
def test_an_incompatible_adapter_stops_the_worker_with_one_line_before_loading(
    settings, engine, kit, monkeypatch, names, problem
):
    monkeypatch.setattr(handler, "WORKER", None)
    monkeypatch.setattr(handler, "STARTUP_FAILURE", None)
    broken = replace(settings, engine=engine, adapters=kit.specs(*names))
    with pytest.raises(SettingsError, match=f"^ADAPTERS: {problem}"):
        Worker.start(broken)
    assert handler.start_or_record_failure(broken) is None
    answer = run(handler.handler(job()))
    assert set(answer) == {"error"} and answer["error"].startswith("worker cannot start: ADAPTERS: adapter ")
    assert "\n" not in answer["error"]


# ---- per job ---------------------------------------------------------------------------------


def test_each_job_picks_its_adapter_and_an_unknown_one_is_refused(engine, adapter_worker, request):
    answers = {name: run(adapter_worker.run(job(adapter=name))) for name in ("cardio", "notes", "base")}
    plain = run(request.getfixturevalue(f"{engine}_worker").run(job()))  # the same engine without adapters
    assert answers["base"]["output"] == plain["output"]
    assert len({answer["output"] for answer in answers.values()}) == 3
    assert run(adapter_worker.run(job()))["output"] == plain["output"]  # no field: the base model
    assert run(adapter_worker.run(job(adapter="cardiology"))) == {
        "error": "adapter: unknown adapter 'cardiology' (known: base, cardio, notes)"
    }


def test_an_adapters_answer_is_what_peft_itself_generates(transformers_adapter_worker, transformers_kit):
    """PEFT's own path: PeftModel.from_pretrained on the base it was built on, one plain generate."""
    worker, kit = transformers_adapter_worker, transformers_kit
    import torch
    from peft import PeftModel
    from transformers import GenerationConfig

    from medgemma.decoding import RowDecoder
    from medgemma.request import parse_job_input

    ours = run(worker.run(job(adapter="cardio")))
    backend = worker.engine.backend
    prepared = backend.prepare(parse_job_input(job(adapter="cardio")["input"], worker.settings, adapters=["cardio"]))
    inputs = {name: tensor.unsqueeze(0) for name, tensor in prepared.features.items() if name != "pixel_values"}
    if "pixel_values" in prepared.features:  # none without the dummy image (TEST_ENV)
        inputs["pixel_values"] = prepared.features["pixel_values"]
    peft_model = PeftModel.from_pretrained(kit.base, str(kit.cardio)).eval()
    try:
        with torch.inference_mode():
            generated = peft_model.generate(
                **inputs,
                attention_mask=torch.ones_like(inputs["input_ids"]),
                generation_config=GenerationConfig(
                    max_new_tokens=TOKENS, do_sample=False, eos_token_id=[1, 106], pad_token_id=0
                ),
            )
    finally:
        peft_model.unload()
    decoder = RowDecoder(backend.tokenizer, backend.eos_ids, backend.think_ids, None)
    for token in generated[0, inputs["input_ids"].shape[1] :].tolist():
        decoder.push(token)
    assert ours["output"] == decoder.text()
    assert ours["usage"]["completion_tokens"] == decoder.generated


def test_a_batch_mixing_adapters_gives_every_job_its_answer_alone(transformers_adapter_worker):
    worker = transformers_adapter_worker
    engine = BatchEngine(worker.engine.backend, max_batch_size=8, batch_wait_seconds=1.0)
    try:
        image = encode_image(Image.radial_gradient("L").convert("RGB"))
        inputs = [
            {"text": TEXTS[0], "adapter": "cardio", "max_new_tokens": TOKENS},
            {"text": TEXTS[1], "max_new_tokens": TOKENS},
            {"text": TEXTS[2], "adapter": "notes", "max_new_tokens": TOKENS},
            {"text": TEXTS[0], "adapter": "notes", "max_new_tokens": TOKENS, "image": image},
            {"text": TEXTS[1], "adapter": "cardio", "max_new_tokens": TOKENS},
        ]
        batched = together(Worker(replace(worker.settings, dummy_image=False), engine), inputs)
    finally:
        engine.close()
    assert [answer["batch_size"] for answer in batched] == [5] * 5
    for data, answer in zip(inputs, batched, strict=True):
        alone = run(Worker(replace(worker.settings, dummy_image=False), worker.engine).run({"id": "a", "input": data}))
        assert alone["batch_size"] == 1 and alone["adapter"] == data.get("adapter")
        assert (answer["output"], answer["usage"]) == (alone["output"], alone["usage"])


def test_vllm_serves_each_adapter_as_peft_generates_it_alone_or_mixed(vllm_adapter_worker, vllm_kit, vllm_worker):
    """vLLM's LoRA kernels against PEFT's own generate on the same base, and in a mixed batch.

    A base-model row must be the base model's answer (vLLM's CPU LoRA ops gave it the last adapter).
    """
    import torch
    from peft import PeftModel
    from transformers import GenerationConfig

    from medgemma.decoding import RowDecoder

    worker, engine = vllm_adapter_worker, vllm_adapter_worker.engine
    inputs = [
        {"text": TEXTS[0], "adapter": "cardio", "max_new_tokens": TOKENS},
        {"text": TEXTS[1], "max_new_tokens": TOKENS},
        {"text": TEXTS[2], "adapter": "notes", "max_new_tokens": TOKENS},
        {"text": TEXTS[1], "adapter": "cardio", "max_new_tokens": TOKENS},
    ]
    mixed = together(worker, inputs)
    for data, answer in zip(inputs, mixed, strict=True):
        alone = run(worker.run({"id": "a", "input": data}))
        assert alone["adapter"] == data.get("adapter")
        assert (answer["output"], answer["usage"]) == (alone["output"], alone["usage"])
    for data, answer in zip(inputs, mixed, strict=True):
        if "adapter" not in data:
            plain = run(vllm_worker.run({"id": "p", "input": data}))
            assert (answer["output"], answer["usage"]) == (plain["output"], plain["usage"])
            continue
        request = worker.validate({"id": "peft", "input": data})
        ids = torch.tensor([engine.prompts.build(request.messages()).ids])
        peft_model = PeftModel.from_pretrained(vllm_kit.base, str(getattr(vllm_kit, data["adapter"])))
        try:
            with torch.inference_mode():
                generated = peft_model.eval().generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    generation_config=GenerationConfig(
                        max_new_tokens=TOKENS, do_sample=False, eos_token_id=engine.stop_ids, pad_token_id=0
                    ),
                )
        finally:
            peft_model.unload()
        decoder = RowDecoder(engine.tokenizer, engine.stop_ids, engine.think_ids, None)
        for token in generated[0, ids.shape[1] :].tolist():
            decoder.push(token)
        assert answer["output"] == decoder.text(), data
        assert answer["usage"]["completion_tokens"] == decoder.generated


def test_the_openai_route_names_adapters_as_models(adapter_worker, monkeypatch):
    """The openai SDK through the RunPod double: /v1/models lists the adapters, ``model`` picks one."""
    import openai
    from runpod_double import RunPodDouble

    from medgemma.openai_api import served_model_id

    monkeypatch.setattr(handler, "WORKER", adapter_worker)
    served = served_model_id(adapter_worker.settings)
    messages = [
        {"role": "system", "content": "You are a concise clinical assistant."},
        {"role": "user", "content": TEXTS[0]},
    ]
    with RunPodDouble(handler=handler.handler) as double:
        client = openai.OpenAI(
            api_key=double.api_key,
            base_url=f"{double.base_url}/{double.endpoint_id}/openai/v1",
            max_retries=0,
            http_client=openai.DefaultHttpx2Client(trust_env=False),
        )
        models = list(client.models.list())
        assert [(model.id, model.to_dict().get("parent")) for model in models] == [
            (served, None),
            ("cardio", served),
            ("notes", served),
        ]
        assert client.models.retrieve("notes").to_dict()["root"] == str(
            next(a.source for a in adapter_worker.engine.info.adapters if a.name == "notes")
        )
        answers = {
            model: client.chat.completions.create(model=model, messages=messages, max_tokens=TOKENS)
            for model in ("cardio", "medgemma")
        }
        with pytest.raises(openai.NotFoundError, match="and its adapters 'cardio', 'notes'"):
            client.chat.completions.create(model="cardiology", messages=messages, max_tokens=TOKENS)
    assert answers["cardio"].model == "cardio" and answers["medgemma"].model == served
    native = run(
        adapter_worker.run({"id": "n", "input": {"messages": messages, "adapter": "cardio", "max_new_tokens": TOKENS}})
    )
    assert answers["cardio"].choices[0].message.content == native["output"]
    assert answers["cardio"].choices[0].message.content != answers["medgemma"].choices[0].message.content


# ---- ADAPTER_MERGE ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_worker(settings, transformers_kit):
    """The stand-in with cardio merged into its weights (ADAPTER_MERGE=true)."""
    merged = replace(settings, engine="transformers", adapters=transformers_kit.specs("cardio"), adapter_merge=True)
    loaded = Worker.start(merged)
    yield loaded
    loaded.engine.close()


def test_a_merged_adapter_answers_as_the_separate_one_and_every_job_gets_it(merged_worker, transformers_adapter_worker):
    separate = run(transformers_adapter_worker.run(job(adapter="cardio")))
    unnamed, named = (run(merged_worker.run(data)) for data in (job(), job(adapter="cardio")))
    assert unnamed["output"] == named["output"] == separate["output"]
    assert unnamed["adapter"] == "cardio" and unnamed["provenance"] == separate["provenance"]
    assert run(merged_worker.run(job(adapter="base")))["error"].startswith("adapter: this worker serves the adapter")


def test_merging_is_refused_on_vllm_and_on_quantized_weights(settings, transformers_adapter_worker, transformers_kit):
    from types import SimpleNamespace

    from medgemma.engines.transformers import HFBackend

    with pytest.raises(SettingsError, match="ADAPTER_MERGE=true is for ENGINE=transformers"):
        Worker.start(replace(settings, engine="vllm", adapters=transformers_kit.specs("cardio"), adapter_merge=True))
    quantized = SimpleNamespace(info=SimpleNamespace(quantization="nf4 (pre-quantized)"))
    adapter = transformers_adapter_worker.engine.info.adapters[0]
    with pytest.raises(
        SettingsError, match="merging adapter 'cardio' into nf4 \\(pre-quantized\\) weights would round"
    ):
        HFBackend._merge(quantized, [adapter])  # refused before the model is touched


# ---- provenance ------------------------------------------------------------------------------


def test_every_answer_says_which_weights_answered(adapter_worker, kit, caplog):
    info = adapter_worker.engine.info
    base = run(adapter_worker.run(job(adapter="base")))
    caplog.clear()
    with caplog.at_level("INFO", logger="medgemma.worker"):
        adapted = run(adapter_worker.run(job(adapter="notes")))
    model = {"model": info.source, "model_revision": info.revision}
    assert info.source.startswith("embedded-standin:") and info.revision.startswith(("sha256:", "fingerprint:"))
    assert adapted["adapter"] == "notes"
    assert adapted["provenance"] == {
        **model,
        "adapter": "notes",
        "adapter_revision": directory_hash(kit.notes, ADAPTER_FILES),
    }
    assert base["adapter"] is None and base["provenance"] == {**model, "adapter": None, "adapter_revision": None}
    done = [record.getMessage() for record in caplog.records if " done: " in record.getMessage()]
    assert len(done) == 1 and " adapter=notes " in done[0] and TEXTS[0] not in caplog.text


def test_the_summary_files_front_matter_records_the_adapter(adapter_worker):
    """The client's own parsing and rendering of a real answer."""
    assembler = OutputAssembler("job-1")
    assembler.add_output(run(adapter_worker.run(job(adapter="cardio"))))
    header = render_summary(assembler.result(), "EP001.md").split("---\n")[1]
    fields = dict(line.split(": ", 1) for line in header.strip().splitlines())
    assert json.loads(fields["adapter"]) == "cardio"
    provenance = json.loads(fields["provenance"])
    assert provenance["adapter"] == "cardio" and provenance["adapter_revision"].startswith("sha256:")
    assert provenance["model_revision"] == adapter_worker.engine.info.revision
