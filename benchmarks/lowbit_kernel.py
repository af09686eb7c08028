"""8-bit AdamW on the CPU: optimkit's compiled kernel against torch's fused float32 AdamW,
torchao's AdamW8bit and bitsandbytes' AdamW8bit, on GPT-2-small shapes (bench.py's
``transformer`` workload; ``--embedding`` adds the 50257x768 token embedding).

python benchmarks/lowbit_kernel.py                        # GPT-2-small shapes, 86M parameters
python benchmarks/lowbit_kernel.py --scale 0.5 --rounds 5 # quicker (21M parameters)
python benchmarks/lowbit_kernel.py --check                # only the numerics (30 steps, small model)

The timed optimizers step in turn, one step each per round (so a busy machine slows them
alike); each row is the median over the rounds after two warm-up steps (torchao compiles
then). Tensors under 4096 elements keep float32 moments in every 8-bit optimizer (theirs and
ours: optimkit's small tensors go through torch's fused AdamW kernel).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from optimkit.bench import _transformer
from optimkit.execution import kernels
from optimkit.execution.encodings import MIN_SIZE, encoding


class KernelAdamW8bit(torch.optim.Optimizer):
    """AdamW with 8-bit moments stepped by optimkit's compiled kernel (a benchmark harness,
    not the library's optimizer: that is ``AdamW(..., state_encoding="8bit")``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.k = kernels.load()
        if self.k is None:
            raise RuntimeError("the kernels did not build")
        self.enc = encoding("8bit")

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            big, small = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    if p.numel() >= MIN_SIZE:
                        st["m"] = self.enc.empty(p.numel(), True, p.device)
                        st["v"] = self.enc.empty(p.numel(), False, p.device)
                    else:
                        st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                        st["step_t"] = torch.zeros(())
                st["step"] += 1
                (big if "m" in st else small).append(p)
            if big:
                t = self.state[big[0]]["step"]
                ms, vs = [self.state[p]["m"] for p in big], [self.state[p]["v"] for p in big]
                self.k.adam_multi_(
                    self.enc, [p.view(-1) for p in big], [p.grad.view(-1) for p in big],
                    [m["codes"] for m in ms], [m["scale"] for m in ms], [v["codes"] for v in vs], [v["scale"] for v in vs],
                    lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decoupled=True,
                    bias_correction1=1 - b1**t, bias_correction2_sqrt=(1 - b2**t) ** 0.5,
                )  # fmt: skip
            if small:
                steps = [self.state[p]["step_t"] for p in small]
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(
                    small, [p.grad for p in small], [self.state[p]["exp_avg"] for p in small],
                    [self.state[p]["exp_avg_sq"] for p in small], [], steps, lr=lr, beta1=b1, beta2=b2,
                    weight_decay=wd, eps=eps, amsgrad=False, maximize=False,
                )  # fmt: skip


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
        p.grad = torch.randn(s, generator=g) * 1e-3
        ps.append(p)
    return ps


def _optimizers(shapes, which):
    makers = {
        "torch fused fp32 AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "optimkit 8-bit kernel": lambda ps: KernelAdamW8bit(ps, lr=1e-3),
    }
    try:
        from torchao.optim import AdamW8bit as AoAdamW8bit

        makers["torchao AdamW8bit"] = lambda ps: AoAdamW8bit(ps, lr=1e-3)
    except Exception as exc:  # noqa: BLE001
        print(f"torchao unavailable: {exc}")
    try:
        import bitsandbytes as bnb

        makers["bitsandbytes AdamW8bit"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3)
    except Exception as exc:  # noqa: BLE001
        print(f"bitsandbytes unavailable: {exc}")
    return {name: make(_params(shapes)) for name, make in makers.items() if name in which or not which}


