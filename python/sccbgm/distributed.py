"""Multi-process training on torch DistributedDataParallel (DDP), launched with ``torchrun``.

``sccbgm.fit(..., distributed=None)`` joins a DDP job when the process was started by
``torchrun`` (``WORLD_SIZE`` > 1 in the environment) or when the caller already initialised a
``torch.distributed`` process group. Backend: NCCL when training on CUDA (one GPU per process,
``cuda:LOCAL_RANK``), gloo on CPU. See docs/distributed.md for the commands.

What each process does (W processes, rank r):

* the input transform (normalisation, PCA, concept directions) is fitted once, on rank 0, and
  sent to the other ranks, so every rank works in the same model space;
* every epoch all ranks draw the same permutation of the n training cells (same seed) and cut it
  into global minibatches of ``batch_size`` cells, exactly as single-process training does;
  rank r takes the r-th of W equal slices of each global batch (``batch_size / W`` cells, so
  ``batch_size`` must be a multiple of W). A final partial batch of m cells gives each rank
  ``m // W`` cells (at most W - 1 cells sit out that epoch). This is what
  ``torch.utils.data.DistributedSampler`` does, per minibatch instead of per epoch, so that the
  global batches are the single-process ones;
* DDP averages the gradients over ranks: for the per-cell means of the objective (reconstruction
  and KL) the average of W rank means over equal slices is the mean over the global
  batch. The cross-covariance penalty (Eq. 8) is not a per-cell mean but a statistic of the
  minibatch: it is computed on the GLOBAL batch by gathering (c_hat, u) from every rank with the
  differentiable ``torch.distributed.nn.functional.all_gather`` (B x (K + d_u) numbers per step),
  so the objective is the single-process one, not an average of per-rank penalties (which would
  add a bias of order 1/(per-rank batch) to ||Cov(c_hat, u)||^2);
* reparametrisation and dropout noise is drawn per rank (rank 0 keeps the seed's stream);
* all ranks end with identical weights; :func:`sccbgm.save` writes on rank 0 only.

The concept loss (Eq. 7) averages over the cells that have a label: its count is summed over
ranks (:func:`batch_mean`), so missing labels do not change the equivalence either.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

from sccbgm.errors import SCCBGMError

TIMEOUT_MINUTES = 60  # collective timeout: rank 0 fits the PCA while the others wait


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def is_active() -> bool:
    """True inside an initialised process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if is_active() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_active() else 1


def setup(distributed: bool | None, device: str) -> bool:
    """Join (initialising when needed) the process group ``fit`` should train in.

    ``distributed``: None = when launched by torchrun or a group is already initialised;
    True = required (an error when neither); False = never. Returns whether training is
    distributed. The backend is NCCL for CUDA devices, gloo otherwise.
    """
    dist = _dist()
    if distributed is False:
        return False
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            return True
        return False
    if not launched_by_torchrun():
        if distributed:
            raise SCCBGMError(
                "distributed=True but this process was not launched by torchrun (WORLD_SIZE is not "
                "set above 1) and no torch.distributed process group is initialised; run e.g. "
                "`torchrun --nproc_per_node=2 -m sccbgm fit ...` (docs/distributed.md)."
            )
        return False
    if not dist.is_available():
        raise SCCBGMError("this torch build has no torch.distributed; multi-process training is unavailable.")
    import torch

    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES)
    )
    return True


def device_for(device: str) -> str:
    """Under DDP, ``"auto"``/``"cuda"`` mean this process's GPU, ``cuda:LOCAL_RANK``."""
    import torch

    if is_active() and (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def run_on_rank0(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on rank 0, its result (or its SCCBGMError) sent to every rank."""
    if not is_active():
        return fn(*args, **kwargs)
    box: list[Any] = [None]
    if rank() == 0:
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except SCCBGMError as err:
            box[0] = ("error", str(err))
    _dist().broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise SCCBGMError(value)
    return value


def broadcast_seed(seed: int) -> int:
    """Rank 0's seed on every rank (a seed drawn at random differs per process)."""
    if not is_active():
        return seed
    box = [seed]
    _dist().broadcast_object_list(box, src=0)
    return int(box[0])


_GATHERING = [False]


@contextlib.contextmanager
def gathering() -> Iterator[None]:
    """Within this block (the DDP training loop), :func:`gather_batch` gathers across ranks."""
    before = _GATHERING[0]
    _GATHERING[0] = is_active()
    try:
        yield
    finally:
        _GATHERING[0] = before


def gather_batch(tensor: Any) -> Any:
    """(b, ...) on each rank -> (W * b, ...) in rank order, differentiable (the gradient of each
    slice returns to its rank). Identity outside the DDP training loop (:func:`gathering`)."""
    import torch

    if not _GATHERING[0] or not torch.is_grad_enabled():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def batch_mean(total: Any, count: Any) -> Any:
    """``total / count`` (0 when count is 0), a mean over the cells of the minibatch.

    In the DDP training loop (:func:`gathering`) ``count`` is summed over ranks and the result
    multiplied by W: DDP's average of the W rank gradients is then the gradient of the mean over
    the global batch even when the ranks count different cells (e.g. labelled ones); the
    average of the W values is the global mean. Every rank must call it (a collective).
    """
    import torch

    if _GATHERING[0] and torch.is_grad_enabled():
        count = count.detach().to(total.dtype).clone()
        _dist().all_reduce(count)
        return total * world_size() / count if bool(count > 0) else total * 0.0
    return total / count if bool(count > 0) else total * 0.0


def shutdown() -> None:
    """Leave the process group (the command line's end of a torchrun job)."""
    if is_active():
        dist = _dist()
        dist.barrier()
        dist.destroy_process_group()
