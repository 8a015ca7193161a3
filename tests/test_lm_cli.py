"""`memkit lm datastore` and `memkit lm perplexity` on a tiny GPT-2 with the corpus tokenizer."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from memkit import Budget  # noqa: E402
from memkit.buffers import Reservoir  # noqa: E402
from memkit.cli import main  # noqa: E402
from memkit.data.long_range_text import corpus_tokenizer, long_range_corpus  # noqa: E402
from memkit.lm_cli import open_datastore  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    tokenizer = corpus_tokenizer()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16,
                                     n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    files = []
    for i, doc in enumerate(long_range_corpus(2, seed=0, gap=(20, 30))):
        files.append(root / f"doc{i}.txt")
        files[-1].write_text(doc.text)
    return root, files, tokenizer


def test_build_a_datastore_then_score_with_it_and_a_cache(setup, capsys):
    root, files, tokenizer = setup
    store_path = root / "store.safetensors"
    args = ["lm", "datastore", str(root / "model"), *map(str, files), "--out", str(store_path),
            "--nbytes", "2MB"]
    assert main(args) == 0
    tokens = sum(len(tokenizer.encode(f.read_text())) - 1 for f in files)
    store = open_datastore(store_path)
    assert len(store) == tokens and store.nbytes <= 2_000_000
    assert f"{tokens} of {tokens} entries kept" in capsys.readouterr().out
    assert main(["lm", "perplexity", str(root / "model"), str(files[0]), "--datastore",
                 str(store_path), "--cache", "200KB", "--k", "8", "--temperature", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| LM alone") or "kNN-LM" in line]
    alone, knn = (float(line.split("|")[2]) for line in rows)
    assert "datastore + cache, k=8" in out and knn < alone  # the datastore holds this document


def test_bad_paths_are_reported_clearly(setup, tmp_path, capsys):
    root, files, _ = setup
    assert main(["lm", "perplexity", str(tmp_path), str(files[0])]) == 2
    assert "expected a Hugging Face model folder" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    Reservoir({"x": ((2,), torch.float32)}, Budget("1KB")).save(other)
    assert main(["lm", "perplexity", str(root / "model"), str(files[0]),
                 "--datastore", str(other)]) == 2
    assert "expected a saved Datastore" in capsys.readouterr().err
