"""Server mode's prefix-cache hit rate (issue 28, item 6): the vLLM server's Prometheus counters, read around S-GRPO's
exit call and logged as `sgrpo/exit_prompt_cached_frac`, as colocate logs it. A local HTTP stub serves the counters in
vLLM's text format; a real server on GPUs was not run."""

import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from trainers.vllm_metrics import cache_delta, parse_prefix_cache_counters, read_prefix_cache_counters


def exposition(engines: dict[str, tuple[float, float]]) -> str:
    """Counters as prometheus_client writes them for vLLM (`_total` and `_created` samples, per-engine labels)."""
    lines = ["# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.",
             "# TYPE vllm:prefix_cache_queries counter"]
    for engine, (queries, hits) in engines.items():
        labels = f'engine="{engine}",model_name="Qwen/Qwen3-8B"'
        lines += [f"vllm:prefix_cache_queries_total{{{labels}}} {queries}",
                  f"vllm:prefix_cache_queries_created{{{labels}}} 1.7e+09",
                  f"vllm:prefix_cache_hits_total{{{labels}}} {hits}",
                  f"vllm:external_prefix_cache_queries_total{{{labels}}} 999.0"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def metrics_server():
    """A stub /metrics whose counters the test sets; yields (base_url, state)."""
    state = {"engines": {"0": (0.0, 0.0)}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = exposition(state["engines"]).encode() if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_parse_counters_per_engine():
    text = exposition({"0": (1000.0, 900.0), "1": (500.0, 50.0)})
    assert parse_prefix_cache_counters(text) == {"0": [1000.0, 900.0], "1": [500.0, 50.0]}
    assert parse_prefix_cache_counters("vllm:num_requests_running 3\n") == {}
    before = {"0": [1000.0, 900.0], "1": [500.0, 50.0]}
    after = {"0": [1800.0, 1500.0], "1": [1300.0, 150.0]}
    assert cache_delta(before, after) == ([700, 1600], 2)
    assert cache_delta(None, after) == ([0, 0], 0)


def test_read_counters_from_the_endpoint(metrics_server):
    base_url, state = metrics_server
    state["engines"] = {"0": (10.0, 4.0)}
    assert read_prefix_cache_counters(base_url) == {"0": [10.0, 4.0]}
    assert read_prefix_cache_counters("http://127.0.0.1:9", timeout=1) is None  # nothing listens: unmeasured


def test_sgrpo_logs_the_server_hit_rate_around_the_exit_call(metrics_server):
    """`_count_cached_prompt_tokens` in server mode: the counters' growth during the exit call, on the process that
    holds the client; `_log_exit_cache` logs hits / queries. Two data-parallel engines, the exits landing half on the
    engine that holds their rollout."""
    from trainers.sgrpo import SGRPOTrainer

    base_url, state = metrics_server
    state["engines"] = {"0": (5000.0, 1000.0), "1": (5000.0, 1000.0)}
    vg = SimpleNamespace(mode="server", vllm_client=SimpleNamespace(base_url=base_url))
    trainer = SimpleNamespace(use_vllm=True, vllm_generation=vg, _metrics={"train": defaultdict(list)},
                              accelerator=SimpleNamespace(device="cpu", gather=lambda t: t))
    with SGRPOTrainer._count_cached_prompt_tokens(trainer) as counts:
        state["engines"] = {"0": (5000.0 + 2000, 1000.0 + 1900), "1": (5000.0 + 2000, 1000.0 + 100)}  # the exit call
    assert counts == [2000, 4000]
    trainer._sgrpo_exit_cache = counts
    SGRPOTrainer._log_exit_cache(trainer)
    assert trainer._metrics["train"]["sgrpo/exit_prompt_cached_frac"] == [0.5]

    other_rank = SimpleNamespace(use_vllm=True, vllm_generation=SimpleNamespace(mode="server"))  # no client there
    with SGRPOTrainer._count_cached_prompt_tokens(other_rank) as counts:
        pass
    assert counts == [0, 0]
