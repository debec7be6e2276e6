"""The prefix-cache counters of a vLLM server, read from its Prometheus endpoint (`GET <base_url>/metrics`).

In server mode the trainer sees no `RequestOutput.num_cached_tokens`: TRL's client returns token ids only. vLLM's
OpenAI server (what `trl vllm-serve` / scripts/vllm_server.py start) exports, per engine (label `engine`),
`vllm:prefix_cache_queries` (prompt tokens looked up in the prefix cache) and `vllm:prefix_cache_hits` (tokens found
there) as counters (`..._total` in the text format). The difference of two readings around one generate call is that
call's hit rate, as long as nothing else uses the server meanwhile (one trainer per server, as TRL's client assumes).

With data parallel > 1 every engine has its own cache and the server routes each request by load, so an S-GRPO exit
prompt finds its rollout's prefix only when it lands on the engine that generated the rollout: about 1/DP of the time.
"""

from __future__ import annotations

import re
import urllib.request

_COUNTER = re.compile(r"^vllm:prefix_cache_(queries|hits)(?:_total)?(?:\{([^}]*)\})?\s+(\S+)", re.MULTILINE)
_ENGINE = re.compile(r'engine="([^"]*)"')


def parse_prefix_cache_counters(text: str) -> dict[str, list[float]]:
    """{engine: [queried tokens, hit tokens]} from a Prometheus text exposition; {} when the counters are absent."""
    out: dict[str, list[float]] = {}
    for kind, labels, value in _COUNTER.findall(text):
        engine = _ENGINE.search(labels or "")
        counts = out.setdefault(engine.group(1) if engine else "0", [0.0, 0.0])
        counts[0 if kind == "queries" else 1] += float(value)
    return out


def read_prefix_cache_counters(base_url: str, timeout: float = 5.0) -> dict[str, list[float]] | None:
    """The server's counters now, or None when its metrics endpoint cannot be read (the run goes on unmeasured)."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/metrics", timeout=timeout) as response:
            return parse_prefix_cache_counters(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def cache_delta(before: dict[str, list[float]] | None, after: dict[str, list[float]] | None) -> tuple[list[int], int]:
    """([hit tokens, queried tokens] between two readings, summed over engines; the engines seen). [0, 0] when either
    reading failed."""
    if before is None or after is None:
        return [0, 0], 0
    queries = sum(after[e][0] - before.get(e, [0.0, 0.0])[0] for e in after)
    hits = sum(after[e][1] - before.get(e, [0.0, 0.0])[1] for e in after)
    return [int(hits), int(queries)], len(after)
