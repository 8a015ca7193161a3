"""``memkit lm``: build a kNN-LM datastore from text files and score text with and without it.

    memkit lm datastore MODEL_DIR corpus/*.txt --out store.safetensors --nbytes 200MB
    memkit lm perplexity MODEL_DIR test/*.txt --datastore store.safetensors --cache 8MB

``MODEL_DIR`` is any local Hugging Face causal LM with its tokenizer
(``transformers``, extra ``lm``); each text file is one document. The
datastore is a ``memkit.buffers.Datastore`` saved with its manifest (safetensors,
never pickled); ``memkit inspect`` reads it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memkit.agents.causal_lm import CausalLM
from memkit.agents.knn_lm import KNNLM, build_datastore
from memkit.budget import Budget, format_size, parse_size
from memkit.buffers.datastore import Datastore
from memkit.io import read_manifest


def add_parser(sub) -> None:
    lm = sub.add_parser("lm", help="kNN-LM: build a datastore from text, score text with it",
                        description=__doc__.split("\n\n")[0])
    commands = lm.add_subparsers(required=True, metavar="ACTION")
    p = commands.add_parser("datastore", help="one entry per token of the text files")
    _common(p)
    p.add_argument("--out", type=Path, required=True, help="the datastore file to write")
    p.add_argument("--nbytes", default="100MB", help="its byte budget (default 100MB)")
    p.add_argument("--index", default="Flat", help="faiss index string (default Flat: exact)")
    p.set_defaults(command=_datastore)
    p = commands.add_parser("perplexity", help="perplexity of the LM alone and with kNN-LM")
    _common(p)
    p.add_argument("--datastore", type=Path, help="a datastore written by 'memkit lm datastore'")
    p.add_argument("--cache", help="bytes of a per-document cache of the document's own tokens")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lam", type=float, default=0.25)
    p.add_argument("--temperature", type=float, default=1.0)
    p.set_defaults(command=_perplexity)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, metavar="MODEL_DIR")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="text, one document each")
    p.add_argument("--window", type=int, help="tokens per window (default: the model's)")


def _load(args) -> tuple[CausalLM, list]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"{args.model}: expected a Hugging Face model folder with "
                                f"config.json")
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    lm = CausalLM(model, tokenizer, window=args.window)
    return lm, [lm.encode(path.read_text()) for path in args.files]


def _datastore(args) -> int:
    lm, docs = _load(args)
    store = Datastore(lm.dim, Budget(args.nbytes), index=args.index)
    written = build_datastore(lm, docs, store)
    store.save(args.out)
    print(f"{args.out}: {len(store)} of {written} entries kept (capacity {store.capacity}), "
          f"{format_size(store.nbytes)}, index {args.index}")
    return 0


def open_datastore(path: Path) -> Datastore:
    """A datastore saved by ``Datastore.save``, rebuilt from its manifest and loaded."""
    manifest = read_manifest(path)
    config = dict(manifest.get("config", {}))
    if manifest.get("store") != Datastore.registry_name or "dim" not in config:
        raise ValueError(f"{path}: expected a saved Datastore, got a {manifest.get('class')!r}")
    store = Datastore(budget=Budget(config["nbytes"]), **config)
    store.load(path)
    return store


def _perplexity(args) -> int:
    lm, docs = _load(args)
    stores = {}
    if args.datastore is not None:
        stores["datastore"] = open_datastore(args.datastore)
    if args.cache is not None:
        stores["cache"] = Datastore(lm.dim, Budget(parse_size(args.cache)))
    rows = [("LM alone", lm.perplexity(docs))]
    if stores:
        knn = KNNLM(lm.model, lm.tokenizer, **stores, k=args.k, lam=args.lam,
                    temperature=args.temperature, window=lm.window)
        rows.append((f"kNN-LM ({' + '.join(stores)}, k={args.k}, lambda={args.lam}, "
                     f"T={args.temperature:g})", knn.perplexity(docs)))
    tokens = sum(len(d) - 1 for d in docs)
    print(f"| model | perplexity ({tokens} tokens) |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")
    return 0
