"""Rewards on hand-made completions: every reward on correct, wrong, answer only inside the thinking, no
`</think>`, unparseable and pathological inputs; string and conversational completions; the registry."""

import logging
import pickle
import sys
import threading

import pytest

from rewards import GUARD_COUNTS, build_reward_funcs, extract_answer, is_correct, validate_reward_names
from rewards.accuracy import AccuracyReward
from rewards.format import FormatReward, has_valid_format
from rewards.length import CosineReward, LengthPenaltyReward, cosine_scaled_reward, kimi_length_rewards
from rewards.math_verify_worker import GraderWorker
from rewards.parsing import completion_text, last_boxed

THINK = "Let me add 40 and 2. That gives 42."


def done(answer_text: str, thinking: str = THINK) -> str:
    """A completion as the policy writes it: it starts inside the thinking (the prompt opened `<think>`)."""
    return f"{thinking}\n</think>\n\n{answer_text}"


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def run_guarded(fn, limit_s: float = 300.0):
    """Run fn in a worker thread (the rewards must work off the main thread too). The join limit is only a
    guard so that a hang fails the test instead of blocking the suite; no timing is asserted."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), "reward hung on a pathological input"
    return result["value"]


# --- parsing -------------------------------------------------------------------------------------------------


def test_last_boxed_takes_last_complete_balanced_box():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{\sqrt{2}}}") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed(r"\boxed{7} and a cut-off \boxed{\frac{1}{2}") == "7"
    assert last_boxed(r"\boxed {x}") == "x"
    assert last_boxed("no box {here}") is None


def test_completion_text_handles_strings_chat_and_reasoning_content():
    assert completion_text("abc") == "abc"
    assert completion_text(chat("abc")) == "abc"
    parsed = [{"role": "assistant", "reasoning_content": "think", "content": r"\boxed{1}"}]
    assert extract_answer(parsed) == "1"  # TRL's parse_response moved the thinking out and dropped </think>


def test_extract_answer_only_after_think():
    assert extract_answer(done(r"The answer is \boxed{42}.")) == "42"
    assert extract_answer(done("I give up.", thinking=r"maybe \boxed{42}")) is None
    assert extract_answer(r"still thinking \boxed{42}") is None
    assert extract_answer(r"still thinking \boxed{42}", require_thinking=False) == "42"
    assert extract_answer(done(r"\boxed{}")) is None


# --- accuracy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_text", "gold", "expected"),
    [
        (r"The answer is \boxed{42}", "42", True),
        (r"The answer is \boxed{42}", 42, True),  # a numeric gold column
        (r"The answer is \boxed{41}", "42", False),
        (r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\boxed{\dfrac12}", "1/2", True),
        (r"\boxed{\frac{2}{3}}", r"\frac{1}{2}", False),
        (r"\boxed{\sqrt 2}", r"\sqrt{2}", True),
        (r"\boxed{x^2+1}", "1+x^2", True),
        (r"\boxed{C}", "C", True),  # GPQA letters
        (r"\boxed{(C)}", "C", True),
        (r"\boxed{\text{C}}", "(C)", True),
        (r"\boxed{D}", "C", False),
        (r"\boxed{c}", "C", False),
        (r"\boxed{41} no wait, \boxed{42}", "42", True),  # the LAST box counts
        (r"\boxed{42} no wait, \boxed{41}", "42", False),
        (r"\boxed{\frac{}{}\sqrt[}", "42", False),  # unparseable
        ("The answer is 42.", "42", False),  # no box
        (r"\boxed{1\,000}", "1000", True),  # LaTeX thin spaces in numbers (issue 28, item 5)
        (r"\boxed{1\;000\!000}", "1000000", True),
        (r"\boxed{1{,}000\,000}", "1000000", True),
        (r"\boxed{1000}", r"1\,000", True),  # in the gold too
        (r"\boxed{1\,000}", "100", False),
        (r"\boxed{3{,}14}", "314", False),  # a decimal comma is not a digit-group separator
    ],
)
def test_is_correct(answer_text, gold, expected):
    assert is_correct(done(answer_text), gold) is expected
    assert is_correct(chat(done(answer_text)), gold) is expected


def test_answer_inside_thinking_does_not_count():
    assert not is_correct(done("so it is 41", thinking=r"I think \boxed{42}"), "42")
    assert not is_correct(done(r"\boxed{41}", thinking=r"I think \boxed{42}"), "42")


def test_missing_think_end_scores_zero_unless_thinking_not_required():
    text = r"I think the answer is \boxed{42}"
    assert not is_correct(text, "42")
    assert is_correct(text, "42", require_thinking=False)
    assert AccuracyReward(require_thinking=False)([""], [text], answer=["42"]) == [1.0]


def test_accuracy_reward_strings_chat_and_scales():
    completions = [done(r"\boxed{42}"), done(r"\boxed{41}"), r"no end \boxed{42}", done(r"\boxed{42}", r"\boxed{4}")]
    prompts = ["q"] * 4
    assert AccuracyReward()(prompts, completions, answer=["42"] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert AccuracyReward()(prompts, [chat(c) for c in completions], answer=["42"] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert AccuracyReward(scale="pm1")(prompts, completions, answer=["42"] * 4) == [1.0, -1.0, -1.0, 1.0]


def test_accuracy_reward_needs_answers():
    with pytest.raises(ValueError, match="answer"):
        AccuracyReward()(["q"], [done(r"\boxed{1}")])


PATHOLOGICAL = {
    "huge string": done(r"\boxed{" + "1+" * 2_000_000 + "1}", thinking="x" * 5_000_000),
    "5000 nested fracs": done(r"\boxed{" + r"\frac{1}{" * 5000 + "2" + "}" * 5001),
    "deep but short": done(r"\boxed{" + "{" * 60 + "1" + "}" * 61),
    "100k-digit number": done(r"\boxed{" + "9" * 100_000 + "}"),
    "power tower": done(r"\boxed{2^{2^{2^{2^{100}}}}}"),  # short, but sympy would evaluate it forever
    "unclosed braces": done(r"\boxed{" * 200_000),
}


def test_pathological_inputs_score_zero_are_counted_and_reported(caplog):
    names = list(PATHOLOGICAL)
    metrics = []
    before = sum(GUARD_COUNTS.values())
    reward = AccuracyReward(timeout_seconds=2)
    with caplog.at_level(logging.WARNING, logger="rewards.accuracy"):
        rewards = run_guarded(
            lambda: reward(
                ["q"] * len(names),
                [PATHOLOGICAL[n] for n in names],
                answer=["1"] * len(names),
                log_metric=lambda key, value: metrics.append((key, value)),
            )
        )
    assert rewards == [0.0] * len(names)
    guarded = sum(GUARD_COUNTS.values()) - before
    # all but "unclosed braces" (no complete box: simply no answer) are guarded
    assert guarded == len(names) - 1
    assert metrics == [("rewards/accuracy/guarded", float(guarded))]
    assert "without full grading" in caplog.text
    # a normal answer still grades correctly afterwards (the worker survived or was restarted)
    assert is_correct(done(r"\boxed{42}"), "42")


def test_grading_worker_hard_timeout_kills_and_restarts():
    worker = GraderWorker()
    try:
        assert worker.grade("42", "42", timeout=30) == "correct"
        first_pid = worker._proc.pid
        # 0.5 s is below math-verify's own 1 s alarm in the worker: only the parent's kill can end it
        assert worker.grade("2^{2^{2^{2^{100}}}}", "1", timeout=0.5) == "timeout"
        assert worker._proc is None
        assert worker.grade(r"\frac{1}{2}", "0.5", timeout=30) == "correct"
        assert worker._proc.pid != first_pid
    finally:
        worker.close()


def test_grader_steps_share_one_budget_below_the_hard_limit():
    """Two parses and up to four verify calls, each with a whole-second alarm: their alarms together stay within the
    worker's budget, which is below the parent's hard limit (issue 28, item 5: six 1 s alarms against a 5 s kill)."""
    from rewards.math_verify_worker import BudgetSpent, StepClock, worker_budget

    for timeout in (3.0, 5.0, 10.0, 30.0):
        budget = worker_budget(timeout)
        for head_start in (0.0, 0.001, 0.5, 0.999):  # a fast step first, then every step runs until its alarm
            now = [head_start]
            clock = StepClock(budget, now=lambda now=now: now[0])
            now[0] += head_start
            for _step in range(6):
                try:
                    now[0] += clock.alarm()
                except BudgetSpent:
                    break
            assert now[0] - head_start < budget + 1 <= timeout - 1.0  # the last alarm fires >= 1 s before the kill
    assert worker_budget(5.0) == 3 and worker_budget(0.5) == 1
    fresh = StepClock(3, now=lambda: 0.0)
    assert [fresh.alarm() for _ in range(6)] == [3] * 6  # fast steps leave the whole budget to the next one


def test_grading_worker_uses_its_budget_then_answers():
    worker = GraderWorker()
    try:
        assert worker.grade(r"1\,000", "1000", timeout=5) == "wrong"  # the worker itself grades raw text
        assert worker.grade("1000", "1000", timeout=5) == "correct"
        assert worker.grade(r"\frac{1}{2}", "0.5", timeout=1.5) == "correct"  # a budget of 1 s still grades
    finally:
        worker.close()


# --- format --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (done(r"The answer is \boxed{42}"), True),
        ("<think>" + done(r"\boxed{42}"), True),  # a leading <think> is fine
        (done(r"\boxed{41}"), True),  # format does not check correctness
        (done("The answer is 42"), False),  # no box
        (done(r"\boxed{}"), False),
        (done(r"\boxed{42}", thinking="   "), False),  # empty thinking
        (done("ok", thinking=r"\boxed{42}"), False),  # box only inside the thinking
        (r"thinking \boxed{42}", False),  # no </think>
        (done(r"</think> \boxed{42}"), False),  # two </think>
        (done(r"\boxed{42}", thinking="a <think> b"), False),
        (done(r"\boxed{\frac{1}{2}"), False),  # unclosed box
    ],
)
def test_format(text, expected):
    assert has_valid_format(text) is expected
    assert FormatReward()(["q"], [chat(text)]) == [float(expected)]


def test_format_pathological_is_fast_enough_and_zero():
    assert run_guarded(lambda: FormatReward()(["q"] * 2, [PATHOLOGICAL["unclosed braces"], "x" * 10_000_000])) == [
        0.0,
        0.0,
    ]


# --- length rewards ------------------------------------------------------------------------------------------


def test_kimi_length_rewards_hand_computed():
    # lambda = 0.5 - (len - 10) / 20 -> 0.5, 0.0, -0.5
    assert kimi_length_rewards([10, 20, 30], [True, True, True]) == [0.5, 0.0, -0.5]
    assert kimi_length_rewards([10, 20, 30], [False, True, False]) == [0.0, 0.0, -0.5]  # wrong: min(0, lambda)
    assert kimi_length_rewards([15, 15], [True, False]) == [0.0, 0.0]  # equal lengths


def test_length_penalty_reward_groups_alpha_and_correctness():
    completions = [done(r"\boxed{42}"), done(r"\boxed{42}"), done(r"\boxed{41}"), done(r"\boxed{7}"), done("none")]
    prompts = ["p1", "p1", "p1", "p2", "p2"]
    ids = [[0] * 10, [0] * 20, [0] * 30, [0] * 5, [0] * 9]
    answers = ["42", "42", "42", "7", "7"]
    reward = LengthPenaltyReward(alpha=0.5)
    assert reward(prompts, completions, completion_ids=ids, answer=answers) == [0.25, 0.0, -0.25, 0.25, -0.25]
    # answer only inside the thinking is wrong: the shortest gets min(0, 0.5) = 0
    inside = [done("?", thinking=r"\boxed{42}"), done(r"\boxed{42}")]
    assert LengthPenaltyReward()(["p", "p"], [chat(c) for c in inside], [[0] * 3, [0] * 6], ["42", "42"]) == [0.0, -0.5]


def test_cosine_scaled_reward_hand_computed():
    assert cosine_scaled_reward(0, True, 100) == 1.0
    assert cosine_scaled_reward(50, True, 100) == pytest.approx(0.75)
    assert cosine_scaled_reward(100, True, 100) == pytest.approx(0.5)
    assert cosine_scaled_reward(500, True, 100) == pytest.approx(0.5)  # clamped beyond max_len
    assert cosine_scaled_reward(0, False, 100) == -1.0
    assert cosine_scaled_reward(50, False, 100) == pytest.approx(-0.75)
    assert cosine_scaled_reward(100, False, 100) == pytest.approx(-0.5)


def test_cosine_reward_matches_trl_where_correctness_agrees():
    from trl.rewards import get_cosine_scaled_reward

    # No think tags and one box: TRL's correctness and ours agree, so the rewards must be identical.
    completions = [chat(r"\boxed{\frac{1}{3}}"), chat(r"\boxed{\frac{1}{2}}"), chat(r"\boxed{0.25}")]
    solutions = [r"\frac{1}{3}", r"\frac{1}{3}", r"\frac{1}{4}"]
    ids = [[1] * 50, [1] * 20, [1] * 90]
    ours = CosineReward(max_len=100, require_thinking=False)(["q"] * 3, completions, ids, answer=solutions)
    theirs = get_cosine_scaled_reward(max_len=100)(completions, solutions, ids)
    assert ours == pytest.approx(theirs)
    # ours requires the answer after </think>
    thinking_only = [done("?", thinking=r"\boxed{\frac{1}{3}}")]
    assert CosineReward(max_len=100)(["q"], thinking_only, [[1] * 50], [r"\frac{1}{3}"]) == [pytest.approx(-0.75)]


def test_soft_overlong_is_trls():
    (reward,) = build_reward_funcs(
        ["soft_overlong"], {"soft_overlong": {"max_completion_len": 100, "soft_punish_cache": 20}}
    )
    assert reward.__name__ == "soft_overlong"
    assert reward(completion_ids=[[1] * 70, [1] * 90, [1] * 100, [1] * 120]) == [0.0, -0.5, -1.0, -1.0]


def test_length_rewards_on_pathological_inputs():
    names = ["power tower", "5000 nested fracs", "huge string"]
    completions = [PATHOLOGICAL[n] for n in names]
    ids = [[0] * 10, [0] * 20, [0] * 30]
    got = run_guarded(lambda: LengthPenaltyReward(timeout_seconds=1)(["q"] * 3, completions, ids, ["1"] * 3))
    assert got == [0.0, 0.0, -0.5]  # all wrong: min(0, lambda)
    got = run_guarded(lambda: CosineReward(max_len=40, timeout_seconds=1)(["q"] * 3, completions, ids, ["1"] * 3))
    assert got == [cosine_scaled_reward(n, False, 40) for n in (10, 20, 30)]


# --- registry ------------------------------------------------------------------------------------------------


def test_registry_builds_named_picklable_rewards():
    names = ["accuracy", "format", "length_penalty", "cosine", "soft_overlong"]
    kwargs = {"cosine": {"max_len": 64}, "soft_overlong": {"max_completion_len": 64, "soft_punish_cache": 16}}
    validate_reward_names(names, kwargs)
    funcs = build_reward_funcs(names, kwargs)
    assert [f.__name__ for f in funcs] == names
    pickle.loads(pickle.dumps(funcs))  # TRL's async rollout worker pickles reward functions
    # TRL's call: keyword arguments, plus its extra kwargs
    text = done(r"\boxed{42}")
    extras = dict(trainer_state=None, log_extra=lambda *a: None, log_metric=lambda *a: None)
    out = [f(prompts=["q"], completions=[chat(text)], completion_ids=[[1] * 8], answer=["42"], **extras) for f in funcs]
    assert out == [[1.0], [1.0], [0.0], [pytest.approx(cosine_scaled_reward(8, True, 64))], [0.0]]


@pytest.mark.parametrize(
    ("names", "kwargs", "match"),
    [
        (["acuracy"], None, r"unknown reward 'acuracy'.*'accuracy'.*module:function"),
        (
            ["cosine"],
            {"cosine": {"max_len": 10, "alpha": 1}},
            r"reward_kwargs\['cosine'\]: unknown argument\(s\) \['alpha'\]",
        ),
        (["cosine"], None, r"reward_kwargs\['cosine'\]: missing a required argument: 'max_len'"),
        (["accuracy"], {"accuracy": {"scale": "0-1"}}, r"reward_kwargs\['accuracy'\]: .*scale"),
        (
            ["soft_overlong"],
            {"soft_overlong": {"max_completion_len": 10, "soft_punish_cache": 20}},
            "soft_punish_cache",
        ),
        (["accuracy"], {"format": {}}, r"\['format'\] that are not in reward_funcs"),
        (["format", "format"], None, "more than once"),
        ([], None, "empty"),
        ("accuracy", None, "must be a list"),
        (["no_such_module_xyz:f"], None, "cannot import module 'no_such_module_xyz'"),
        (["rewards.format:nope"], None, "has no callable 'nope'"),
    ],
)
def test_registry_errors(names, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_reward_names(names, kwargs)
    with pytest.raises(ValueError, match=match):
        build_reward_funcs(names, kwargs)


def test_module_function_used_as_is_or_as_factory(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shortness(prompts, completions, **kwargs):\n"
        "    return [-float(len(c)) for c in completions]\n"
        "\n"
        "def make_constant(value):\n"
        "    def constant(prompts, completions, **kwargs):\n"
        "        return [value] * len(completions)\n"
        "    return constant\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        validate_reward_names(
            ["my_rewards:shortness", "my_rewards:make_constant"], {"my_rewards:make_constant": {"value": 3.0}}
        )
        shortness, constant = build_reward_funcs(
            ["my_rewards:shortness", "my_rewards:make_constant"], {"my_rewards:make_constant": {"value": 3.0}}
        )
        assert shortness.__name__ == "shortness" and constant.__name__ == "constant"
        assert shortness(["q"], ["abc"]) == [-3.0]
        assert constant(["q", "q"], ["a", "b"]) == [3.0, 3.0]
        with pytest.raises(ValueError, match=r"unknown argument\(s\) \['valu'\]"):
            validate_reward_names(["my_rewards:make_constant"], {"my_rewards:make_constant": {"valu": 3.0}})
    finally:
        sys.modules.pop("my_rewards", None)


# ---------------------------------------------------------------- bad inputs (issue 14)


def test_none_completion_scores_as_empty_in_every_reward():
    """A failed generation (None) scores like an empty completion in all five rewards, instead of a TypeError."""
    kwargs = {"cosine": {"max_len": 10}, "soft_overlong": {"max_completion_len": 10, "soft_punish_cache": 2}}
    names = ["accuracy", "format", "length_penalty", "cosine", "soft_overlong"]
    rewards = dict(zip(names, build_reward_funcs(names, kwargs), strict=True))
    empty = {name: f(prompts=["p"], completions=[""], completion_ids=[[]], answer=["42"])
             for name, f in rewards.items()}
    for name, f in rewards.items():
        got = f(prompts=["p", "p"], completions=[None, done(r"\boxed{42}")], completion_ids=[[], [1, 2]],
                answer=["42", "42"])
        assert got[0] == empty[name][0], name
    assert completion_text(None) == "" and completion_text([None, {"content": "a"}]) == "a"
    assert extract_answer(None) is None and not is_correct(None, "42")


def test_gold_none_is_wrong_not_the_text_none():
    assert not is_correct(done(r"\boxed{None}"), None)


@pytest.mark.parametrize("answer", [
    "\ud800 42 \x00",  # a lone surrogate and NUL: math-verify drops both and would grade 42
    "42\x00", "4\x082", "\x1b[0m42", "42\u200b", "\u202e42", "42\ufeff", "\ue00042",
])
def test_invisible_characters_void_an_answer(answer):
    """A policy optimises against whatever the grader forgives: an answer with an invisible character is wrong,
    and counted as guarded."""
    from rewards.accuracy import has_invisible_chars

    assert has_invisible_chars(answer)
    before = GUARD_COUNTS["invisible_chars"]
    assert not is_correct(done(rf"\boxed{{{answer}}}"), "42")
    assert GUARD_COUNTS["invisible_chars"] == before + 1


def test_ordinary_whitespace_and_unicode_text_still_grade():
    from rewards.accuracy import has_invisible_chars

    assert is_correct(done("\\boxed{\t42\n}"), "42") and is_correct(done("\\boxed{42\r}"), "42")
    assert not has_invisible_chars("\\frac{π}{2} × 3 — é")
