"""Benchmark registry: hub names, splits and column mapping in ONE place, plus generic question loading.

Every benchmark becomes a list of `Question(id, question, answer, kind)`: `question` is the text that goes
into the prompt template, `answer` the gold string the grader compares with (a letter for multiple choice).
Real runs load by hub name with `datasets.load_dataset`; tests pass local files shaped like the hub rows
(`path=`), so the same column mapping is exercised without a download.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    kind: str = "math"  # "math" (math-verify) or "choice" (gold is a letter)
    choices: tuple[str, ...] = ()  # "choice": the option texts in letter order (the grader maps a boxed text back)


def normalize_gold(value: Any) -> str:
    """Gold answers as strings; hub floats such as AMC23's `27.0` become `27` (math-verify sees no `.0`)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def gsm8k_gold(answer: str) -> str:
    """GSM8K's gold is the text after `####` in its worked solution (thousands separators removed)."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer[-80:]!r}")
    return answer.split("####")[-1].strip().replace(",", "")


# What GPQA's question text asks for, after its options: the letter, in the box the prompt template asks for (as
# DEER's GPQA data, simple-evals and open-r1 ask for the letter explicitly; the wording is ours).
CHOICE_INSTRUCTION = "Answer with the letter of the correct option ({letters}) in \\boxed{{}}, for example \\boxed{{A}}."


def gpqa_options(row: dict, seed: int, question_id: str) -> tuple[str, str, tuple[str, ...]]:
    """GPQA rows hold one correct and three incorrect answers: shuffle them with a per-question seed.

    The shuffle depends only on (seed, question id), so every run and every sample sees the same option order
    and the gold letter is reproducible. Options are written `A. text` (DEER's GPQA layout), then the instruction to
    box the letter (CHOICE_INSTRUCTION). Returns (question text, gold letter, option texts in letter order).
    """
    options = [row["Correct Answer"]] + [row[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
    options = [str(o).strip() for o in options]
    order = list(range(len(options)))
    random.Random(f"{seed}|{question_id}").shuffle(order)
    letters = CHOICE_LETTERS[: len(options)]
    lines = [f"{letters[pos]}. {options[src]}" for pos, src in enumerate(order)]
    gold = letters[order.index(0)]
    instruction = CHOICE_INSTRUCTION.format(letters=", ".join(letters[:-1]) + f" or {letters[-1]}")
    return (f"{str(row['Question']).strip()}\n\n" + "\n".join(lines) + f"\n\n{instruction}", gold,
            tuple(options[src] for src in order))


_OPTION_LINE = re.compile(r"^(?:\(([A-J])\)|([A-J])\.) (.+)$", re.MULTILINE)


def options_in_text(text: str) -> tuple[str, ...]:
    """The option texts of a question or prompt written by `gpqa_options` (`A. text`, or the earlier `(A) text`) in
    letter order; () unless they run A, B, C, ... without a gap."""
    found = [(m.group(1) or m.group(2), m.group(3).strip()) for m in _OPTION_LINE.finditer(text)]
    letters = [letter for letter, _ in found]
    return tuple(option for _, option in found) if letters and letters == list(CHOICE_LETTERS[: len(letters)]) else ()


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives on the hub and how its rows map onto `Question`."""

    name: str
    hub_name: str
    split: str
    question_column: str
    answer_column: str
    config: str | None = None
    id_column: str | None = None
    kind: str = "math"
    gold_fn: Callable[[Any], str] = normalize_gold
    # Custom row -> (question, answer, choices) builder (GPQA's lettered options); overrides the two columns.
    row_fn: Callable[[dict, int, str], tuple[str, str, tuple[str, ...]]] | None = None
    display: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in [
        BenchmarkSpec("gsm8k", "openai/gsm8k", "test", "question", "answer", config="main",
                      gold_fn=lambda a: gsm8k_gold(str(a)), display="GSM8K"),
        BenchmarkSpec("math500", "HuggingFaceH4/MATH-500", "test", "problem", "answer",
                      id_column="unique_id", display="MATH-500", aliases=("math-500", "math_500")),
        BenchmarkSpec("amc23", "math-ai/amc23", "test", "question", "answer", id_column="id",
                      display="AMC23", aliases=("amc2023", "amc")),
        BenchmarkSpec("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", id_column="id",
                      display="AIME24", aliases=("aime2024", "aime_2024")),
        BenchmarkSpec("aime25", "math-ai/aime25", "test", "problem", "answer", id_column="id",
                      display="AIME25", aliases=("aime2025", "aime_2025")),
        BenchmarkSpec("gpqa_diamond", "Idavidrein/gpqa", "train", "Question", "Correct Answer",
                      config="gpqa_diamond", id_column="Record ID", kind="choice", row_fn=gpqa_options,
                      display="GPQA-D", aliases=("gpqa", "gpqa-d", "gpqa-diamond")),
    ]
}
_ALIASES = {alias: spec.name for spec in BENCHMARKS.values() for alias in (spec.name, *spec.aliases)}

