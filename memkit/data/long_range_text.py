"""Generated documents whose facts are stated once and used again beyond an LM's context window.

Memory-augmented language models help when a token is predictable only from
text the model can no longer attend to: kNN-LM (Khandelwal et al.,
"Generalization through Memorization: Nearest Neighbor Language Models",
ICLR 2020), MLP Memory ("MLP Memory: Language Modeling with
Retriever-pretrained External Memory", 2025) and LongMem (Wang et al.,
"Augmenting Language Models with Long-Term Memory", NeurIPS 2023). This module
writes such text, in the spirit of bAbI's generated stories (Weston et al.,
"Towards AI-Complete Question Answering: A Set of Prerequisite Toy Tasks",
ICLR 2016), over a closed vocabulary of about 1,200 words:

- a document has 2-4 entities (invented names such as "zovak") with 2-4
  attributes each (pet, city, colour, job, food, boats); each value is drawn
  at random per document (no two facts of a document share one), so nothing
  but the statement predicts it;
- it first STATES the facts ("the pet of zovak is a plimb ."), then, ``rounds``
  times, writes ``gap`` words of filler (English words in simple sentence
  templates) and USES every fact once, in a sentence ("zovak fed the plimb .")
  or a question and answer ("q : what is the pet of zovak ? a : plimb ."),
  between short filler; with probability ``echo`` a use is repeated a few
  words later (its evidence is then inside any context window: the control);
- every use records the word index of its value, the word index of the value
  in the statement, and of the value's latest earlier mention (its evidence)
  and the distance in words between them;
- test documents name only held-out entities (every fifth name of the name
  list; train documents use the others).

Text is words separated by single spaces; ``corpus_tokenizer`` is a
word-level tokenizer over the whole vocabulary that prepends ``[BOS]``, so word
``i`` of a document is token ``i + 1``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import torch

from memkit.seeding import derive_generator

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
SPLITS = ("train", "test")
HELD_OUT_EVERY = 5
"""Every fifth name of ``NAMES`` is held out for test documents."""
N_NAMES, N_VALUES = 640, 32
"""Invented entity names, and values per attribute."""
VOCABULARY_SEED = 0
"""The seed of the invented words: fixed, so every corpus shares one vocabulary."""

# ----------------------------------------------------------------------------- filler words


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NOUNS = _words("""river hill market garden window road bridge lamp table letter song storm
field forest harbour tower kitchen village wall stone cloud wind fire candle book basket
rope wheel cart barn roof path gate well bell clock mirror blanket shelf bottle cup bowl
knife boot hat bench fence ladder lantern map coin drum flag nest feather leaf branch root
shadow meadow valley cliff shore island sail anchor engine chimney stair pond orchard mill
cellar attic chair box key bucket hammer sack tent cave""")
TRANSITIVE = _words("""found carried opened closed watched mended lifted pulled pushed
dropped cleaned filled emptied moved hid noticed touched counted followed passed crossed
reached left kept held turned shook bought sold borrowed lost burned built broke tied
wrapped washed dried covered climbed checked fixed brought marked""")
INTRANSITIVE = _words("""walked waited rested sang slept sat stood ran looked listened
laughed worked stayed wandered paused hurried whistled danced knelt shouted""")
ADJECTIVES = _words("""old small quiet bright heavy narrow wide warm cold wet dry tall dark
pale round soft rough broken empty long short sharp gentle strange clean dusty wooden
hollow tiny huge busy silent calm wild plain thin thick steep shallow deep cheap distant
crooked""")
ADVERBS = _words("""slowly quickly quietly carefully often never later soon suddenly gladly
barely nearly always rarely simply gently""")
PREPOSITIONS = _words("""near under over behind beside across along into through past around
above below toward inside""")
SUBJECTS = ("she", "he", "they", "we", "someone", "nobody", "everyone", "the children",
            "the old man", "the neighbours", "a stranger", "the traveller")
TIMES = ("in the morning", "at night", "after the rain", "before dawn", "during the winter",
         "on that day", "in the evening", "by noon", "all summer", "the next day")
DETERMINERS = ("the", "a", "one", "every", "that")
SENTENCES = (
    "{det} {adj} {noun} {vi} {prep} the {noun} .",
    "{subj} {vt} the {noun} {time} .",
    "{subj} {adv} {vt} a {adj} {noun} .",
    "when the {noun} was {adj} , {subj} {vt} the {noun} .",
    "there was a {noun} {prep} the {noun} , and it was {adj} .",
    "the {noun} and the {noun} were {adj} {time} .",
    "{subj} said that the {noun} was {adj} .",
    "{time} , {subj} {vi} {prep} the {adj} {noun} .",
    "{subj} {vi} and then {vt} the {noun} .",
    "if the {noun} is {adj} , {subj} will not stay .",
)
"""Filler sentence templates; slots name the word lists above."""
SLOTS = {"det": DETERMINERS, "adj": ADJECTIVES, "noun": NOUNS, "vi": INTRANSITIVE,
         "vt": TRANSITIVE, "adv": ADVERBS, "prep": PREPOSITIONS, "subj": SUBJECTS,
         "time": TIMES}


@dataclass(frozen=True)
class Attribute:
    """What a fact is about: how it is stated, used and asked (``{e}`` entity, ``{v}`` value)."""

    name: str
    statements: tuple[str, ...]
    uses: tuple[str, ...]
    question: str


ATTRIBUTES = (
    Attribute("pet", ("the pet of {e} is a {v} .", "{e} keeps a {v} as a pet ."),
              ("{e} fed the {v} .", "{e} took the {v} for a walk .", "{e} brushed the {v} ."),
              "what is the pet of {e}"),
    Attribute("city", ("{e} lives in {v} .", "the home city of {e} is {v} ."),
              ("{e} took the train back to {v} .", "{e} missed the streets of {v} ."),
              "where does {e} live"),
    Attribute("colour", ("the favourite colour of {e} is {v} .", "{e} likes the colour {v} best ."),
              ("{e} painted the door {v} .", "{e} wore a {v} coat ."),
              "what colour does {e} like"),
    Attribute("job", ("{e} works as a {v} .", "by trade {e} is a {v} ."),
              ("{e} went to work as a {v} .", "{e} was a good {v} ."),
              "what is the job of {e}"),
    Attribute("food", ("{e} likes to eat {v} .", "the favourite food of {e} is {v} ."),
              ("{e} cooked {v} for dinner .", "{e} ordered {v} again ."),
              "what food does {e} like"),
    Attribute("boats", ("{e} has {v} boats .", "{e} owns {v} boats ."),
              ("{e} counted {v} boats at the dock .", "{e} painted all {v} boats ."),
              "how many boats does {e} have"),
)
BY_NAME = {a.name: a for a in ATTRIBUTES}
QA = "q : {question} ? a : {v} ."


# ----------------------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class Fact:
    """A stated fact; ``word`` is the index of its value in the statement."""

    entity: str
    attribute: str
    value: str
    word: int


@dataclass(frozen=True)
class Use:
    """A later mention of a fact's value.

    ``word``: index of the value in ``text.split()``; ``span``: its characters in
    ``text``; ``statement``: index of the value in the fact's statement;
    ``evidence``: index of the value's latest earlier mention (the statement or
    an earlier use); ``distance = word - evidence``; ``echo``: a repeat placed
    right after an earlier use.
    """

    entity: str
    attribute: str
    value: str
    word: int
    span: tuple[int, int]
    statement: int
    evidence: int
    distance: int
    qa: bool
    echo: bool


@dataclass(frozen=True)
class Document:
    """A generated document: text, its facts, their uses, and (kind, start, end) word segments.

    Segment kinds are "statement", "filler" and "use"; ends are exclusive.
    """

    text: str
    facts: tuple[Fact, ...]
    uses: tuple[Use, ...]
    segments: tuple[tuple[str, int, int], ...]


def _invented(g: torch.Generator, n: int, onsets, vowels, codas, syllables: int,
              taken: set[str]) -> list[str]:
    """``n`` distinct words of ``syllables`` onset-vowel syllables and a coda, none in ``taken``."""
    words: list[str] = []
    while len(words) < n:
        parts = [onsets[int(torch.randint(len(onsets), (1,), generator=g))]
                 + vowels[int(torch.randint(len(vowels), (1,), generator=g))]
                 for _ in range(syllables)]
        word = "".join(parts) + codas[int(torch.randint(len(codas), (1,), generator=g))]
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


@lru_cache(maxsize=1)
def _lexicon() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], tuple[str, ...]]:
    """(names, values per attribute, every other word), fixed by ``VOCABULARY_SEED``."""
    templates = [*SENTENCES, QA.replace("{question}", "")]
    for a in ATTRIBUTES:
        templates += [*a.statements, *a.uses, a.question]
    words = [w for t in templates for w in t.split() if not w.startswith("{")]
    words += [w for ws in SLOTS.values() for phrase in ws for w in phrase.split()]
    words = list(dict.fromkeys(words))
    g = derive_generator(VOCABULARY_SEED, "long_range_text.vocabulary")
    taken = set(words)
    names = _invented(g, N_NAMES, "bdfgklmnprstvz", "aeiou", ("k", "n", "r", "s", "l", "x"), 2,
                      taken)
    clusters = ("pl", "br", "dr", "gr", "kr", "sk", "st", "tr", "fl", "gl", "sn", "sp", "bl",
                "fr", "sl", "sw")
    codas = ("mb", "sk", "nt", "rd", "lk", "sp", "ng", "x", "rn", "ft")
    values = {}
    for a in ATTRIBUTES:
        if a.name == "boats":
            values[a.name] = tuple(str(k) for k in range(2, 2 + N_VALUES))
        else:
            values[a.name] = tuple(_invented(g, N_VALUES, clusters, "aeiou", codas, 1, taken))
    return tuple(names), values, tuple(words)


def vocabulary() -> tuple[str, ...]:
    """Every word a document can contain, after the special tokens; the tokenizer's ids."""
    names, values, words = _lexicon()
    return (*SPECIALS, *words, *names, *(v for a in ATTRIBUTES for v in values[a.name]))


