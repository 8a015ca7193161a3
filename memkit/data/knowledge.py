"""A generated stream of documents whose facts change over time, with questions "as of step t".

Continual knowledge learning (CMT: "A Memory Compression Method for Continual
Knowledge Learning of Large Language Models", 2024; evaluated on StreamingQA,
Liška et al., ICML 2022, SQuAD and ArchivalQA) gives a language model
documents over time and asks questions whose answer is the newest fact stated
up to the question's time, scored by exact match and F1
(``memkit.qa_metrics``). This module writes such a stream offline, small
enough for a tiny LM on two cores, over a closed vocabulary:

- invented people (syllable names such as "zorvak") have five attributes
  (employer, city, title, partner, team) with values from closed sets of
  invented words (and English job titles);
- step 0 introduces ``entities`` people; at every later step a fraction
  ``update_rate`` of the (person, attribute) pairs gets a new value (an
  update) and ``new_entities`` people appear with all their attributes;
- each step's documents (2-5 templated sentences: an introduction and 1-4
  facts, in varied wording) state every fact that changed at that step; the
  other documents of the step restate 1-3 current facts of someone; no
  document ever states a value that is not valid at its step;
- distractor documents either mention people without stating any attribute
  value, or state facts about look-alike names (one vowel changed, never
  asked about); their ``facts`` are those look-alike facts;
- questions ("as of step 3 , where does zorvak work ?") ask about pairs that
  exist at their step; the answer is the value valid then, ``doc_id`` the
  newest document that stated it (``inserted_at`` its step), ``updated``
  whether the pair's value changed at least once up to then.

Relation to ``memkit.streams.Stream``: a ``Stream`` holds ``Batch`` tensors of
a fixed shape, which text is not. ``KnowledgeSteps`` is the text counterpart:
a ``Sequence`` of ``KnowledgeStep`` (time index = position, training data =
documents, test data = questions, meta), and the readers in
``memkit.data.qa_formats`` return it for SQuAD, StreamingQA and ArchivalQA
files, so the same agent code runs on generated and real data.
``KnowledgeStream`` (generated) adds the closed vocabulary and its word-level
tokenizer. Text is words separated by single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from memkit.seeding import derive_generator

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]")
SEP = "[SEP]"
"""The separator between a question and its answer: "question ? [SEP] answer [EOS]"."""
MAX_STEPS = 200
"""Step numbers 0 .. MAX_STEPS - 1 are words of the vocabulary (questions name their step)."""
N_NAMES, N_VALUES = 160, 24
"""Invented people, and values per attribute."""
MAX_FACTS = 4
"""Facts per document (after one introduction sentence: 2-5 sentences)."""
LEXICON_SEED = 0
"""The seed of the invented words: fixed, so every stream shares one vocabulary."""

INTROS = ("news about {e} .", "a short report on {e} came out .", "here is an update on {e} .",
          "{e} was in the news again .")
MENTIONS = ("{e} was seen at the market .", "nobody knew what {e} was planning .",
            "{e} gave a short speech .", "people talked about {e} all week .",
            "{e} did not answer any calls .", "a photo of {e} was printed .")
"""Distractor sentences: they name a person and state no attribute value."""
QUESTION = "as of step {t} , {q} ?"
TITLES = ("baker", "pilot", "nurse", "lawyer", "farmer", "painter", "doctor", "tailor", "chef",
          "clerk", "judge", "sailor", "miner", "banker", "dancer", "writer", "singer", "plumber",
          "gardener", "driver", "builder", "potter", "teacher", "butcher")


@dataclass(frozen=True)
class Attribute:
    """How a fact is stated, updated and asked (``{e}`` person, ``{v}`` value)."""

    name: str
    statements: tuple[str, ...]
    updates: tuple[str, ...]
    questions: tuple[str, ...]


ATTRIBUTES = (
    Attribute("employer", ("{e} works for {v} .", "{e} is employed by {v} .",
                           "the employer of {e} is {v} ."),
              ("{e} has joined {v} .", "{e} now works for {v} .", "{e} took a new job at {v} ."),
              ("where does {e} work", "who employs {e}", "which company does {e} work for")),
    Attribute("city", ("{e} lives in {v} .", "the home of {e} is in {v} ."),
              ("{e} has moved to {v} .", "{e} now lives in {v} ."),
              ("where does {e} live", "in which city does {e} live")),
    Attribute("title", ("{e} is a {v} .", "{e} works as a {v} ."),
              ("{e} became a {v} .", "{e} is now a {v} ."),
              ("what is the job of {e}", "what does {e} do for a living")),
    Attribute("partner", ("{e} is married to {v} .", "the partner of {e} is {v} ."),
              ("{e} has married {v} .", "{e} is now with {v} ."),
              ("who is the partner of {e}", "who is {e} married to")),
    Attribute("team", ("{e} plays for {v} .", "{e} is a member of the {v} club ."),
              ("{e} has signed with {v} .", "{e} now plays for {v} ."),
              ("which team does {e} play for", "for which club does {e} play")),
)
BY_NAME = {a.name: a for a in ATTRIBUTES}
_VOWELS = "aeiou"
_WORD_PARTS = {  # the parts an invented word is drawn from, one choice per part
    "names": ("bdfgklmnprstvz", _VOWELS, "bdfgklmnprstvz", _VOWELS, "knrslx"),
    "employer": (("br", "cr", "dr", "fl", "gl", "pl", "pr", "st", "tr", "qu"), _VOWELS,
                 ("tex", "corp", "ware", "lux", "dyne", "soft")),
    "city": ("bdhklmntw", _VOWELS, "lnrs", _VOWELS, ("burg", "ford", "ville", "holm", "wick")),
    "partner": ("jmnlrstv", _VOWELS, "lnrvs", ("a", "ie", "el", "ette", "ine")),
    "team": (("gr", "kr", "sn", "sw", "bl", "sk", "sp", "fr"), _VOWELS,
             ("mb", "nt", "rd", "lk", "ng", "x"), ("ers", "ies", "ons")),
}


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class KnowledgeDocument:
    """A document of step ``time``; ``facts`` are the (entity, attribute, value) it states."""

    doc_id: str
    time: int
    text: str
    facts: tuple[tuple[str, str, str], ...] = ()
    distractor: bool = False
    meta: Mapping = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Question:
    """A question asked at step ``time``; ``answers`` are valid then.

    ``doc_id`` is the evidence document and ``inserted_at`` its step; ``updated``
    marks a generated question whose answer changed at least once. Real data
    leaves ``entity`` / ``attribute`` empty and keeps its extra fields in ``meta``.
    """

    qid: str
    time: int
    text: str
    answers: tuple[str, ...]
    entity: str = ""
    attribute: str = ""
    doc_id: str = ""
    updated: bool = False
    inserted_at: int = 0
    meta: Mapping = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class KnowledgeStep:
    """One step: learn from ``documents``; ``questions`` are asked from now on."""

    time: int
    documents: tuple[KnowledgeDocument, ...]
    questions: tuple[Question, ...]
    meta: Mapping = field(default_factory=dict, hash=False)


class KnowledgeSteps(Sequence[KnowledgeStep]):
    """Steps 0, 1, 2, ... of documents and questions (generated or read from files)."""

    def __init__(self, steps: Iterable[KnowledgeStep], name: str = "knowledge"):
        steps = list(steps)
        if not steps:
            raise ValueError(f"{name}: expected at least one step, got none")
        for i, step in enumerate(steps):
            if not isinstance(step, KnowledgeStep):
                raise TypeError(f"{name}: item {i} is a {type(step).__name__}, expected a "
                                f"KnowledgeStep")
            times = {step.time, *(d.time for d in step.documents),
                     *(q.time for q in step.questions)}
            if times != {i}:
                raise ValueError(f"{name}: step at position {i} holds times {sorted(times)}; "
                                 f"step i and its documents and questions must have time i")
        self.steps, self.name = steps, name

    @classmethod
    def from_items(cls, documents: Iterable[KnowledgeDocument], questions: Iterable[Question],
                   name: str = "knowledge") -> KnowledgeSteps:
        """Group documents and questions by their ``time`` into steps 0 .. the latest time."""
        documents, questions = list(documents), list(questions)
        times = [x.time for x in (*documents, *questions)]
        if not times:
            raise ValueError(f"{name}: expected documents or questions, got none")
        bad = [t for t in times if isinstance(t, bool) or not isinstance(t, int) or t < 0]
        if bad:
            raise ValueError(f"{name}: expected times as ints >= 0, got {bad[0]!r}")
        by_time = [([], []) for _ in range(max(times) + 1)]
        for d in documents:
            by_time[d.time][0].append(d)
        for q in questions:
            by_time[q.time][1].append(q)
        return cls([KnowledgeStep(t, tuple(d), tuple(q)) for t, (d, q) in enumerate(by_time)],
                   name)

    def __getitem__(self, i):
        return self.steps[i]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[KnowledgeStep]:
        return iter(self.steps)

    def documents_up_to(self, t: int) -> list[KnowledgeDocument]:
        """Every document of steps 0 .. ``t``."""
        return [d for step in self.steps[: self._check_time(t) + 1] for d in step.documents]

    def questions_up_to(self, t: int) -> list[Question]:
        """Every question asked in steps 0 .. ``t``, each with the answer valid at its own time."""
        return [q for step in self.steps[: self._check_time(t) + 1] for q in step.questions]

    def _check_time(self, t: int) -> int:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(self):
            raise ValueError(f"t: expected a step index in [0, {len(self) - 1}], got {t!r}")
        return t

    def __repr__(self) -> str:
        n_docs = sum(len(s.documents) for s in self)
        n_questions = sum(len(s.questions) for s in self)
        return (f"{type(self).__name__}({self.name!r}, steps={len(self)}, documents={n_docs}, "
                f"questions={n_questions})")


class KnowledgeStream(KnowledgeSteps):
    """A generated stream: its steps, the closed vocabulary and a word-level tokenizer."""

    def vocabulary(self) -> tuple[str, ...]:
        """Every word a document or question can contain, after the special tokens."""
        return vocabulary()

    def tokenizer(self):
        """The word-level tokenizer of ``knowledge_tokenizer``."""
        return knowledge_tokenizer()


# ----------------------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class _Lexicon:
    words: tuple[str, ...]
    names: tuple[str, ...]
    decoys: dict[str, str]
    values: dict[str, tuple[str, ...]]


def _invent(g: torch.Generator, n: int, parts: tuple, taken: set[str]) -> tuple[str, ...]:
    """``n`` new words, each one random choice from every part, none in ``taken``."""
    words = []
    while len(words) < n:
        word = "".join(_pick(g, options) for options in parts)
        if word not in taken:
            taken.add(word)
            words.append(word)
    return tuple(words)


def _decoy(name: str, taken: set[str]) -> str:
    """``name`` with its first vowel changed: a look-alike that is never asked about."""
    i = next(k for k, ch in enumerate(name) if ch in _VOWELS)
    for shift in range(1, len(_VOWELS)):
        word = name[:i] + _VOWELS[(_VOWELS.index(name[i]) + shift) % 5] + name[i + 1:]
        if word not in taken:
            taken.add(word)
            return word
    raise RuntimeError(f"no free look-alike of {name!r}")  # 4 vowels all taken: cannot happen


@lru_cache(maxsize=1)
def _lexicon() -> _Lexicon:
    templates = [*INTROS, *MENTIONS, QUESTION]
    for a in ATTRIBUTES:
        templates += [*a.statements, *a.updates, *a.questions]
    words = [w for t in templates for w in t.split() if not w.startswith("{")]
    words = list(dict.fromkeys([*words, *(str(t) for t in range(MAX_STEPS))]))
    taken = set(words) | set(TITLES)
    g = derive_generator(LEXICON_SEED, "knowledge.lexicon")
    names = _invent(g, N_NAMES, _WORD_PARTS["names"], taken)
    values = {a.name: TITLES if a.name == "title" else _invent(g, N_VALUES, _WORD_PARTS[a.name],
                                                                    taken)
              for a in ATTRIBUTES}
    decoys = {name: _decoy(name, taken) for name in names}
    return _Lexicon(tuple(words), names, decoys, values)


def vocabulary() -> tuple[str, ...]:
    """Specials, template words, step numbers, names, look-alikes, values: the tokenizer's ids."""
    lex = _lexicon()
    return (*SPECIALS, *lex.words, *lex.names, *lex.decoys.values(),
            *(v for a in ATTRIBUTES for v in lex.values[a.name]))