# Samples per question (pass@1 is averaged over them). S-GRPO (2505.07686) evaluation: 16 for AIME24 and
# AMC23, 8 for MATH-500 and GPQA-D, 4 for GSM8K. GFPO (2508.09726): AIME 32, GPQA 5. Both as /work/shared/PAPERS.md
# summarises the papers: not verified against the papers' text (issue 28); the other benchmarks' counts are ours.
PROTOCOL_SAMPLES: dict[str, dict[str, int]] = {
    "sgrpo": {"gsm8k": 4, "math500": 8, "amc23": 16, "aime24": 16, "aime25": 16, "gpqa_diamond": 8},
    "gfpo": {"gsm8k": 4, "math500": 8, "amc23": 16, "aime24": 32, "aime25": 32, "gpqa_diamond": 5},
}


def resolve_benchmark(name: str) -> BenchmarkSpec:
    key = _ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"Unknown benchmark {name!r}: use one of {sorted(BENCHMARKS)} or a local .jsonl path")
    return BENCHMARKS[key]


def display_name(name: str) -> str:
    key = _ALIASES.get(name.lower())
    return BENCHMARKS[key].display if key else name


def is_local_source(source: str) -> bool:
    return Path(source).suffix.lower() in LOCAL_SUFFIXES or Path(source).exists()


def _json_rows(path: Path, source: str, max_rows: int | None) -> list[dict]:
    """The first `max_rows` rows (all with None) of a JSON Lines file, or of a JSON file holding a list of objects;
    a ValueError names the file and the line that does not parse."""
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if path.suffix.lower() == ".json" and head.startswith("["):  # one JSON document: a list of row objects
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
        for i, row in enumerate(data[:max_rows] if max_rows else data):
            if not isinstance(row, dict):
                raise ValueError(f"{source}: item {i} of the JSON list is not an object with named fields")
        return data[:max_rows] if max_rows else data
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{source}: line {number} is not valid JSON ({err.msg} at column {err.colno}); "
                                 "each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise ValueError(f"{source}: line {number} is a JSON {type(row).__name__}, not an object with "
                                 "named fields; each line must be one JSON object")
            rows.append(row)
            if max_rows and len(rows) >= max_rows:
                break
    return rows


