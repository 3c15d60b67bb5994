"""How much memory a batch's KV cache needs, and how much the device can give it.

The batching engine asks before it forms a batch, so a batch that would not fit is split
instead of running out of memory half-way. Nothing here imports torch: the sums use the
model's config, and the free-memory figure is handed in by the backend.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BYTES_PER_VALUE = {"float32": 4, "bfloat16": 2, "float16": 2}
SLIDING = "sliding_attention"
GIB = 2**30


@dataclass(frozen=True)
class KVCacheShape:
    """The per-token KV-cache geometry of a decoder, read from its (text) config."""

    full_layers: int
    sliding_layers: int
    sliding_window: int  # tokens a sliding layer keeps once decoding (0: no sliding layers)
    kv_heads: int
    head_dim: int
    bytes_per_value: int

    @classmethod
    def from_text_config(cls, config: Mapping[str, Any], dtype: str) -> KVCacheShape:
        """``config``: a text config as a dict (``model.config.get_text_config().to_dict()``)."""
        layers = int(config["num_hidden_layers"])
        types = list(config.get("layer_types") or ["full_attention"] * layers)
        window = config.get("sliding_window") or 0
        sliding = sum(kind == SLIDING for kind in types) if window else 0
        heads = int(config["num_attention_heads"])
        return cls(
            full_layers=layers - sliding,
            sliding_layers=sliding,
            sliding_window=int(window),
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            bytes_per_value=BYTES_PER_VALUE[dtype],
        )

    def batch_bytes(self, prompt_tokens: Sequence[int], max_new_tokens: int) -> int:
        """The most the KV cache of one ``generate`` over these rows holds at any moment.

        Rows are left-padded to the longest, so every row costs the longest prompt. Two
        moments compete for the peak. Right after the prefill every layer holds the whole
        padded prompt: transformers' sliding-window layer only trims to its window at the
        first decoding step. At the end full-attention layers hold prompt + answer and
        sliding layers their window.
        """
        if not prompt_tokens:
            return 0
        padded = max(prompt_tokens)
        total = padded + max_new_tokens
        after_prefill = (self.full_layers + self.sliding_layers) * padded
        at_end = self.full_layers * total + self.sliding_layers * min(total, self.sliding_window)
        per_layer_token = 2 * len(prompt_tokens) * self.kv_heads * self.head_dim * self.bytes_per_value  # K and V
        return per_layer_token * max(after_prefill, at_end)


def usable_bytes(free: int, total: int, utilization: float) -> int:
    """What a new batch may take on a GPU: free memory less the share of the total kept in reserve.

    ``utilization`` is GPU_MEMORY_UTILIZATION, the share of the device the worker may fill;
    the rest is headroom for the prefill's activations, the allocator and other processes.
    """
    return max(0, int(free - (1.0 - utilization) * total))


def system_memory(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> tuple[int, int] | None:
    """(available, total) RAM in bytes; None where it can't be read.

    Linux's /proc/meminfo, capped by the container's cgroup v2 memory limit when it has one:
    inside a container meminfo shows the host's RAM, and the limit is what the OOM killer
    enforces (available there: the limit less the usage, plus the page cache it can drop).
    """
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        available, total = int(fields["MemAvailable"].split()[0]) * 1024, int(fields["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None
    limit = _cgroup_memory(cgroup)
    if limit is None:
        return available, total
    return min(available, limit[0]), min(total, limit[1])


def _cgroup_memory(cgroup: Path) -> tuple[int, int] | None:
    """(available, limit) under a cgroup v2 ``memory.max``; None without a limit ("max") or cgroup v2."""
    try:
        raw = (cgroup / "memory.max").read_text().strip()
        if raw == "max":
            return None
        limit, current = int(raw), int((cgroup / "memory.current").read_text())
        stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines() if line.strip())
        reclaimable = int(stat.get("inactive_file", 0))
    except (OSError, ValueError):
        return None
    return max(0, limit - current + reclaimable), limit


def release_freed_heap() -> None:
    """Hand the heap's free pages back to the kernel (glibc's ``malloc_trim``), so that RAM
    available counts them.

    glibc keeps what a finished batch freed: on the stand-in, after a batch of 8 3225-token
    prompts (a 0.89 GiB KV cache) RSS stayed 1.25 GiB up, and the RAM available, the CPU
    budget, fell by as much; trimmed, it came back. Untrimmed, a job that fits alone would be
    refused because an earlier batch ran. A no-op where the C library has no malloc_trim.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None