def vocabulary_sha256() -> str:
    """A digest of ``vocabulary()``: a model trained on one vocabulary checks it with this."""
    return hashlib.sha256("\n".join(vocabulary()).encode()).hexdigest()


def entity_names(split: str) -> tuple[str, ...]:
    """The names ``split`` documents draw their entities from (the two splits are disjoint)."""
    _check_split(split)
    names = _lexicon()[0]
    held_out = split == "test"
    return tuple(n for i, n in enumerate(names) if (i % HELD_OUT_EVERY == 0) == held_out)


def attribute_values(attribute: str) -> tuple[str, ...]:
    """The values ``attribute`` can take (a use's chance level is one over their number)."""
    values = _lexicon()[1]
    if attribute not in values:
        raise ValueError(f"attribute: expected one of {sorted(values)}, got {attribute!r}")
    return values[attribute]


def corpus_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over ``vocabulary()``; it prepends ``[BOS]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", ids["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]",
                                   clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------- documents

class _Writer:
    """Appends sentences word by word, remembering segments."""

    def __init__(self, g: torch.Generator):
        self.g, self.words, self.segments = g, [], []

    def pick(self, options):
        return options[int(torch.randint(len(options), (1,), generator=self.g))]

    def sentence(self, kind: str, template: str, fill: dict[str, str]) -> int | None:
        """Write ``template``; return the word index of its ``{v}`` slot (None without one)."""
        start, slot = len(self.words), None
        for token in template.split():
            if token == "{v}":
                slot = len(self.words)
            if token.startswith("{"):
                key = token[1:-1]
                token = fill[key] if key in fill else self.pick(SLOTS[key])
            self.words += token.split()
        self.segments.append((kind, start, len(self.words)))
        return slot

    def filler(self, n_words: int) -> None:
        """Filler sentences until at least ``n_words`` words were written."""
        end = len(self.words) + n_words
        while len(self.words) < end:
            self.sentence("filler", self.pick(SENTENCES), {})


