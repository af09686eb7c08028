"""Data-parallel training with any optimkit optimizer: DistributedDataParallel on digits.

    torchrun --nproc-per-node 2 examples/ddp_train.py --optimizer adamw --steps 300

Every process holds a full replica of the model and trains on its share of each batch
(``DistributedSampler``). DDP averages the gradients across processes during ``backward``,
so every replica takes the same optimizer step -- the step one process would take on the
whole batch, up to the summation order of the all-reduce. The optimizer is optimkit's,
used exactly as in a single process: nothing in it knows about the other processes.

* backend: nccl with one GPU per process when CUDA is available, gloo on CPU;
* data: scikit-learn's bundled 8x8 digits (nothing is downloaded), 1500 images to train on,
  the other 297 to test;
* ``--optimizer``: any name of ``optimkit.registry`` (``optimkit lab list``). Muon trains a
  bias-free MLP (it takes matrices only), SparseAdam a sparse bag-of-pixels embedding (DDP
  all-reduces sparse gradients too), LBFGS with a closure (see ``closure`` below);
* a linear warmup then cosine decay of the learning rate (torch's schedulers);
* rank 0 logs the loss averaged over all processes, and the test accuracy at the end.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import optimkit
from optimkit.registry import REGISTRY

#: Extra constructor arguments for a sensible run (LBFGS: a few iterations per batch, with a
#: line search, because every batch is a different objective).
EXTRA = {"lbfgs": {"max_iter": 4, "line_search_fn": "strong_wolfe"}}


class MLP(torch.nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 128, bias=bias), torch.nn.ReLU(), torch.nn.Linear(128, 10, bias=bias)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.float() / 16)


class PixelBag(torch.nn.Module):
    """A linear model on one-hot (pixel, value) features: pixel i with value v is feature
    17 * i + v. Each image touches 64 of the 1088 rows: sparse gradients, for SparseAdam."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(64 * 17, 10, mode="sum", sparse=True)
        torch.nn.init.normal_(self.bag.weight, std=0.01)  # 64 rows are summed: start small

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.bag(torch.arange(64, device=pixels.device) * 17 + pixels.long())


def digits() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.uint8), torch.tensor(y)
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=list(REGISTRY), default="adamw")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the registry's lab_lr)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--warmup", type=int, default=10, help="warmup steps")
    parser.add_argument("--log-every", type=int, default=25)
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
    try:
        train(args, device)
    finally:
        # Free the model before the process group. DDP's model sits in reference cycles, so it
        # outlives train() until a garbage collection; if that is the one at interpreter exit,
        # its reducer drops the last reference to the gloo group there, and torch 2.13 can
        # then abort ("terminate called without an active exception") or deadlock: gloo's
        # threads, finishing the last all-reduce, need the GIL at that moment.
        gc.collect()
        dist.destroy_process_group()


def train(args: argparse.Namespace, device: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    spec = REGISTRY[args.optimizer]
    cuda = device.type == "cuda"

    torch.manual_seed(args.seed)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    model = (PixelBag() if spec.sparse == "only" else MLP(bias=not spec.matrix_only)).to(device)
    model = DDP(model, device_ids=[device.index] if cuda else None)
    lr = args.lr if args.lr is not None else spec.lab_lr
    optimizer = optimkit.create_optimizer(
        args.optimizer, model.parameters(), lr=lr, **EXTRA.get(args.optimizer, {})
    )
    warmup = min(args.warmup, args.steps - 1)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=max(warmup, 1)),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps - warmup),
        ],
        milestones=[warmup],
    )

    train_set, test_set = digits()
    sampler = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    loader = DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler, drop_last=True)
    if rank == 0:
        print(
            f"{world} process{'es' * (world > 1)} ({dist.get_backend()}), {args.optimizer} lr={lr:g}, "
            f"{sum(p.numel() for p in model.parameters())} parameters, {args.steps} steps",
            flush=True,
        )

    step, epoch, window = 0, 0, []
    while step < args.steps:
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process
        for pixels, labels in loader:
            pixels, labels = pixels.to(device), labels.to(device)

            def closure(pixels: torch.Tensor = pixels, labels: torch.Tensor = labels) -> torch.Tensor:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(pixels), labels)
                loss.backward()  # DDP averages the gradients here
                if not spec.closure:
                    return loss.detach()
                # LBFGS branches on the loss (line search, stopping test): every process must
                # see the same number -- the whole batch's loss -- or they would take different
                # paths and a different number of backward passes (and DDP all-reduces).
                return torch.tensor(mean_over_ranks([loss.item()], device)[0])

            if spec.closure:
                loss = optimizer.step(closure)
            else:
                loss = closure()
                optimizer.step()
            scheduler.step()
            step += 1
            window.append(float(loss))
            if step % args.log_every == 0 or step == args.steps:
                avg = mean_over_ranks([sum(window) / len(window)], device)[0]
                window = []
                if rank == 0:
                    print(f"step {step:5d}  loss {avg:.4f}  lr {scheduler.get_last_lr()[0]:.3g}", flush=True)
            if step == args.steps:
                break
        epoch += 1

    if rank == 0:  # every replica holds the same model: one of them evaluates
        model.eval()
        with torch.no_grad():
            pixels, labels = (t.to(device) for t in test_set.tensors)
            accuracy = (model.module(pixels).argmax(1) == labels).float().mean().item()
        print(f"test accuracy {accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main()
