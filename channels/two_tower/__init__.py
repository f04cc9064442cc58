"""Two-tower ANN retrieval channel: towers (model), training (train), faiss index (index), the channel."""