def document(g: torch.Generator, names: tuple[str, ...], *, gap: tuple[int, int],
             entities: tuple[int, int], attributes: tuple[int, int], rounds: int,
             qa: float, echo: float) -> Document:
    """One document drawn from ``g`` with entities from ``names`` (see the module notes)."""
    w = _Writer(g)
    facts = _draw_facts(g, names, entities, attributes)
    last = {}
    stated = []
    for k in torch.randperm(len(facts), generator=g).tolist():
        entity, attribute, value = facts[k]
        word = w.sentence("statement", w.pick(BY_NAME[attribute].statements),
                          {"e": entity, "v": value})
        last[entity, attribute] = word
        stated.append(Fact(entity, attribute, value, word))
        w.filler(8 * int(torch.randint(0, 2, (1,), generator=g)))  # none or a sentence
    uses = []
    for _ in range(rounds):
        w.filler(int(torch.randint(gap[0] + 1, gap[1] + 2, (1,), generator=g)))
        for k in torch.randperm(len(facts), generator=g).tolist():
            repeats = 2 if float(torch.rand((), generator=g)) < echo else 1
            for r in range(repeats):
                uses.append(_use(w, facts[k], last, qa, echo=r > 0))
                w.filler(int(torch.randint(4, 24, (1,), generator=g)))
    starts = [0]
    for word in w.words:
        starts.append(starts[-1] + len(word) + 1)
    statement = {(f.entity, f.attribute): f.word for f in stated}
    uses = [Use(e, a, v, word, (starts[word], starts[word] + len(v)), statement[e, a], ev,
                word - ev, q, echo) for e, a, v, word, ev, q, echo in uses]
    return Document(" ".join(w.words), tuple(sorted(stated, key=lambda f: f.word)), tuple(uses),
                    tuple(w.segments))


