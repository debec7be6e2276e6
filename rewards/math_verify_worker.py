"""math-verify grading in a child process, with a hard time limit per answer that works from any thread.

Why a child process: math-verify 0.9 bounds its own work with `signal.alarm` (math_verify/utils.py), which works
only in the main thread, and a Python signal handler cannot interrupt a long C-level computation anyway (sympy
evaluating `2^{2^{2^{100}}}` spends its time in big-integer arithmetic). So the parent sends each
(prediction, gold) pair to one long-lived worker (`python -P rewards/math_verify_worker.py`, speaking JSON lines on
stdin/stdout) and waits with `select` for at most `timeout` seconds; on expiry it kills the worker, scores the
answer as a timeout, and starts a fresh worker on the next call. Inside the worker, which runs math-verify in its
main thread, math-verify's own alarms are also on, so most slow cases end there without a kill and restart.

The worker is started lazily, one per process (a fork gets its own), and exits when its stdin closes.

The budget: one answer is two parses (gold, prediction) and up to one `verify` per pair of parsed forms (math-verify
returns up to two forms each, so up to four). math-verify's alarms are whole seconds (`signal.alarm`), one per step;
a fixed alarm per step (formerly 1 s each, six steps) could sum past the parent's hard limit (5 s), so a slow but
valid comparison was killed and scored "timeout". Now the steps share ONE budget, `worker_budget(timeout)` whole
seconds: each step's alarm is what is left of it, rounded up to a whole second (`StepClock`), and an answer whose steps
have spent it is a timeout without a kill. Rounding up lets the steps overrun the budget by under a second, so the
budget is the hard limit less that second and a margin: the alarms always fire before the kill. The hard limit stays
for what an alarm cannot stop (C-level work).
"""

import atexit
import json
import math
import os
import select
import subprocess
import sys
import threading
import time

STARTUP_TIMEOUT_S = 120.0  # importing sympy + math-verify on a loaded 2-core machine can take several seconds
HARD_LIMIT_MARGIN_S = 1.0  # between the steps' last possible alarm and the parent's kill (pipes, a step's start)


def worker_budget(timeout: float) -> int:
    """Whole seconds the worker's steps may spend on one answer, together: the hard limit less the last alarm's
    rounding (< 1 s) and a margin, at least 1 s (under a 3 s hard limit the kill may then come first)."""
    return max(1, int(timeout - 1.0 - HARD_LIMIT_MARGIN_S))


class BudgetSpent(Exception):
    """The steps of one answer have used the worker's budget."""


class StepClock:
    """One answer's budget, handed out to its steps as whole-second alarms: `alarm()` is the time left, rounded up,
    so the steps end within the budget + 1 s whatever each takes; raises BudgetSpent once the budget is used."""

    def __init__(self, budget: int, now=time.monotonic):
        self._now = now
        self._deadline = now() + budget

    def alarm(self) -> int:
        left = self._deadline - self._now()
        if left <= 0:
            raise BudgetSpent
        return math.ceil(left)


class GraderWorker:
    """One child process that grades (prediction, gold) pairs; `grade` returns
    "correct", "wrong" or "timeout"."""

    def __init__(self):
        self._proc = None
        self._pid = None  # the process that started the worker (a fork must not share its pipes)
        self._lock = threading.Lock()

    def grade(self, pred: str, gold: str, timeout: float) -> str:
        request = json.dumps({"pred": pred, "gold": gold, "budget": worker_budget(timeout)}) + "\n"
        with self._lock:
            proc = self._ensure_started()
            try:
                proc.stdin.write(request.encode())
                proc.stdin.flush()
                reply = self._read_line(proc, timeout)
            except (BrokenPipeError, OSError):
                reply = None
            if reply is None:  # timed out or the worker died (e.g. out of memory): start afresh next time
                self.close()
                return "timeout"
            return json.loads(reply)

    def close(self):
        if self._proc is not None and self._pid == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _ensure_started(self):
        if self._proc is not None and self._pid == os.getpid() and self._proc.poll() is None:
            return self._proc
        self._proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__)],  # -P: do not put rewards/ on the child's sys.path
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._pid = os.getpid()
        if self._read_line(self._proc, STARTUP_TIMEOUT_S) != '"ready"':
            self.close()
            raise RuntimeError("the math-verify grading worker (rewards/math_verify_worker.py) failed to start")
        return self._proc

    @staticmethod
    def _read_line(proc, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:  # select may wake early on a signal; loop until the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            if ready:
                line = proc.stdout.readline()
                return line.decode().strip() if line else None


_WORKER = GraderWorker()
atexit.register(_WORKER.close)


def grade(pred: str, gold: str, timeout: float) -> str:
    """Grade `pred` against `gold` (both bare LaTeX/expressions, without `\\boxed`) with math-verify:
    "correct", "wrong" (also for unparseable input) or "timeout"."""
    return _WORKER.grade(pred, gold, timeout)


def _serve():
    """Worker loop: one JSON request per line in, one JSON status per line out."""
    # Keep the protocol pipe private: anything a library prints (Python or C level) goes to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    from itertools import product

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def parse_boxed(text, clock):
        try:
            return parse(f"\\boxed{{{text}}}", configs, parsing_timeout=clock.alarm(), raise_on_error=True)
        except (TimeoutException, BudgetSpent):
            raise
        except Exception:
            return []

    gold_cache: dict = {}  # the G completions of a group share one gold answer (a timed-out parse is not kept)

    def parse_gold(gold, clock):
        if gold not in gold_cache:
            if len(gold_cache) >= 4096:
                gold_cache.clear()
            gold_cache[gold] = parse_boxed(gold, clock)
        return gold_cache[gold]

    def grade_one(pred, gold, budget):
        clock = StepClock(budget)
        gold_parsed = parse_gold(gold, clock)
        if not gold_parsed:  # math-verify cannot read the gold answer: fall back to exact text
            return "correct" if pred.strip() == gold.strip() else "wrong"
        pred_parsed = parse_boxed(pred, clock)
        timed_out = False
        for g, p in product(gold_parsed, pred_parsed):  # verify() per pair, so one failing pair cannot hide another
            try:
                if verify(g, p, timeout_seconds=clock.alarm(), raise_on_error=True):
                    return "correct"
            except TimeoutException:
                timed_out = True
            except BudgetSpent:
                return "timeout"
            except Exception:
                pass
        return "timeout" if timed_out else "wrong"

    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            status = grade_one(request["pred"], request["gold"], request["budget"])
        except (TimeoutException, BudgetSpent):
            status = "timeout"
        except Exception:
            status = "wrong"
        out.write(json.dumps(status) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
