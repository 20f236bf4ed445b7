"""Datasets of the paper (Appendix C.1): acquisition, verification, preprocessing, loading.

``prepare_dataset(dataset, out_dir, mirrors=...)`` (= ``larsvae.data.prepare.prepare``)
writes ``{out_dir}/{dataset}.npz`` (uint8 train / valid / test, (N, 784)) and a
``{dataset}.json`` manifest (the pipeline step ``larsvae prepare-data``); ``load`` reads them back as
tensors; ``BatchStream`` yields dynamically binarized training batches that depend only on
(seed, step). See ``prepare.py`` for splits and preprocessing, ``sources.py`` for sources.
"""

from . import prepare  # the module (its function is re-exported as prepare_dataset)
from .checksums import SHA256, ChecksumMismatch, DataError
from .loaders import BatchStream, eval_tensor, is_grey, load, load_manifest, train_stream
from .prepare import DEFAULT_SEED
from .prepare import prepare as prepare_dataset

__all__ = [
    "SHA256",
    "BatchStream",
    "ChecksumMismatch",
    "DataError",
    "DEFAULT_SEED",
    "eval_tensor",
    "is_grey",
    "load",
    "load_manifest",
    "prepare",
    "prepare_dataset",
    "train_stream",
]
