"""Item content vectors: the input of the semantic-ID tokenizer and of the dense item encoder.

Text part (EncoderConfig.text):
- 'tfidf': TF-IDF over one document per item (title words, 'c_<level>' tokens for every level of
  the category path, a 'b_<brand>' token), reduced by truncated SVD (scikit-learn, no download);
- 'sentence': a sentence-transformer loaded from a local path (`sentence_model`), imported lazily
  (the optional extra; never a hub download: the path must exist);
- 'none': no text (datasets without item text, e.g. Amazon Sports/Toys here).
Collaborative part (EncoderConfig.collab):
- 'covisit': truncated SVD of the degree-normalised co-visitation matrix of the training sequences;
- 'vectors': item vectors supplied by the caller (e.g. the two-tower item tower);
- 'none'.
Each part is L2-normalised, weighted, concatenated and normalised again. Items without
interactions get their collaborative part from a ridge map text -> collaborative fitted on the
items that have both, so a new item is placed by its content alone.
Persistence: vocabulary JSON + .npy arrays, never pickle.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

TEXT_KINDS = ("tfidf", "sentence", "none")
COLLAB_KINDS = ("none", "covisit", "vectors")
_SLUG = re.compile(r"\W+")
_UNKNOWN = {"", "unknown", "nan", "none"}


@dataclass(frozen=True)
class EncoderConfig:
    text: str = "tfidf"  # title/description vectors: 'tfidf' (+ SVD), 'sentence' or 'none'
    svd_dim: int = 64  # width of the TF-IDF SVD
    min_df: int = 1  # TF-IDF: items a token must appear in
    max_features: int | None = None  # TF-IDF vocabulary cap (None: all)
    sentence_model: str | None = None  # local folder of a sentence-transformer (text='sentence')
    collab: str = "none"  # collaborative part: 'none', 'covisit' or 'vectors' (a .npy)
    collab_dim: int = 32  # width of the co-visitation vectors
    collab_window: int = 3  # co-visitation window (positions)
    text_weight: float = 1.0  # weight of the text part in the fused vector
    collab_weight: float = 1.0  # weight of the collaborative part
    ridge: float = 1.0  # ridge penalty of the text -> collaborative map (items without interactions)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.text not in TEXT_KINDS:
            raise ValueError(f"text encoder must be one of {TEXT_KINDS}, got {self.text!r}")
        if self.collab not in COLLAB_KINDS:
            raise ValueError(f"collab must be one of {COLLAB_KINDS}, got {self.collab!r}")
        if self.text == "sentence" and not self.sentence_model:
            raise ValueError("text='sentence' needs sentence_model: a local folder of a sentence-transformer")
        if self.text == "none" and self.collab == "none":
            raise ValueError("the item encoder needs text or collaborative vectors (text='none' and collab='none')")


def _slug(value: object) -> str:
    return _SLUG.sub("_", str(value).strip().lower()).strip("_")


def item_documents(items: pd.DataFrame) -> list[str]:
    """One text per item: title, 'c_<slug>' per category-path level, 'b_<slug>' for the brand."""
    n = len(items)
    titles = items["title"].fillna("").astype(str).tolist() if "title" in items else [""] * n
    paths = items["categories"].fillna("").astype(str).tolist() if "categories" in items else [""] * n
    brands = items["brand"].fillna("").astype(str).tolist() if "brand" in items else [""] * n
    docs = []
    for title, path, brand in zip(titles, paths, brands):
        parts = [title] + [f"c_{_slug(p)}" for p in path.split("|") if _slug(p) not in _UNKNOWN]
        if _slug(brand) not in _UNKNOWN:
            parts.append(f"b_{_slug(brand)}")
        docs.append(" ".join(p for p in parts if p))
    return docs


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def covisit_vectors(train: pd.DataFrame, n_items: int, dim: int, window: int, seed: int) -> np.ndarray:
    """Item vectors (float32 [n_items, dim]) from the SVD of the symmetric co-visitation matrix
    (pairs within `window` positions, weight 1/distance) normalised by sqrt(deg_a * deg_b)."""
    users = train["user_id"].to_numpy(np.int64)
    items = train["item_id"].to_numpy(np.int64)
    rows, cols, vals = [], [], []
    for d in range(1, window + 1):
        same = users[d:] == users[:-d]
        a, b = items[:-d][same], items[d:][same]
        rows += [a, b]
        cols += [b, a]
        vals += [np.full(a.size, 1.0 / d)] * 2
    if not rows or not sum(r.size for r in rows):
        return np.zeros((n_items, dim), np.float32)
    mat = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items)).tocsr()
    deg = np.asarray(mat.sum(axis=1)).ravel()
    inv = sp.diags(1.0 / np.sqrt(np.maximum(deg, 1e-12)))
    mat = inv @ mat @ inv
    k = max(1, min(dim, n_items - 1))
    svd = TruncatedSVD(n_components=k, random_state=seed, algorithm="randomized", n_iter=7)
    vec = svd.fit_transform(mat) / np.sqrt(np.maximum(svd.singular_values_, 1e-12))  # U * sqrt(S)
    out = np.zeros((n_items, dim), np.float32)
    out[:, :k] = vec
    out[deg == 0] = 0.0
    return out


class ContentEncoder:
    """Fitted content encoder: `transform(items)` gives fused vectors for any items frame."""

    def __init__(self, cfg: EncoderConfig) -> None:
        self.cfg = cfg

    # ---- fit ------------------------------------------------------------------------------
    def fit(self, items: pd.DataFrame, train: pd.DataFrame | None, n_items: int,
            collab_vectors: np.ndarray | None = None) -> "ContentEncoder":
        """Fit on the catalog `items` (rows with item_id < n_items) and training interactions."""
        cfg = self.cfg
        ids = items["item_id"].to_numpy(np.int64)
        docs = item_documents(items)
        self.text_dim_ = 0
        text = None
        if cfg.text == "tfidf":
            text = self._fit_tfidf(docs)
        elif cfg.text == "sentence":
            text = self._sentence(docs)
        if text is not None:
            self.text_dim_ = text.shape[1]
        collab = self._fit_collab(ids, train, n_items, collab_vectors, text)
        self.collab_dim_ = 0 if collab is None else collab.shape[1]
        return self

    def _fit_tfidf(self, docs: list[str]) -> np.ndarray | None:
        cfg = self.cfg
        if not any(d.strip() for d in docs):  # no text in this dataset: collaborative part only
            if self.cfg.collab == "none":
                raise ValueError("the items have no text; set collab to 'covisit' or 'vectors'")
            self.vocabulary_, self.idf_, self.components_ = {}, np.zeros(0, np.float64), np.zeros((0, 0), np.float32)
            return None
        vec = TfidfVectorizer(sublinear_tf=True, min_df=cfg.min_df, max_features=cfg.max_features, dtype=np.float32)
        tfidf = vec.fit_transform(docs)
        self.vocabulary_ = {str(t): int(i) for t, i in vec.vocabulary_.items()}
        self.idf_ = vec.idf_.astype(np.float64)
        k = max(1, min(cfg.svd_dim, tfidf.shape[1] - 1, tfidf.shape[0] - 1))
        svd = TruncatedSVD(n_components=k, random_state=cfg.seed, algorithm="randomized", n_iter=7)
        svd.fit(tfidf)
        self.components_ = svd.components_.astype(np.float32)  # (k, V)
        return self._project(tfidf)

    def _fit_collab(self, ids, train, n_items, collab_vectors, text) -> np.ndarray | None:
        cfg = self.cfg
        self.collab_table_ = None
        self.ridge_ = None
        if cfg.collab == "none":
            return None
        if cfg.collab == "covisit":
            if train is None:
                raise ValueError("collab='covisit' needs training interactions")
            table = covisit_vectors(train, n_items, cfg.collab_dim, cfg.collab_window, cfg.seed)
        else:
            if collab_vectors is None:
                raise ValueError("collab='vectors' needs collab_vectors (float [n_items, d])")
            table = np.asarray(collab_vectors, np.float32)
            if table.shape[0] != n_items:
                raise ValueError(f"collab_vectors has {table.shape[0]} rows, the catalog {n_items}")
        self.collab_table_ = np.ascontiguousarray(table)
        known = np.linalg.norm(table, axis=1) > 0
        if text is not None:  # ridge map text -> collaborative, for items without interactions
            pos = np.full(n_items, -1, np.int64)
            pos[ids] = np.arange(len(ids))
            rows = np.flatnonzero(known & (pos >= 0))
            x, y = text[pos[rows]], table[rows]
            a = x.T @ x + cfg.ridge * np.eye(x.shape[1], dtype=np.float32)
            self.ridge_ = np.linalg.solve(a, x.T @ y).astype(np.float32)  # (text_dim, collab_dim)
        return table

    # ---- transform ------------------------------------------------------------------------
    def _project(self, tfidf: sp.spmatrix) -> np.ndarray:
        return np.asarray(tfidf @ self.components_.T, dtype=np.float32)

    def tfidf(self, items: pd.DataFrame) -> sp.csr_matrix:
        """L2-normalised TF-IDF rows over the fitted vocabulary (empty when there is no text)."""
        if not getattr(self, "vocabulary_", None):
            return sp.csr_matrix((len(items), 0), dtype=np.float32)
        vec = TfidfVectorizer(sublinear_tf=True, vocabulary=self.vocabulary_, dtype=np.float32)
        vec.idf_ = self.idf_
        return vec.transform(item_documents(items)).tocsr()

    def _sentence(self, docs: list[str]) -> np.ndarray:
        path = Path(str(self.cfg.sentence_model))
        if not path.exists():
            raise FileNotFoundError(f"sentence_model {path} does not exist (a local folder is required; no hub download)")
        try:
            from sentence_transformers import SentenceTransformer  # the optional extra
        except ImportError as err:
            raise ImportError("text='sentence' needs the sentence-transformers package (optional extra)") from err
        if not hasattr(self, "_st"):
            self._st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return np.asarray(self._st.encode(docs, batch_size=64, normalize_embeddings=True), np.float32)

    def text_vectors(self, items: pd.DataFrame) -> np.ndarray | None:
        if self.cfg.text == "none" or self.text_dim_ == 0:
            return None
        if self.cfg.text == "sentence":
            return self._sentence(item_documents(items))
        return self._project(self.tfidf(items))

    def transform(self, items: pd.DataFrame) -> np.ndarray:
        """Fused, L2-normalised content vectors (float32 [len(items), dim]) in frame order.
        Items with trained collaborative vectors use them; others get the ridge estimate."""
        cfg = self.cfg
        parts = []
        text = self.text_vectors(items)
        if text is not None:
            parts.append(cfg.text_weight * _normalize(text))
        if self.collab_table_ is not None:
            ids = items["item_id"].to_numpy(np.int64)
            collab = np.zeros((len(items), self.collab_table_.shape[1]), np.float32)
            inside = ids < self.collab_table_.shape[0]
            collab[inside] = self.collab_table_[ids[inside]]
            missing = np.linalg.norm(collab, axis=1) == 0
            if missing.any() and self.ridge_ is not None and text is not None:
                collab[missing] = text[missing] @ self.ridge_
            parts.append(cfg.collab_weight * _normalize(collab))
        return _normalize(np.concatenate(parts, axis=1))

    @property
    def dim(self) -> int:
        return self.text_dim_ + self.collab_dim_

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.cfg), "text_dim": self.text_dim_, "collab_dim": self.collab_dim_}
        (path / "encoder.json").write_text(json.dumps(meta))
        if self.cfg.text == "tfidf":
            (path / "vocabulary.json").write_text(json.dumps(self.vocabulary_))
            np.save(path / "idf.npy", self.idf_, allow_pickle=False)
            np.save(path / "svd_components.npy", self.components_, allow_pickle=False)
        if self.collab_table_ is not None:
            np.save(path / "collab.npy", self.collab_table_, allow_pickle=False)
        if self.ridge_ is not None:
            np.save(path / "collab_ridge.npy", self.ridge_, allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> "ContentEncoder":
        path = Path(path)
        meta = json.loads((path / "encoder.json").read_text())
        enc = cls(EncoderConfig(**meta["config"]))
        enc.text_dim_, enc.collab_dim_ = int(meta["text_dim"]), int(meta["collab_dim"])
        if enc.cfg.text == "tfidf":
            enc.vocabulary_ = json.loads((path / "vocabulary.json").read_text())
            enc.idf_ = np.load(path / "idf.npy", allow_pickle=False)
            enc.components_ = np.load(path / "svd_components.npy", allow_pickle=False)
        enc.collab_table_ = np.load(path / "collab.npy", allow_pickle=False) if (path / "collab.npy").exists() else None
        enc.ridge_ = np.load(path / "collab_ridge.npy", allow_pickle=False) if (path / "collab_ridge.npy").exists() else None
        return enc