def _draw_facts(g, names, entities, attributes) -> list[tuple[str, str, str]]:
    """(entity, attribute, value) triples; no value is shared by two facts of a document."""
    n_entities = int(torch.randint(entities[0], entities[1] + 1, (1,), generator=g))
    chosen = [names[i] for i in torch.randperm(len(names), generator=g)[:n_entities].tolist()]
    pool = {a.name: [attribute_values(a.name)[i]
                     for i in torch.randperm(N_VALUES, generator=g).tolist()]
            for a in ATTRIBUTES}
    facts = []
    for entity in chosen:
        n = int(torch.randint(attributes[0], attributes[1] + 1, (1,), generator=g))
        for i in torch.randperm(len(ATTRIBUTES), generator=g)[:n].tolist():
            name = ATTRIBUTES[i].name
            facts.append((entity, name, pool[name].pop()))
    return facts


def _use(w: _Writer, fact: tuple[str, str, str], last: dict, qa: float, *, echo: bool) -> tuple:
    entity, attribute, value = fact
    a = BY_NAME[attribute]
    asked = float(torch.rand((), generator=w.g)) < qa
    template = (QA.replace("{question}", a.question) if asked else w.pick(a.uses))
    word = w.sentence("use", template, {"e": entity, "v": value})
    evidence, last[entity, attribute] = last[entity, attribute], word
    return entity, attribute, value, word, evidence, asked, echo


def long_range_corpus(n_docs: int, *, seed: int, split: str = "train",
                      gap: tuple[int, int] = (150, 600), entities: tuple[int, int] = (2, 4),
                      attributes: tuple[int, int] = (2, 4), rounds: int = 2, qa: float = 0.5,
                      echo: float = 0.2) -> list[Document]:
    """``n_docs`` documents of ``split``; document ``i`` depends only on (seed, split, i, options).

    ``gap`` (lo, hi): filler words before each round of uses, drawn in
    [lo + 1, hi + 1], so every use that is not an echo is more than ``lo`` words
    from its evidence. ``entities`` / ``attributes``: (lo, hi) per document /
    entity. ``rounds``: how often every fact is used. ``qa``: probability that a
    use is a question and answer; ``echo``: that a use is repeated right after.
    """
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 0:
        raise ValueError(f"n_docs: expected an int >= 0, got {n_docs!r}")
    _check_split(split)
    _check_range("gap", gap, 1, None)
    _check_range("entities", entities, 1, len(entity_names("test")))
    _check_range("attributes", attributes, 1, len(ATTRIBUTES))
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected an int >= 1, got {rounds!r}")
    for name, p in (("qa", qa), ("echo", echo)):
        if not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {p!r}")
    names = entity_names(split)
    return [document(derive_generator(seed, f"long_range_text.{split}", i), names,
                     gap=tuple(gap), entities=tuple(entities), attributes=tuple(attributes),
                     rounds=rounds, qa=qa, echo=echo) for i in range(n_docs)]


def _check_split(split) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


def _check_range(name: str, pair, lo: int, hi: int | None) -> None:
    ok = (isinstance(pair, tuple | list) and len(pair) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
          and lo <= pair[0] <= pair[1] and (hi is None or pair[1] <= hi))
    if not ok:
        bound = "" if hi is None else f" <= {hi}"
        raise ValueError(f"{name}: expected a pair (lo, hi) of ints with {lo} <= lo <= hi{bound}, "
                         f"got {pair!r}")
