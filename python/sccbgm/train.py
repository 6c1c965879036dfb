"""One training loop for every module.

A module is an ``nn.Module`` whose ``forward(batch)`` returns a dict of named loss terms with the
weighted total under ``"loss"``. The loop is deliberately plain (Adam + exponential decay per
epoch, as in paper D.4): the module can be wrapped in ``torch.nn.parallel.DistributedDataParallel``
unchanged, since gradients flow through ``forward``; inside a torch.distributed process group
:func:`train` does so (:mod:`sccbgm.distributed`). Its overhead against a bare loop is measured
by ``python -m sccbgm.bench overhead`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sccbgm.errors import SCCBGMError


@dataclass
class TrainConfig:
    """Optimiser and schedule. ``lr_decay`` is the ExponentialLR gamma applied once per epoch."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 0.98
    weight_decay: float = 0.0
    grad_clip: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.epochs < 1:
            raise SCCBGMError(f"epochs must be >= 1, not {self.epochs}.")
        if self.batch_size < 2:
            raise SCCBGMError(f"batch_size must be >= 2, not {self.batch_size}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SCCBGMError(f"lr must be a positive number, not {self.lr}.")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SCCBGMError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), not {device!r}.") from None
    if dev.type not in ("cpu", "cuda"):
        raise SCCBGMError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), not {device!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SCCBGMError("device='cuda' requested but CUDA is not available; use device='cpu'.")
    return dev


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[int]:
    """Run a block with ``n`` intra-op torch threads (restored afterwards).

    None: the ``SCCBGM_NUM_THREADS`` environment variable if set, else torch's default. Small
    networks on a shared CPU run far faster on 1 thread (measured 14 vs 249 ms per step on a
    busy 2-core machine), hence the override.
    """
    if n is None and os.environ.get("SCCBGM_NUM_THREADS"):
        try:
            n = int(os.environ["SCCBGM_NUM_THREADS"])
        except ValueError:
            raise SCCBGMError(
                f"SCCBGM_NUM_THREADS must be a whole number, not {os.environ['SCCBGM_NUM_THREADS']!r}."
            ) from None
    before = torch.get_num_threads()
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise SCCBGMError(f"num_threads must be >= 1, not {n}.")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block that seeds torch, then put the caller's torch RNG state back.

    ``fit`` seeds torch's global generator (and CUDA's, when CUDA is in use) for reproducible
    weights; the caller's random stream must not depend on whether it called ``fit``.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


def seed_everything(seed: int | None) -> int:
    """Seed torch (CPU and CUDA); returns the seed used (drawn at random when None; under DDP
    rank 0's draw on every rank)."""
    from sccbgm.distributed import broadcast_seed

    if seed is None:
        seed = broadcast_seed(int(np.random.SeedSequence().generate_state(1)[0] % (2**31)))
    torch.manual_seed(seed)
    return int(seed)


def train(
    module: nn.Module,
    n_cells: int,
    make_batch: Callable[[np.ndarray], dict[str, torch.Tensor]],
    config: TrainConfig,
    *,
    seed: int,
    progress: bool | None = None,
    description: str = "training",
) -> dict[str, list[float]]:
    """Train ``module`` in place; returns the per-epoch history of every loss term and the lr.

    ``make_batch(rows)`` builds the minibatch dict (tensors already on the module's device) for an
    array of row indices; minibatches are drawn by shuffling the rows each epoch (a final batch of
    a single cell is dropped, since Eq. 8 needs B >= 2).

    Inside a torch.distributed process group of W > 1 processes (:mod:`sccbgm.distributed`) the
    module is wrapped in ``DistributedDataParallel``; ``config.batch_size`` stays the global
    batch (a multiple of W) and each rank trains on its 1/W slice of every global batch; the
    history holds the loss terms averaged over ranks, identical on every rank.
    """
    from tqdm.auto import tqdm

    from sccbgm import distributed

    config.validate()
    if n_cells < 2:
        raise SCCBGMError(f"need at least 2 training cells, got {n_cells}.")
    world, rank = distributed.world_size(), distributed.rank()
    net: nn.Module = module
    if world > 1:
        if config.batch_size % world:
            raise SCCBGMError(
                f"batch_size ({config.batch_size}) is the global minibatch and must be a multiple of "
                f"the number of processes ({world}) under distributed training."
            )
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        if rank > 0:  # own dropout / reparametrisation noise per rank; rank 0 keeps the seed's stream
            torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
        net = DistributedDataParallel(
            module, device_ids=[device] if device.type == "cuda" else None, static_graph=True
        )
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=config.lr_decay)
    history: dict[str, list[float]] = {}
    show = None if progress is None else bool(progress)
    bar = tqdm(range(config.epochs), desc=description, disable=(rank > 0) or (None if show is None else not show))
    module.train()
    with distributed.gathering():
        for _ in bar:
            sums: dict[str, float] = {}
            n_batches = 0
            for rows in _minibatches(n_cells, config.batch_size, rng, rank=rank, world=world):
                terms = net(make_batch(rows))
                values = torch.stack([v.detach().float() for v in terms.values()])
                if world > 1:
                    torch.distributed.all_reduce(values)
                    values = values / world
                if not bool(torch.isfinite(values).all()):
                    raise SCCBGMError(
                        "training diverged (non-finite loss); lower `lr` or check the input for extreme values."
                    )
                optimiser.zero_grad(set_to_none=True)
                terms["loss"].backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
                optimiser.step()
                for k, v in zip(terms, values.tolist(), strict=True):
                    sums[k] = sums.get(k, 0.0) + v
                n_batches += 1
            for k, v in sums.items():
                history.setdefault(k, []).append(v / n_batches)
            history.setdefault("lr", []).append(scheduler.get_last_lr()[0])
            scheduler.step()
            bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
    module.eval()
    return history


def _minibatches(
    n: int, batch_size: int, rng: np.random.Generator, *, rank: int = 0, world: int = 1
) -> Iterator[np.ndarray]:
    """Rows of this rank's slice of each global minibatch of a fresh permutation of n rows.

    Global batches of ``batch_size`` (the last one shorter); rank r of W gets the r-th of W equal
    slices (``len // W`` rows); a global batch of fewer than 2 usable rows is skipped.
    """
    order = rng.permutation(n)
    for s in range(0, n, batch_size):
        rows = order[s : s + batch_size]
        per = rows.size // world
        if per * world >= 2:
            yield rows[rank * per : (rank + 1) * per]
