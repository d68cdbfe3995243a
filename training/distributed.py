"""Training on several processes launched by torchrun: DDP or FSDP (fully_shard), NCCL on GPUs, gloo on CPUs.

    torchrun --standalone --nproc_per_node=8 train.py config/NAME.py [--fsdp=True]

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain `python train.py` has none and runs as the
only rank. Every rank builds the same model and sees its own share of each global batch; gradients
are averaged across ranks on the last micro-step of gradient accumulation only. Without a
gradient_accumulation_steps of its own a run takes one micro-batch per process per step; a given
one is the global count (see accumulation_steps).
"""

from contextlib import contextmanager
from dataclasses import dataclass
import os

import torch
import torch.distributed as dist

from model.layers import Block
from weights.common import ConfigError, UserError


class RankStopped(UserError, RuntimeError):
    """Another rank failed in a block that only some ranks can fail in (rank 0's writes); see stop_together."""


@dataclass
class Ranks:
    """Where this process stands among the training processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # this rank's device; collectives use tensors on it

    @property
    def master(self) -> bool:
        """Rank 0 prints, evaluates into the logs and saves checkpoints."""
        return self.rank == 0

    @property
    def launched(self) -> bool:
        """True under torchrun (a process group exists)."""
        return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of training processes torchrun started (1 without torchrun); no process group needed."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation_steps(given: int | None, world_size: int, resumed: bool = False) -> int:
    """Micro-batches per optimizer step over all processes: `given` (a global count), or one per process.

    Unset (None), every process takes one micro-batch per step, so the global batch grows with the
    number of processes as in plain DDP. A given count is global: the same global batch on 1 or N
    processes (exactly the same run), so it must split evenly. A resumed run passes its stored count.
    """
    if given is None:
        return world_size
    if given % world_size == 0:
        return given
    if resumed:
        raise ConfigError(f"this run was trained with gradient_accumulation_steps={given} (micro-batches per step over "
                          f"all processes), which {world_size} processes cannot share; resume it on a number of "
                          f"processes that divides {given}, or pass --gradient_accumulation_steps=N (a multiple of "
                          f"{world_size}) to change its global batch.")
    raise ConfigError(f"gradient_accumulation_steps ({given}) counts micro-batches over all {world_size} processes; "
                      f"make it a multiple of {world_size}.")


def describe_batch(batch_size: int, block_size: int, accumulation: int, world_size: int) -> str:
    """One line for the start of a run: the global batch in sequences and tokens per optimizer step."""
    per_rank = accumulation // world_size
    return (f"global batch: {batch_size * accumulation:,} sequences, {batch_size * accumulation * block_size:,} "
            f"tokens per step ({world_size} process(es) x {per_rank} micro-batch(es) of {batch_size} x {block_size})")


def setup(device: str) -> Ranks:
    """Join the process group torchrun set up (NCCL for CUDA, gloo otherwise); return this rank's place."""
    if "RANK" not in os.environ:
        return Ranks(device=device)
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                              "use --nproc_per_node of at most the number of GPUs.")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    return Ranks(rank, local_rank, world_size, device)


@contextmanager
def stop_together(ranks: Ranks):
    """Run a block that may fail on some ranks only (rank 0 alone writes out_dir, wandb and checkpoints).

    A UserError in it stops every rank, collectively: the failing rank raises its own, every other rank
    a RankStopped naming it, rather than going on to the next collective and dying there on gloo's or
    NCCL's "connection closed" (or waiting for it until the timeout).
    """
    error = None
    try:
        yield
    except UserError as e:
        error = e
    if ranks.launched:
        messages = [None] * ranks.world_size
        dist.all_gather_object(messages, None if error is None else str(error))
        failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
        if failed and error is None:
            error = RankStopped(f"rank {failed[0][0]} stopped: {failed[0][1]}")
        if error is not None:
            error.shared = True  # every rank stops here: see settle
    if error is not None:
        raise error


