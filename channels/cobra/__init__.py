"""Generative COBRA-style retrieval channel: semantic IDs (sparse) plus dense item vectors.

encoder.py        item content vectors (TF-IDF + SVD, optional sentence-transformer) fused with
                  collaborative vectors; the input of the tokenizer and of the dense item encoder
semantic_ids.py   residual k-means semantic IDs, TIGER disambiguation, the tokenizer report
rqvae.py          RQ-VAE tokenizer (k-means initialised codebooks, dead-code restart)
trie.py           prefix trie of existing codes (per-level valid-code tables) and leaf -> items
catalog.py        item state helpers: faiss index, in-ID popularity prior, item-encoder vectors
features.py       per-item inputs of the trainable item encoder
model.py          the transformer (history of code tokens + dense vectors) and its cascaded heads
train.py          training: per-level code cross-entropy + dense contrastive loss, early stopping
beam.py           trie-constrained beam search and BeamFusion
requests.py       validation requests for early stopping through the real retrieval path
channel.py        CobraChannel (modes: cobra, cobra_sparse, tiger)
persist.py        the channel's save / load (JSON, .npy, weights-only state_dict, faiss; no pickle)
"""
