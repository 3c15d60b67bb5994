"""Benchmarks for the MedGemma worker.

``python -m bench`` (``bench/cpu.py``) measures the real worker on CPU with the
embedded stand-in model against the naive path the original projects use;
``python -m bench.gpu`` builds a model with MedGemma 1.5 4B's exact shapes on a
CUDA device and measures bf16 / nf4 / int8, batching, the naive path, static KV
cache and torch.compile. Both share ``bench.common`` for timing, medians, memory
sampling, the machine description and the one results table.
"""