def bench(shapes, rounds: int, which=(), cpu_time: bool = False) -> None:
    n = sum(torch.Size(s).numel() for s in shapes)
    clock = time.thread_time if cpu_time else time.perf_counter
    print(f"{len(shapes)} tensors, {n / 1e6:.1f}M parameters, {torch.get_num_threads()} threads"
          + (", CPU time of the calling thread" if cpu_time else ", wall time"))  # fmt: skip
    opts = _optimizers(shapes, which)
    times: dict[str, list[float]] = {name: [] for name in opts}
    for name, opt in opts.items():  # two warm-up steps (torchao compiles)
        t0 = time.perf_counter()
        opt.step()
        opt.step()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s")
    for _ in range(rounds):
        for name, opt in opts.items():
            t0 = clock()
            opt.step()
            times[name].append(clock() - t0)
    base = statistics.median(times["torch fused fp32 AdamW"]) if "torch fused fp32 AdamW" in times else None
    print(f"{'optimizer':<26}{'ms/step':>10}{'min':>9}{'x fused fp32':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{med / base:.2f}" if base else "-"
        print(f"{name:<26}{med * 1e3:>10.1f}{min(ts) * 1e3:>9.1f}{ratio:>14}")


def _generic_step(enc, p, g, st, t, lr, b1, b2, eps, wd):
    """The torch-ops path: decode, optimkit's AdamW rule, encode."""
    from optimkit.optimizers.adam import adam_

    n = p.numel()
    state = {"step": torch.tensor(float(t - 1)), "exp_avg": enc.decode(st["m"], True, 0, n),
             "exp_avg_sq": enc.decode(st["v"], False, 0, n)}  # fmt: skip
    adam_(p.view(-1), g.view(-1), state, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, amsgrad=False,
          maximize=False, decoupled_weight_decay=True)  # fmt: skip
    enc.encode_(state["exp_avg"], True, st["m"])
    enc.encode_(state["exp_avg_sq"], False, st["v"])


@torch.no_grad()
def check(steps: int = 30) -> None:
    """After ``steps`` steps on a small model: the kernel against the torch-ops path, and
    torchao's AdamW8bit and the kernel against float32 AdamW."""
    shapes = [(256, 192), (192, 576), (192, 768), (768, 192), (64,)]
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 1e-2
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [[torch.randn(s, generator=gen) * 1e-3 * (1 + t % 3) for s in shapes] for t in range(steps)]
    enc = encoding("8bit")

    def run(make):
        ps = [torch.nn.Parameter(x.clone()) for x in start]
        opt = make(ps)
        for t in range(steps):
            for p, g in zip(ps, grads[t]):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in ps]

    fp32 = run(lambda ps: torch.optim.AdamW(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))
    ours = run(lambda ps: KernelAdamW8bit(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))
    generic = [x.clone() for x in start]
    sts = [{"m": enc.empty(x.numel(), True, x.device), "v": enc.empty(x.numel(), False, x.device)} for x in start]
    for t in range(steps):
        for p, g, st in zip(generic, grads[t], sts):
            if p.numel() >= MIN_SIZE:
                _generic_step(enc, p, g, st, t + 1, lr, b1, b2, eps, wd)
    # tensors under MIN_SIZE stay float32: take them from the fp32 run for the comparison
    generic = [g if g.numel() >= MIN_SIZE else f for g, f in zip(generic, fp32)]
    rows = {"optimkit kernel": ours, "torch-ops generic path": generic}
    try:
        from torchao.optim import AdamW8bit as AoAdamW8bit

        rows["torchao AdamW8bit"] = run(lambda ps: AoAdamW8bit(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))
    except Exception as exc:  # noqa: BLE001
        print(f"torchao unavailable: {exc}")

    def rel(a, b):
        num = sum(float((x - y).double().norm() ** 2) for x, y in zip(a, b)) ** 0.5
        den = sum(float((x - s).double().norm() ** 2) for x, s in zip(b, start)) ** 0.5
        return num / den  # relative to how far the parameters moved

    print(f"after {steps} steps: ||difference|| / ||update of the reference||")
    print(f"  kernel vs torch-ops generic path: {rel(ours, generic):.2e}   "
          f"max |diff| {max(float((x - y).abs().max()) for x, y in zip(ours, generic)):.2e}")  # fmt: skip
    for name, ps in rows.items():
        print(f"  {name:<24} vs fp32 AdamW: {rel(ps, fp32):.3e}")
    if "torchao AdamW8bit" in rows:
        print(f"  kernel vs torchao AdamW8bit: {rel(ours, rows['torchao AdamW8bit']):.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="bench.py's transformer scale (1.0: GPT-2-small)")
    parser.add_argument("--embedding", action="store_true", help="add the 50257 x d token embedding")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=(), help="optimizer names to time (default: all)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the calling thread's CPU time (with --threads 1: robust to a busy machine)")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="only the numerical check")
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.check:
        shapes = _transformer(args.scale)
        if args.embedding:
            shapes = [(50257, int(768 * args.scale))] + shapes
        if args.cpu_time and torch.get_num_threads() != 1:
            parser.error("--cpu-time needs --threads 1 (other threads' time is not counted)")
        bench(shapes, args.rounds, tuple(args.only), args.cpu_time)
    if not args.no_check:
        check()


if __name__ == "__main__":
    main()