def read_local_rows(source: str, max_rows: int | None = 5) -> list[dict]:
    """The first rows of a local data file, read without `datasets`; ValueErrors name the file and what to fix:
    missing, a folder, an unsupported suffix, empty, a line that does not parse."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"{source}: no such file (resolved to {path.resolve()}); fix the path")
    if path.is_dir():
        raise ValueError(f"{source}: is a folder; give one {'/'.join(sorted(LOCAL_SUFFIXES))} file")
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise ValueError(f"{source}: unsupported file type {suffix or '(no suffix)'!r}; use one of "
                         f"{sorted(LOCAL_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise ValueError(f"{source}: the file is empty; it must hold at least one row")
    try:
        if suffix in (".jsonl", ".json"):
            rows = _json_rows(path, source, max_rows)
        elif suffix == ".csv":
            import csv
            from itertools import islice

            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(islice(reader, max_rows) if max_rows else reader)
        else:
            import pyarrow.parquet as pq

            try:
                table = pq.ParquetFile(path)
            except Exception as err:  # pyarrow's own error types
                raise ValueError(f"{source}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
            if table.metadata.num_rows == 0:
                rows = []
            else:
                batch = next(table.iter_batches(batch_size=max_rows or 1 << 16))
                rows = batch.to_pylist()
    except UnicodeDecodeError:
        raise ValueError(f"{source}: not UTF-8 text; save it as UTF-8 {suffix}") from None
    if not rows:
        raise ValueError(f"{source}: holds no rows; it must hold at least one")
    return rows


def inspect_local_file(source: str, columns: dict[str, str | None], max_rows: int = 5) -> tuple[int, str]:
    """Check a local data file from its first rows (see read_local_rows) and that its first row has `columns`
    ({option name: column}). Returns (rows read, a short description)."""
    rows = read_local_rows(source, max_rows)
    for role, column in columns.items():
        if column is not None and column not in rows[0]:
            raise ValueError(f"{source}: {role}={column!r} is not a column; its first row has {sorted(rows[0])}: "
                             f"set {role} to one of them")
    return len(rows), f"columns {sorted(rows[0])}"


def load_any(source: str, split: str | None = None, config: str | None = None, revision: str | None = None):
    """A `datasets.Dataset` from a hub name (with config/split/revision) or a local .jsonl/.json/.parquet/.csv.

    Local files have a single split, `train`, whatever `split` says (datasets' convention for data_files). A local
    file that cannot be read raises a ValueError naming it (and the line, for JSON Lines).
    """
    from datasets import load_dataset

    if is_local_source(source):
        suffix = Path(source).suffix.lower()
        read_local_rows(source, max_rows=1)  # missing, folder, unsupported suffix, empty: one clear line
        try:
            return load_dataset(LOCAL_SUFFIXES[suffix], data_files=str(Path(source).expanduser()), split="train")
        except Exception as err:  # datasets/pyarrow errors name neither the file nor the line
            read_local_rows(source, max_rows=None)  # raises naming the bad line when there is one
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{source}: cannot be read as {LOCAL_SUFFIXES[suffix]} ({first})") from err
    return load_dataset(source, config, split=split or "train", revision=revision)


def load_questions(source: str, split: str | None = None, config: str | None = None,
                   question_column: str = "question", answer_column: str = "answer",
                   id_column: str | None = None, revision: str | None = None):
    """Load a dataset by hub name or local path into columns `id`, `question`, `answer` (strings).

    Reusable by scripts/train.py: returns a `datasets.Dataset` (memory-mapped, fine for DeepMath-103K).
    A missing column raises a ValueError naming the columns that exist.
    """
    ds = load_any(source, split=split, config=config, revision=revision)
    if len(ds) == 0:
        raise ValueError(f"{source!r} (split {split or 'train'!r}) holds no rows")
    for role, col in (("question_column", question_column), ("answer_column", answer_column), ("id_column", id_column)):
        if col is not None and col not in ds.column_names:
            raise ValueError(f"{role}={col!r} is not a column of {source!r}; columns: {ds.column_names}")

    def convert(row, idx):
        qid = str(row[id_column]) if id_column else str(idx)
        return {"id": qid, "question": str(row[question_column]), "answer": normalize_gold(row[answer_column])}

    from datasets import Features, Value

    features = Features({"id": Value("string"), "question": Value("string"), "answer": Value("string")})
    return ds.map(convert, with_indices=True, remove_columns=ds.column_names, features=features)


def load_benchmark(name: str, path: str | None = None, limit: int | None = None, choice_seed: int = 0,
                   question_column: str = "question", answer_column: str = "answer",
                   revision: str | None = None) -> list[Question]:
    """Questions of a registered benchmark (by hub name, or from `path` shaped like the hub rows), or of a
    local file given as `name` itself (generic question/answer columns)."""
    if name.lower() not in _ALIASES and is_local_source(name):
        ds = load_questions(name, question_column=question_column, answer_column=answer_column)
        rows = [Question(r["id"], r["question"], r["answer"]) for r in ds]
        return rows[:limit] if limit else rows
    spec = resolve_benchmark(name)
    ds = load_any(path or spec.hub_name, split=spec.split, config=spec.config, revision=revision)
    needed = [spec.id_column] if spec.id_column else []
    needed += ["Question", "Correct Answer"] if spec.row_fn else [spec.question_column, spec.answer_column]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise ValueError(f"{spec.name}: columns {missing} missing from {path or spec.hub_name}; got {ds.column_names}")
    questions = []
    for idx, row in enumerate(ds):
        if limit and len(questions) >= limit:
            break
        qid = f"{spec.name}-{row[spec.id_column] if spec.id_column else idx}"
        choices: tuple[str, ...] = ()
        if spec.row_fn:
            text, gold, choices = spec.row_fn(row, choice_seed, qid)
        else:
            text, gold = str(row[spec.question_column]), spec.gold_fn(row[spec.answer_column])
        questions.append(Question(qid, text, gold, spec.kind, choices))
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{spec.name}: duplicate question ids in {path or spec.hub_name}")
    return questions
