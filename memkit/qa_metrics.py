"""Exact match and token F1 for question answering, with SQuAD's answer normalisation.

Rajpurkar et al., "SQuAD: 100,000+ Questions for Machine Comprehension of
Text" (EMNLP 2016) and "Know What You Don't Know: Unanswerable Questions for
SQuAD" (ACL 2018) score a predicted answer against every reference answer and
keep the best: exact match (EM) compares normalised strings (lower case, no
punctuation, no articles "a"/"an"/"the", single spaces); F1 is the harmonic
mean of token precision and recall between the normalised bags of words. As in
SQuAD 2.0, when the prediction or the reference normalises to no tokens, F1 is
1 if both do and 0 otherwise (an unanswerable question has the reference "").
The continual-knowledge benchmarks memkit reads (StreamingQA, SQuAD,
ArchivalQA; see CMT, "A Memory Compression Method for Continual Knowledge
Learning of Large Language Models", 2024) report both. Scores here are
fractions in [0, 1]; multiply by 100 for the papers' percentages.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    if not isinstance(s, str):
        raise TypeError(f"normalize_answer: expected a str, got {type(s).__name__}")
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised answer, else 0.0."""
    answers = _check_answers(answers)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def f1(prediction: str, answers: Sequence[str]) -> float:
    """The best token F1 of the prediction against any answer."""
    answers = _check_answers(answers)
    pred = normalize_answer(prediction).split()
    return max(_token_f1(pred, normalize_answer(a).split()) for a in answers)


def qa_scores(predictions: Mapping[str, str], questions: Iterable) -> dict[str, float]:
    """Mean EM and F1 over ``questions`` (objects with ``qid`` and ``answers``), and their number.

    Every question needs a prediction; predictions for other ids are ignored.
    """
    if not isinstance(predictions, Mapping):
        raise TypeError(f"qa_scores: expected predictions as a mapping qid -> answer, got "
                        f"{type(predictions).__name__}")
    questions = list(questions)
    if not questions:
        raise ValueError("qa_scores: expected at least one question, got none")
    missing = [q.qid for q in questions if q.qid not in predictions]
    if missing:
        raise ValueError(f"qa_scores: no prediction for {len(missing)} of {len(questions)} "
                         f"questions, e.g. {missing[:3]}")
    em = [exact_match(predictions[q.qid], q.answers) for q in questions]
    f = [f1(predictions[q.qid], q.answers) for q in questions]
    n = len(questions)
    return {"em": sum(em) / n, "f1": sum(f) / n, "n": n}


def _token_f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _check_answers(answers: Sequence[str]) -> Sequence[str]:
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise TypeError(f"answers: expected a sequence of strings (not one string), got "
                        f"{answers!r}")
    if not answers:
        raise ValueError("answers: expected at least one reference answer, got none "
                         "(an unanswerable question has the answer \"\")")
    return answers
