"""The documents benchmarks send: ``raw/*.md``, cut to a length, or synthetic notes where it is absent.

Their text is never logged or printed.
"""

from __future__ import annotations

from bench.common import REPO_ROOT

SYNTHETIC_SENTENCES = (
    "SYNTHETIC NOTE for benchmarking; no real patient.",
    "A 64-year-old man presented with two days of productive cough, fever to 38.6 C and right-sided pleuritic chest pain.",
    "Chest radiograph showed right lower lobe consolidation without effusion.",
    "White cell count was 14.2 x10^9/L, CRP 182 mg/L, creatinine 1.4 mg/dL rising from a baseline of 1.0 mg/dL.",
    "He was treated with intravenous ceftriaxone 2 g daily and oral azithromycin 500 mg daily for five days.",
    "Oxygen saturation improved from 89% on room air to 96% on 2 L nasal cannula, weaned by day three.",
    "Home medications metformin 1000 mg twice daily and lisinopril 10 mg daily were held for acute kidney injury.",
    "Creatinine returned to 1.1 mg/dL before discharge; lisinopril was restarted, metformin resumed on day four.",
    "Discharged on amoxicillin-clavulanate 875/125 mg twice daily to complete seven days of therapy.",
    "Follow-up chest radiograph in six weeks; repeat basic metabolic panel in one week; primary care review in ten days.",
    "Pending at discharge: blood cultures (no growth at 48 hours) and Legionella urinary antigen.",
)


def load_documents(count: int, max_chars: int) -> tuple[list[str], str]:
    """``count`` documents cut to ``max_chars`` at a word boundary, and where they came from."""
    files = sorted((REPO_ROOT / "raw").glob("*.md"))
    if files:
        texts = [_truncate(path.read_text(errors="replace"), max_chars) for path in files[:count]]
        source = f"raw/*.md: {len(texts)} of {len(files)} files (sorted by name), each cut to <= {max_chars} chars"
    else:
        texts = [_synthetic_document(index, max_chars) for index in range(count)]
        source = f"raw/ absent: {count} synthetic notes of ~{max_chars} chars"
    while len(texts) < count:  # fewer files than asked for: reuse them in order
        texts.append(texts[len(texts) % len(files)])
    return texts, source


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def _synthetic_document(index: int, max_chars: int) -> str:
    sentences = SYNTHETIC_SENTENCES[1:]
    parts = [SYNTHETIC_SENTENCES[0], f"Document {index + 1}."]
    position = index
    while sum(len(part) + 1 for part in parts) < max_chars:
        parts.append(sentences[position % len(sentences)])
        position += 1
    return _truncate(" ".join(parts), max_chars)
