"""Sharded training with an optimkit optimizer: FSDP2 (fully_shard) on digits, with
distributed checkpoints that resume on any number of processes.

    torchrun --nproc-per-node 4 examples/fsdp_train.py --optimizer adam --ckpt-dir ckpt --stop-after 100
    torchrun --nproc-per-node 2 examples/fsdp_train.py --optimizer adam --ckpt-dir ckpt --resume

``fully_shard`` turns every parameter into a DTensor: each process stores 1/N of each
parameter, of its gradient and -- because optimizer state is created like the parameter --
of its optimizer state. Before a layer runs, FSDP gathers its full parameters; after
``backward`` it reduce-scatters the gradients, so each process holds the averaged gradient
of its own shard. The optimizer then updates only that shard:

* elementwise rules (SGD, Adam, AdamW, RMSprop, ...) run on the local shards, with no
  communication at all;
* Muon and Adafactor need whole matrices (orthogonalization; row and column statistics):
  optimkit gathers each parameter, applies the rule, and keeps this process's shard;
* LBFGS (whole flattened model) and SparseAdam (sparse gradients, which FSDP cannot
  reduce) are not offered here: train them with examples/ddp_train.py.

Checkpoints: ``optimkit.Checkpointer(dir, distributed=True)``, built on
``torch.distributed.checkpoint``: every process writes its own shards, in parallel, to
``--ckpt-dir/step-N.dcp``; the optimizer state is named by parameter (``"net.0.weight"``), so
a checkpoint written by 4 processes loads into 2 (or 1), each taking the slices it now owns.
A checkpoint appears under its final name only once complete (a crash mid-save leaves the
previous ones), the newest 3 are kept, and ``--resume`` continues from the newest.
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import optimkit
from optimkit.registry import REGISTRY

#: Optimizers that can step FSDP2's sharded parameters (see the module docstring).
FSDP_OPTIMIZERS = [name for name, spec in REGISTRY.items() if spec.sparse != "only" and not spec.closure]


class MLP(torch.nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 256, bias=bias),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 256, bias=bias),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 10, bias=bias),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.float() / 16)


def digits() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.uint8), torch.tensor(y)
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=FSDP_OPTIMIZERS, default="adamw")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the registry's lab_lr)")
    parser.add_argument("--steps", type=int, default=300, help="total optimizer steps (also when resuming)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--ckpt-dir", type=Path, help="write checkpoints here (step-N.dcp/)")
    parser.add_argument(
        "--save-every", type=int, default=100, help="checkpoint every N steps (and at the end)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --ckpt-dir"
    )
    parser.add_argument(
        "--stop-after", type=int, help="leave (with a checkpoint) after N steps of this run, as if preempted"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.batch_size % dist.get_world_size():
        parser.error(f"--batch-size {args.batch_size} does not split over {dist.get_world_size()} processes")
    if args.resume and (
        args.ckpt_dir is None or not optimkit.Checkpointer(args.ckpt_dir, distributed=True).checkpoints()
    ):
        parser.error(f"--resume: no complete checkpoint in {args.ckpt_dir}")
    try:
        train(args, device)
    finally:
        gc.collect()  # free the model before the process group (see ddp_train.py)
        dist.destroy_process_group()


def train(args: argparse.Namespace, device: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    log = print if rank == 0 else (lambda *a, **k: None)

    torch.manual_seed(args.seed)  # the same full model on every process before sharding
    model = MLP(bias=not REGISTRY[args.optimizer].matrix_only).to(device)
    mesh = init_device_mesh(device.type, (world,))
    for layer in model.net:  # each Linear is gathered just for its own forward/backward
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

    lr = args.lr if args.lr is not None else REGISTRY[args.optimizer].lab_lr
    optimizer = optimkit.create_optimizer(args.optimizer, model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)

    # Every process calls save/restore (they are collective); model and optimizer state go
    # through torch.distributed.checkpoint, sharded; scheduler, step and RNGs alongside.
    ckpt = optimkit.Checkpointer(args.ckpt_dir, keep=3, distributed=True) if args.ckpt_dir else None
    step = 0
    if args.resume:
        step = ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler)
        log(f"resumed from step {step} ({ckpt.restored_path})", flush=True)

    def save() -> None:
        path = ckpt.save(step, model=model, optimizer=optimizer, scheduler=scheduler)
        log(f"saved {path}", flush=True)

    train_set, test_set = digits()
    sampler = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    loader = DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler, drop_last=True)
    per_epoch = len(loader)
    log(
        f"{world} process{'es' * (world > 1)} ({dist.get_backend()}), {args.optimizer} lr={lr:g}, "
        f"{sum(p.numel() for p in model.parameters())} parameters, "
        f"{sum(p.to_local().numel() for p in model.parameters())} on this process",
        flush=True,
    )

    window = []
    end = args.steps if args.stop_after is None else min(args.steps, step + args.stop_after)
    while step < end:
        epoch, skip = divmod(step, per_epoch)  # a resumed run picks up mid-epoch
        sampler.set_epoch(epoch)
        for i, (pixels, labels) in enumerate(loader):
            if i < skip:
                continue
            optimizer.zero_grad()
            loss = F.cross_entropy(model(pixels.to(device)), labels.to(device))
            loss.backward()  # FSDP reduce-scatters: each process gets its shard of the mean gradient
            optimizer.step()
            scheduler.step()
            step += 1
            window.append(loss.item())
            if step % args.log_every == 0 or step == end:
                avg = torch.tensor(sum(window) / len(window), dtype=torch.float64, device=device)
                dist.all_reduce(avg)
                window = []
                log(
                    f"step {step:5d}  loss {avg.item() / world:.4f}  lr {scheduler.get_last_lr()[0]:.3g}",
                    flush=True,
                )
            if args.ckpt_dir and (step % args.save_every == 0 or step == end):
                save()
            if step == end:
                break

    model.eval()
    with torch.no_grad():  # every process runs the forward (FSDP gathers the layers for it)
        pixels, labels = (t.to(device) for t in test_set.tensors)
        accuracy = (model(pixels).argmax(1) == labels).float().mean().item()
    log(f"test accuracy {accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main()