def attribute_values(attribute: str) -> tuple[str, ...]:
    """The closed set of values ``attribute`` takes (chance level is one over its size)."""
    values = _lexicon().values
    if attribute not in values:
        raise ValueError(f"attribute: expected one of {sorted(values)}, got {attribute!r}")
    return values[attribute]


def knowledge_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over ``vocabulary()`` that prepends ``[BOS]``.

    ``[SEP]`` and ``[EOS]`` are words of the text: "as of step 2 , ... ? [SEP] brantex [EOS]".
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A",
                                                       special_tokens=[("[BOS]", ids["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", sep_token=SEP,
                                   clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------- the world

def _pick(g: torch.Generator, options):
    return options[int(torch.randint(len(options), (1,), generator=g))]


def _between(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


class _World:
    """The facts valid now, how often each changed, and the newest document stating each."""

    def __init__(self, arrivals: list[str]):
        self.arrivals, self.alive = arrivals, []
        self.current: dict[tuple[str, str], str] = {}
        self.changes: dict[tuple[str, str], int] = {}
        self.evidence: dict[tuple[str, str], tuple[str, int]] = {}

    def arrive(self, g: torch.Generator, k: int) -> list[tuple[str, str, str, str]]:
        """``k`` new people with every attribute: (entity, attribute, value, "new") facts."""
        facts = []
        for entity in self.arrivals[len(self.alive): len(self.alive) + k]:
            self.alive.append(entity)
            for a in ATTRIBUTES:
                value = _pick(g, attribute_values(a.name))
                self.current[entity, a.name], self.changes[entity, a.name] = value, 0
                facts.append((entity, a.name, value, "new"))
        return facts

    def update(self, g: torch.Generator, rate: float) -> list[tuple[str, str, str, str]]:
        """A new value for ``round(rate * pairs)`` pairs: (entity, attribute, value, "update")."""
        pairs = list(self.current)
        chosen = sorted(torch.randperm(len(pairs), generator=g)[: round(rate * len(pairs))]
                        .tolist())
        facts = []
        for i in chosen:
            key = pairs[i]
            value = _pick(g, [v for v in attribute_values(key[1]) if v != self.current[key]])
            self.current[key] = value
            self.changes[key] += 1
            facts.append((*key, value, "update"))
        return facts

    def restatement(self, g: torch.Generator) -> list[tuple[str, str, str, str]]:
        """1-3 current facts of one person, stated again."""
        entity = _pick(g, self.alive)
        k = _between(g, 1, 3)
        return [(entity, ATTRIBUTES[i].name, self.current[entity, ATTRIBUTES[i].name], "new")
                for i in sorted(torch.randperm(len(ATTRIBUTES), generator=g)[:k].tolist())]


def _write(g: torch.Generator, facts: list[tuple[str, str, str, str]]) -> str:
    """An introduction about the first person, then one sentence per fact."""
    sentences = [_pick(g, INTROS).format(e=facts[0][0])]
    for entity, attribute, value, kind in facts:
        a = BY_NAME[attribute]
        sentences.append(_pick(g, a.updates if kind == "update" else a.statements)
                         .format(e=entity, v=value))
    return " ".join(sentences)


def _distractor(g: torch.Generator, world: _World) -> tuple[str, tuple]:
    """Mentions of people without values, or facts about a look-alike name."""
    if float(torch.rand((), generator=g)) < 0.5:
        return " ".join(_pick(g, MENTIONS).format(e=_pick(g, world.alive))
                        for _ in range(_between(g, 2, 4))), ()
    decoy = _lexicon().decoys[_pick(g, world.alive)]
    k = _between(g, 1, 3)
    facts = [(decoy, ATTRIBUTES[i].name, _pick(g, attribute_values(ATTRIBUTES[i].name)), "new")
             for i in sorted(torch.randperm(len(ATTRIBUTES), generator=g)[:k].tolist())]
    return _write(g, facts), tuple(f[:3] for f in facts)


def _documents(g: torch.Generator, world: _World, t: int, facts: list, docs_per_step: int,
               distractors: int) -> tuple[KnowledgeDocument, ...]:
    """Every changed fact in some document, restatements, distractors; in a seeded order."""
    n = max(docs_per_step, -(-len(facts) // MAX_FACTS))
    bounds = [len(facts) * i // n for i in range(n + 1)]
    specs = []
    for i in range(n):
        chunk = facts[bounds[i]: bounds[i + 1]] or world.restatement(g)
        specs.append((_write(g, chunk), tuple(f[:3] for f in chunk), False))
    specs += [(*_distractor(g, world), True) for _ in range(distractors)]
    docs = []
    for i, k in enumerate(torch.randperm(len(specs), generator=g).tolist()):
        text, stated, distractor = specs[k]
        docs.append(KnowledgeDocument(f"d{t}-{i}", t, text, stated, distractor))
        if not distractor:
            for entity, attribute, _ in stated:
                world.evidence[entity, attribute] = (docs[-1].doc_id, t)
    return tuple(docs)


def _questions(g: torch.Generator, world: _World, t: int, k: int) -> tuple[Question, ...]:
    pairs = list(world.current)
    questions = []
    for i, p in enumerate(torch.randperm(len(pairs), generator=g)[:k].tolist()):
        entity, attribute = pairs[p]
        doc_id, inserted_at = world.evidence[entity, attribute]
        text = QUESTION.format(t=t, q=_pick(g, BY_NAME[attribute].questions).format(e=entity))
        questions.append(Question(f"q{t}-{i}", t, text, (world.current[entity, attribute],),
                                  entity, attribute, doc_id, world.changes[entity, attribute] > 0,
                                  inserted_at))
    return tuple(questions)


def knowledge_stream(n_steps: int, *, seed: int, entities: int = 12, new_entities: int = 1,
                     docs_per_step: int = 6, update_rate: float = 0.1, distractors: int = 2,
                     questions_per_step: int = 8) -> KnowledgeStream:
    """``n_steps`` steps of changing facts about invented people (see the module notes).

    ``entities``: people at step 0; ``new_entities``: people arriving at each
    later step; ``docs_per_step``: fact documents per step (more when a step
    changes more than ``MAX_FACTS * docs_per_step`` facts, as step 0 may);
    ``update_rate``: fraction of (person, attribute) pairs given a new value at
    each later step; ``distractors``: distractor documents per step;
    ``questions_per_step``: distinct pairs asked about per step (fewer if fewer exist).
    """
    _check_int("n_steps", n_steps, 1, MAX_STEPS)
    _check_int("entities", entities, 1, N_NAMES)
    for name, value in (("new_entities", new_entities), ("distractors", distractors),
                        ("questions_per_step", questions_per_step)):
        _check_int(name, value, 0, None)
    _check_int("docs_per_step", docs_per_step, 1, None)
    if isinstance(update_rate, bool) or not isinstance(update_rate, int | float) \
            or not 0.0 <= update_rate <= 1.0:
        raise ValueError(f"update_rate: expected a fraction in [0, 1], got {update_rate!r}")
    people = entities + new_entities * (n_steps - 1)
    if people > N_NAMES:
        raise ValueError(f"entities + new_entities * (n_steps - 1) = {people}: expected at most "
                         f"the {N_NAMES} invented names")
    names = _lexicon().names
    order = torch.randperm(N_NAMES, generator=derive_generator(seed, "knowledge.people"))
    world = _World([names[i] for i in order.tolist()])
    steps = []
    for t in range(n_steps):
        g = derive_generator(seed, "knowledge.step", t)
        facts = world.update(g, update_rate) if t else []
        n_updates = len(facts)
        facts += world.arrive(g, new_entities if t else entities)
        documents = _documents(g, world, t, facts, docs_per_step, distractors)
        meta = {"updates": n_updates,
                "new_entities": tuple(dict.fromkeys(f[0] for f in facts[n_updates:]))}
        steps.append(KnowledgeStep(t, documents, _questions(g, world, t, questions_per_step),
                                   meta))
    return KnowledgeStream(steps, name=f"knowledge(seed={seed})")


def _check_int(name: str, value, lo: int, hi: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo \
            or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected an int {bound}, got {value!r}")
