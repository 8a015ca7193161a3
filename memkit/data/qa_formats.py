"""Readers for the question-answering files continual-knowledge benchmarks use, as memkit steps.

CMT ("A Memory Compression Method for Continual Knowledge Learning of Large
Language Models", 2024) streams documents to a language model and asks
questions about them on three datasets. Each reader here turns the dataset's
released files into ``KnowledgeDocument`` / ``Question`` records grouped into
``KnowledgeSteps`` (``memkit.data.knowledge``), so agent code written for the
generated ``knowledge_stream`` runs on them unchanged. Nothing is downloaded
and nothing is unpickled: JSON, JSON lines and CSV only, UTF-8 throughout.

- SQuAD v1.1 / v2.0 (Rajpurkar et al., EMNLP 2016 / ACL 2018), one JSON file
  ``{"version", "data": [{"title", "paragraphs": [{"context", "qas": [{"id",
  "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}``.
  It has no timestamps: the contexts arrive in file order, ``contexts_per_step``
  per step; a question is asked at the step of its context.
- StreamingQA (Liška et al., "StreamingQA: A Benchmark for Adaptation to New
  Knowledge over Time in Question Answering Models", ICML 2022). Questions:
  JSON lines (optionally gzipped), one object per line with ``qa_id``,
  ``question``, ``answers`` (list), ``question_ts`` and ``evidence_ts`` (UTC
  seconds), ``evidence_id`` (the WMT "sorting key" of the evidence article),
  ``recent_or_past``, ``written_or_generated``, ``answers_additional`` and
  ``toxicity_*`` scores, as the dataset's README lists them; the first six are
  required, the rest go to ``Question.meta``. Documents: the document-split WMT
  News Crawl archives (``news-docs.YYYY.en.filtered.gz``), one article per line
  as ``YYYYMMDD<TAB>base64(sentence-split text)<TAB>base64(unsplit text)``. An
  article's sorting key is its date as ``%Y%m%d%H%M%S%f``, then ``\\x00\\x01``,
  the sha256 hex digest of the base64 unsplit field, and ``\\x00\\x01`` (the
  layout of the dataset's extraction script); its sentences are joined by spaces.
- ArchivalQA (Wang et al., "ArchivalQA: A Large-scale Benchmark Dataset for
  Open Domain Question Answering over Archival News Collections", SIGIR 2022).
  Questions: CSV with the columns ``id``, ``question``, ``answer``,
  ``org_answer``, ``answer_start``, ``para_id`` (NYT article id, underscore,
  paragraph index), ``trans_que``, ``trans_ans``, ``source`` (from the example
  table in the dataset's README, which the current README keeps in a comment;
  ``id``, ``question``, ``answer`` and ``para_id`` are required, every other
  column goes to ``Question.meta``). The released CSV holds neither the
  paragraph text nor a date: both come from the licensed New York Times
  Annotated Corpus, so the reader takes them from a paragraphs CSV with columns
  ``para_id``, ``para`` and ``date`` (``YYYY-MM-DD`` or ``YYYY``, the article's
  publication date) that you build from your copy, or from ``para`` and
  ``date`` columns added to the questions CSV itself. A question is asked at
  the step of its paragraph.

Timestamps become steps with ``period``: "year", "month" or "day" (calendar
UTC), or an int number of seconds, counted from ``origin`` (UTC seconds;
default the earliest timestamp read). Malformed input raises ``ValueError``
naming the file, the line or record, and the field.
"""

from __future__ import annotations

import base64
import binascii
import csv
import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timezone
from pathlib import Path

from memkit.data.knowledge import KnowledgeDocument, KnowledgeSteps, Question

PERIODS = ("year", "month", "day")
STREAMINGQA_FIELDS = ("qa_id", "question", "answers", "question_ts", "evidence_ts",
                      "evidence_id")
ARCHIVALQA_FIELDS = ("id", "question", "answer", "para_id")
_KEY_SEPARATOR = "\x00\x01"


def time_step(ts: int, origin: int, period: str | int) -> int:
    """The step of UTC timestamp ``ts`` counted from ``origin`` in ``period`` units."""
    _check_period(period)
    if ts < origin:
        raise ValueError(f"time_step: timestamp {ts} is before the origin {origin}")
    if not isinstance(period, str):
        return (ts - origin) // period
    a, b = _utc(ts), _utc(origin)
    if period == "year":
        return a.year - b.year
    if period == "month":
        return 12 * (a.year - b.year) + a.month - b.month
    return (a.date() - b.date()).days


# ----------------------------------------------------------------------------- SQuAD

