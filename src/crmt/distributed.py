"""Collectives that every rank calls: gathering rows of different counts, max-reduction."""

from __future__ import annotations

from collections.abc import Callable

import torch

AllGather = Callable[[torch.Tensor], torch.Tensor]
"""``LightningModule.all_gather``-like: a tensor -> (world_size, *shape) on every rank."""


def gather_rows(all_gather: AllGather | None, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (N_r, ...) rows in rank order; N_r may differ between ranks.

    ``all_gather=None`` means a single process. Every rank must call this with the same dtype
    and trailing shape.
    """
    if all_gather is None:
        return rows
    counts = all_gather(torch.tensor(rows.shape[0], device=rows.device)).flatten()
    if counts.numel() == 1:
        return rows
    padded = rows.new_zeros((int(counts.max()), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = all_gather(padded)
    return torch.cat([gathered[rank, : int(count)] for rank, count in enumerate(counts)])
