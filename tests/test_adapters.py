"""LoRA adapters on the stand-in: loaded at start-up, checked against the model, chosen per job, with provenance.

The adapters are built once per session with PEFT (``tests/lora_adapters.py``), with fixed
random weights that change the answers. Answers are a few tokens: behaviour, not wording.
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


@pytest.fixture(scope="session")
def kit(settings, tmp_path_factory) -> Kit:
    import torch
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("adapters")
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
def transformers_adapter_worker(settings, kit):
    """The stand-in with two adapters, through Worker.start (the cold start, ADAPTERS set)."""
    loaded = Worker.start(replace(settings, engine="transformers", adapters=kit.specs("cardio", "notes")))
    yield loaded
    loaded.engine.close()


@pytest.fixture(params=ENGINES)
def adapter_worker(request):
    return request.getfixturevalue(f"{request.param}_adapter_worker")


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
    settings, kit, monkeypatch, names, problem
):
    monkeypatch.setattr(handler, "WORKER", None)
    monkeypatch.setattr(handler, "STARTUP_FAILURE", None)
    for engine in ENGINES:
        broken = replace(settings, engine=engine, adapters=kit.specs(*names))
        with pytest.raises(SettingsError, match=f"^ADAPTERS: {problem}"):
            Worker.start(broken)
    assert handler.start_or_record_failure(broken) is None
    answer = run(handler.handler(job()))
    assert set(answer) == {"error"} and answer["error"].startswith("worker cannot start: ADAPTERS: adapter ")
    assert "\n" not in answer["error"]


# ---- per job ---------------------------------------------------------------------------------


def test_each_job_picks_its_adapter_and_an_unknown_one_is_refused(adapter_worker, transformers_worker):
    answers = {name: run(adapter_worker.run(job(adapter=name))) for name in ("cardio", "notes", "base")}
    plain = run(transformers_worker.run(job()))  # the model without PEFT at all
    assert answers["base"]["output"] == plain["output"]
    assert len({answer["output"] for answer in answers.values()}) == 3
    assert run(adapter_worker.run(job()))["output"] == plain["output"]  # no field: the base model
    assert run(adapter_worker.run(job(adapter="cardiology"))) == {
        "error": "adapter: unknown adapter 'cardiology' (known: base, cardio, notes)"
    }


def test_an_adapters_answer_is_what_peft_itself_generates(adapter_worker, kit):
    """PEFT's own path: PeftModel.from_pretrained on the base it was built on, one plain generate."""
    import torch
    from peft import PeftModel
    from transformers import GenerationConfig

    from medgemma.decoding import RowDecoder
    from medgemma.request import parse_job_input

    ours = run(adapter_worker.run(job(adapter="cardio")))
    backend = adapter_worker.engine.backend
    prepared = backend.prepare(
        parse_job_input(job(adapter="cardio")["input"], adapter_worker.settings, adapters=["cardio"])
    )
    inputs = {name: tensor.unsqueeze(0) for name, tensor in prepared.features.items() if name != "pixel_values"}
    peft_model = PeftModel.from_pretrained(kit.base, str(kit.cardio)).eval()
    try:
        with torch.inference_mode():
            generated = peft_model.generate(
                **inputs,
                attention_mask=torch.ones_like(inputs["input_ids"]),
                pixel_values=prepared.features["pixel_values"],
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