def settle(error: BaseException) -> None:
    """After a rank has printed why it stops: when every rank stops on the same error (stop_together),
    wait for the others to print theirs, so that no rank exits first and torchrun's SIGTERM cuts one off."""
    if getattr(error, "shared", False) and dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group (if any), so that every rank exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, fsdp: bool, compile: bool, dtype: str) -> torch.nn.Module:
    """Compile and wrap the model for training; return the module to call in the training loop.

    Without FSDP the model is compiled in place (its state_dict keys do not change) and, on several
    ranks, wrapped in DDP; evaluate with `model` itself (no gradient hooks). With FSDP every Block is
    compiled (as torchtitan does) and sharded on its own, then the rest of the model; the sharded
    `model` is the one to call for training and evaluation alike.
    """
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


        if not ranks.launched:
            raise ConfigError("--fsdp=True shards the model across processes; launch with "
                              "torchrun --nproc_per_node=N train.py ..., or pass --fsdp=False for one process.")
        if dtype == "float16":  # GradScaler would decide to skip a step per shard, not for the whole model
            raise ConfigError("--fsdp=True trains in bfloat16 or float32; pass --dtype=bfloat16 (or float32).")
        mesh = init_device_mesh(ranks.device.split(":")[0], (ranks.world_size,))
        # bf16 all-gathers halve the traffic; gradients are still reduced in float32
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if dtype == "bfloat16" and ranks.device.startswith("cuda") else MixedPrecisionPolicy()
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Block):
                    if compile:
                        child = torch.compile(child)
                        parent.register_module(name, child)
                    fully_shard(child, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    if compile:
        model.compile()
    if ranks.launched:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[ranks.local_rank] if ranks.device.startswith("cuda") else None)
    return model


@contextmanager
def grad_sync(train_model: torch.nn.Module, sync: bool):
    """Run forward and backward of one micro-step; gradients are all-reduced only when `sync`."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(train_model, FSDPModule):
        train_model.set_requires_gradient_sync(sync)
        yield
    elif isinstance(train_model, DDP) and not sync:
        with train_model.no_sync():
            yield
    else:
        yield


def all_reduce_sums(values: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """Sum each named value over the ranks (every rank must pass the same names)."""
    if not ranks.launched:
        return values
    names = sorted(values)
    totals = torch.tensor([values[n] for n in names], dtype=torch.float64, device=ranks.device)
    dist.all_reduce(totals)
    return dict(zip(names, totals.tolist()))


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a scalar tensor over the ranks (NaN on every rank when any rank has NaN)."""
    if not ranks.launched:
        return value
    value = value.detach().float().clone()
    dist.all_reduce(value)
    return value / ranks.world_size


def scalar(value) -> float:
    """A Python float from a tensor or DTensor (clip_grad_norm_ of FSDP parameters returns a DTensor)."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def rng_states(ranks: Ranks) -> list[dict]:
    """The random state of every rank (rank order), for an exact resume; collective."""
    state = {"torch": torch.get_rng_state()}
    if ranks.device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(ranks.device)
    if not ranks.launched:
        return [state]
    states = [None] * ranks.world_size
    dist.all_gather_object(states, state)
    return states


def restore_rng(states: list[dict], ranks: Ranks) -> bool:
    """Put back this rank's random state; False when the checkpoint came from another number of ranks."""
    if not isinstance(states, list) or len(states) != ranks.world_size:
        return False
    torch.set_rng_state(states[ranks.rank]["torch"])
    if ranks.device.startswith("cuda") and "cuda" in states[ranks.rank]:
        torch.cuda.set_rng_state(states[ranks.rank]["cuda"], ranks.device)
    return True


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on CPU, keyed by parameter name; collective.

    Rank 0 gets them (FSDP gathers the shards), the other ranks get empty dicts. Optimizer state keyed
    by parameter name loads into any mode: a DDP run can resume an FSDP checkpoint and vice versa.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizers_of(optimizer),
                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optim_state: dict) -> None:
    """Load full state dicts written by full_state into a plain, DDP or FSDP model (each rank shards its part)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    # a parameter that never had a gradient (BERT's pooler under MLM) has no optimizer state to load
    set_optimizer_state_dict(model, optimizers_of(optimizer), optim_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


def optimizers_of(optimizer):
    """The torch optimizers behind `optimizer`: itself, or the parts of a Muon + AdamW pair (training/muon.py)."""
    return tuple(optimizer.optimizers.values()) if hasattr(optimizer, "optimizers") else optimizer