def read_squad(path: str | os.PathLike, *, contexts_per_step: int = 10,
               include_impossible: bool = False) -> KnowledgeSteps:
    """Contexts of a SQuAD v1.1/v2.0 file as documents, ``contexts_per_step`` per step.

    Unanswerable v2.0 questions are skipped unless ``include_impossible``; then
    their answer is "" (SQuAD 2.0's convention, which ``memkit.qa_metrics`` scores).
    """
    if isinstance(contexts_per_step, bool) or not isinstance(contexts_per_step, int) \
            or contexts_per_step < 1:
        raise ValueError(f"contexts_per_step: expected an int >= 1, got {contexts_per_step!r}")
    path = Path(path)
    root = _record(_load_json(path), f"{path}: top level")
    documents, questions = [], []
    for a, article in enumerate(_field(root, "data", list, f"{path}: top level")):
        where = f"{path}: data[{a}]"
        article = _record(article, where)
        title = _field(article, "title", str, where) if "title" in article else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", list, where)):
            where_p = f"{where}.paragraphs[{p}]"
            paragraph = _record(paragraph, where_p)
            time = len(documents) // contexts_per_step
            doc = KnowledgeDocument(f"{a}-{p}", time, _field(paragraph, "context", str, where_p),
                                    meta={"title": title})
            documents.append(doc)
            for k, qa in enumerate(_field(paragraph, "qas", list, where_p)):
                question = _squad_question(_record(qa, f"{where_p}.qas[{k}]"), doc,
                                           f"{where_p}.qas[{k}]", include_impossible)
                if question is not None:
                    questions.append(question)
    return KnowledgeSteps.from_items(documents, questions, name=f"squad({path.name})")


def _squad_question(qa: Mapping, doc: KnowledgeDocument, where: str,
                    include_impossible: bool) -> Question | None:
    impossible = _field(qa, "is_impossible", bool, where) if "is_impossible" in qa else False
    texts = [_field(_record(ans, f"{where}.answers[{i}]"), "text", str, f"{where}.answers[{i}]")
             for i, ans in enumerate(_field(qa, "answers", list, where))]
    if impossible and not include_impossible:
        return None
    if not impossible and not texts:
        raise ValueError(f"{where}: an answerable question with an empty 'answers' list")
    answers = ("",) if impossible else tuple(dict.fromkeys(texts))
    return Question(_field(qa, "id", str, where), doc.time, _field(qa, "question", str, where),
                    answers, doc_id=doc.doc_id, inserted_at=doc.time,
                    meta={"is_impossible": impossible, "title": doc.meta["title"]})


# ----------------------------------------------------------------------------- StreamingQA

def read_streamingqa(questions: str | os.PathLike,
                     wmt_archives: Sequence[str | os.PathLike] = (), *,
                     period: str | int = "month", origin: int | None = None,
                     sorting_keys: str | os.PathLike | None = None,
                     evidence_only: bool = True) -> KnowledgeSteps:
    """StreamingQA questions (JSON lines) and the WMT articles of ``wmt_archives`` as steps.

    A question is asked at the step of ``question_ts``; its evidence
    (``doc_id``, ``inserted_at``) is the article ``evidence_id`` published at
    ``evidence_ts``. Articles are kept if their sorting key is in the
    ``sorting_keys`` file (the dataset's deduplicated key list, one per line,
    optionally gzipped) when given, and, with ``evidence_only``, if some
    question names them as evidence.
    """
    _check_period(period)
    path = Path(questions)
    records = [_streamingqa_record(record, f"{path}: line {n}")
               for n, record in _json_lines(path)]
    keep = set(_lines(Path(sorting_keys))) if sorting_keys is not None else None
    evidence = {r["evidence_id"] for r in records}
    articles = {}
    for archive in wmt_archives:
        for key, ts, text in _wmt_articles(Path(archive)):
            if (keep is None or key in keep) and (not evidence_only or key in evidence):
                articles.setdefault(key, (ts, text))
    origin = _origin(origin, [t for r in records for t in (r["question_ts"], r["evidence_ts"])]
                     + [ts for ts, _ in articles.values()], path)
    documents = [KnowledgeDocument(key, time_step(ts, origin, period), text)
                 for key, (ts, text) in articles.items()]
    qs = [Question(r["qa_id"], time_step(r["question_ts"], origin, period), r["question"],
                   tuple(r["answers"]), doc_id=r["evidence_id"],
                   inserted_at=time_step(r["evidence_ts"], origin, period),
                   meta={k: v for k, v in r.items() if k not in STREAMINGQA_FIELDS})
          for r in records]
    return KnowledgeSteps.from_items(documents, qs, name=f"streamingqa({path.name})")


def _streamingqa_record(record, where: str) -> dict:
    record = _record(record, where)
    for key, kind in (("qa_id", str), ("question", str), ("question_ts", int),
                      ("evidence_ts", int), ("evidence_id", str)):
        _field(record, key, kind, where)
    answers = _field(record, "answers", list, where)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{where}: field 'answers': expected a non-empty list of strings, "
                         f"got {answers!r}")
    return record


