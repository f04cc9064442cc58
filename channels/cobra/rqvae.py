"""RQ-VAE tokenizer: an MLP auto-encoder whose latent is quantised by L residual codebooks.

Codebooks are initialised by residual k-means on the (untrained) encoder's latents; training
minimises reconstruction MSE + sum_l (||sg(r_l) - e_l||^2 + beta ||r_l - sg(e_l)||^2) with the
straight-through estimator; after every epoch, codes that no item used are restarted on random
residuals of that level (dead-code restart). Full-batch on the catalog (items x dim is small).
Saved as rqvae.json + rqvae.pt (state_dict, loaded weights_only); no pickle.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from channels.cobra.semantic_ids import ResidualKMeans
from pipeline.core import device


class _Net(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_latent: int, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_latent))
        self.dec = nn.Sequential(nn.Linear(d_latent, hidden), nn.ReLU(), nn.Linear(hidden, d_in))
        self.codebooks = nn.ParameterList(nn.Parameter(torch.zeros(k, d_latent)) for k in levels)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(codes (N, L), quantised latent (N, d), residual entering each level)."""
        residual, q, codes, residuals = z, torch.zeros_like(z), [], []
        for book in self.codebooks:
            residuals.append(residual)
            code = torch.cdist(residual, book).argmin(dim=1)  # (N,)
            e = book[code]  # (N, d)
            codes.append(code)
            q = q + e
            residual = residual - e
        return torch.stack(codes, 1), q, residuals


class RQVAE:
    def __init__(self, levels: tuple[int, ...], hidden: int = 128, d_latent: int = 32, epochs: int = 50,
                 beta: float = 0.25, lr: float = 1e-3, kmeans_iter: int = 25, seed: int = 0) -> None:
        self.levels = tuple(int(k) for k in levels)
        self.hidden, self.d_latent, self.epochs, self.beta = hidden, d_latent, epochs, beta
        self.lr, self.kmeans_iter, self.seed = lr, kmeans_iter, seed

    def _meta(self) -> dict:
        return {"levels": list(self.levels), "hidden": self.hidden, "d_latent": self.d_latent, "epochs": self.epochs,
                "beta": self.beta, "lr": self.lr, "kmeans_iter": self.kmeans_iter, "seed": self.seed}

    def fit(self, x: np.ndarray) -> "RQVAE":
        torch.manual_seed(self.seed)
        gen = device.generator(self.seed)
        data = device.tensor(np.ascontiguousarray(x, np.float32))
        self.d_in_ = data.shape[1]
        self.net_ = _Net(self.d_in_, self.hidden, self.d_latent, self.levels)
        with torch.no_grad():  # k-means initialised codebooks
            init = ResidualKMeans(self.levels, self.kmeans_iter, self.seed).fit(device.numpy(self.net_.enc(data)))
            for book, cent in zip(self.net_.codebooks, init.centroids_):
                book.copy_(device.tensor(cent))
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        self.history_ = []
        for _ in range(self.epochs):
            z = self.net_.enc(data)
            codes, q, residuals = self.net_.quantize(z)
            recon = self.net_.dec(z + (q - z).detach())  # straight-through
            commit = sum(F.mse_loss(r.detach(), book[c]) + self.beta * F.mse_loss(r, book[c].detach())
                         for r, book, c in zip(residuals, self.net_.codebooks, codes.T))
            loss = F.mse_loss(recon, data) + commit
            opt.zero_grad()
            loss.backward()
            opt.step()
            dead = self._restart_dead(codes, residuals, gen)
            self.history_.append({"loss": loss.item(), "dead_restarted": dead})
        return self

    @torch.no_grad()
    def _restart_dead(self, codes: torch.Tensor, residuals: list[torch.Tensor], gen: torch.Generator) -> int:
        restarted = 0
        for level, book in enumerate(self.net_.codebooks):
            used = torch.bincount(codes[:, level], minlength=book.shape[0]) > 0
            dead = torch.nonzero(~used).flatten()
            if dead.numel():
                pick = torch.randint(0, residuals[level].shape[0], (dead.numel(),), generator=gen)
                book[dead] = residuals[level][pick].detach()
                restarted += int(dead.numel())
        return restarted

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> np.ndarray:
        z = self.net_.enc(device.tensor(np.ascontiguousarray(x, np.float32)))
        return device.numpy(self.net_.quantize(z)[0]).astype(np.int64)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.net_.state_dict(), path / "rqvae.pt")
        (path / "rqvae.json").write_text(json.dumps(self._meta() | {"d_in": self.d_in_, "history": self.history_}))

    @classmethod
    def load(cls, path: Path) -> "RQVAE":
        path = Path(path)
        meta = json.loads((path / "rqvae.json").read_text())
        d_in, history = meta.pop("d_in"), meta.pop("history")
        q = cls(tuple(meta.pop("levels")), **meta)
        q.d_in_, q.history_ = d_in, history
        q.net_ = _Net(d_in, q.hidden, q.d_latent, q.levels)
        q.net_.load_state_dict(torch.load(path / "rqvae.pt", map_location="cpu", weights_only=True))
        return q