def _wmt_articles(path: Path) -> Iterator[tuple[str, int, str]]:
    """(sorting key, publication timestamp, text) of every article line of a WMT archive."""
    with _open(path, binary=True) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.strip().split(b"\t")
            if len(parts) != 3:
                raise ValueError(f"{path}: line {n}: expected 3 tab-separated fields (date, "
                                 f"sentence-split text, unsplit text), got {len(parts)}")
            try:
                day = datetime.strptime(parts[0].decode(), "%Y%m%d").replace(tzinfo=timezone.utc)
                text = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (ValueError, binascii.Error) as exc:
                raise ValueError(f"{path}: line {n}: unreadable date or base64 text "
                                 f"({exc})") from None
            digest = hashlib.sha256(parts[2]).hexdigest()
            key = _KEY_SEPARATOR.join([day.strftime("%Y%m%d%H%M%S%f"), digest, ""])
            yield key, int(day.timestamp()), " ".join(text.split())


# ----------------------------------------------------------------------------- ArchivalQA

def read_archivalqa(questions: str | os.PathLike, paragraphs: str | os.PathLike | None = None,
                    *, period: str | int = "year", origin: int | None = None) -> KnowledgeSteps:
    """ArchivalQA questions (CSV) with their paragraphs' text and dates, as steps.

    ``paragraphs``: a CSV with ``para_id``, ``para`` and ``date``; without it
    the questions CSV must carry ``para`` and ``date`` itself. Every paragraph
    becomes a document at the step of its date; a question is asked then too.
    """
    _check_period(period)
    path = Path(questions)
    inline = paragraphs is None
    rows = _csv_rows(path, (*ARCHIVALQA_FIELDS, *(("para", "date") if inline else ())))
    para_path = path if inline else Path(paragraphs)
    para_rows = rows if inline else _csv_rows(para_path, ("para_id", "para", "date"))
    paras = {}
    for where, row in para_rows:
        paras.setdefault(row["para_id"], (_date_ts(row["date"], where), row["para"]))
    for where, row in rows:
        if row["para_id"] not in paras:
            raise ValueError(f"{where}: para_id {row['para_id']!r} is not in {para_path}")
    origin = _origin(origin, [ts for ts, _ in paras.values()], para_path)
    steps = {pid: time_step(ts, origin, period) for pid, (ts, _) in paras.items()}
    documents = [KnowledgeDocument(pid, steps[pid], text) for pid, (_, text) in paras.items()]
    used = {*ARCHIVALQA_FIELDS, "para", "date"}
    qs = [Question(row["id"], steps[row["para_id"]], row["question"], (row["answer"],),
                   doc_id=row["para_id"], inserted_at=steps[row["para_id"]],
                   meta={k: v for k, v in row.items() if k not in used})
          for _, row in rows]
    return KnowledgeSteps.from_items(documents, qs, name=f"archivalqa({path.name})")


def _csv_rows(path: Path, required: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """(location, row) for every row; every ``required`` column present and non-empty."""
    with _open(path, binary=False) as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the header has {columns}")
        rows = []
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            if None in row:
                raise ValueError(f"{where}: more fields than the {len(columns)} columns")
            empty = [c for c in required if not row[c]]
            if empty:
                raise ValueError(f"{where}: missing field(s) {empty}")
            rows.append((where, row))
    return rows


def _date_ts(text: str, where: str) -> int:
    try:
        day = date(int(text), 1, 1) if len(text) == 4 else date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where}: field 'date': expected YYYY-MM-DD or YYYY, "
                         f"got {text!r}") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


# ----------------------------------------------------------------------------- shared

def _check_period(period) -> None:
    if isinstance(period, bool) or not (period in PERIODS
                                        or (isinstance(period, int) and period > 0)):
        raise ValueError(f"period: expected one of {PERIODS} or a positive int of seconds, "
                         f"got {period!r}")


def _origin(origin: int | None, timestamps: list[int], path: Path) -> int:
    """``origin``, or the earliest timestamp; no timestamp may be earlier than it."""
    if not timestamps:
        raise ValueError(f"{path}: no records read")
    if origin is None:
        return min(timestamps)
    if isinstance(origin, bool) or not isinstance(origin, int):
        raise ValueError(f"origin: expected UTC seconds as an int, got {origin!r}")
    if min(timestamps) < origin:
        raise ValueError(f"origin: {origin} is after the earliest timestamp read from {path} "
                         f"({min(timestamps)}); give an earlier origin or None")
    return origin


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _open(path: Path, *, binary: bool):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    mode = "rb" if binary else "rt"
    encoding = None if binary else "utf-8"
    newline = None if binary else ""
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding=encoding, newline=newline)
    return open(path, mode, encoding=encoding, newline=newline)


def _lines(path: Path) -> Iterator[str]:
    with _open(path, binary=False) as fh:
        for line in fh:
            if line.strip():
                yield line.strip()


def _json_lines(path: Path) -> Iterator[tuple[int, object]]:
    with _open(path, binary=False) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {n}: not valid JSON ({exc})") from None


def _load_json(path: Path) -> object:
    with _open(path, binary=False) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _record(value, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _field(record: Mapping, key: str, kind: type, where: str):
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: field {key!r}: expected {kind.__name__}, "
                         f"got {type(value).__name__} {value!r:.40}")
    return value
