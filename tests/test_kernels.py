"""The compiled low-bit kernels (optimkit.execution.kernels) against the torch-ops path of
optimkit.execution.encodings: the codec exactly, the fused Adam(W) step within float32 noise."""

from __future__ import annotations

import math
import os

import pytest
import torch

from optimkit.execution import kernels
from optimkit.execution.encodings import encoding

K = None if os.environ.get("OPTIMKIT_NO_KERNELS", "") not in ("", "0") else kernels.load()
pytestmark = pytest.mark.skipif(K is None, reason="no C compiler (or OPTIMKIT_NO_KERNELS=1): the kernels did not build")
CPU = torch.device("cpu")


def _data(n: int, signed: bool, seed: int, block: int) -> torch.Tensor:
    """Values over 20 decades, a zero block, a -0, exact map values and midpoint-ish values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-12, 8, n)[torch.randperm(n, generator=g)]
    if n > 3 * block:
        x[block : 2 * block] = 0
        x[2 * block + 1] = -0.0
        x[2 * block + 2 : 2 * block + 6] = torch.tensor([1.0, -1.0, 0.5, -0.5]) * x[2 * block : 3 * block].abs().max()
    return x if signed else x.abs()


def _codec_cases():
    for name in ("8bit", "4bit"):
        for signed in (True, False):
            for n in (1, 7, 128, 255, 256, 257, 1000, 4096 + 3, 100_001):
                yield name, signed, n


@pytest.mark.parametrize("name,signed,n", list(_codec_cases()))
def test_codec_exact(name, signed, n):
    enc = encoding(name)
    x = _data(n, signed, n, enc.block_size)
    ref, got = enc.empty(n, signed, CPU), enc.empty(n, signed, CPU)
    enc.encode_(x, signed, ref)
    K.encode(enc, x, signed, got["codes"], got["scale"])
    assert torch.equal(got["scale"], ref["scale"])
    assert torch.equal(got["codes"], ref["codes"])
    assert torch.equal(K.decode(enc, ref["codes"], ref["scale"], signed, 0, n), enc.decode(ref, signed, 0, n))


@pytest.mark.parametrize("name", ["8bit", "4bit"])
def test_codec_offsets(name):
    """Encoding/decoding a chunk at a block offset touches only its blocks."""
    enc = encoding(name)
    n, b = 10 * enc.block_size + 5, enc.block_size
    x = _data(n, True, 1, b)
    ref, got = enc.empty(n, True, CPU), enc.empty(n, True, CPU)
    for lo, hi in ((0, 3 * b), (3 * b, 7 * b + 1), (7 * b + 1 - 1, n)):
        lo -= lo % b
        enc.encode_(x[lo:hi], True, ref, lo)
        K.encode(enc, x[lo:hi].contiguous(), True, got["codes"], got["scale"], lo)
    assert torch.equal(got["codes"], ref["codes"]) and torch.equal(got["scale"], ref["scale"])
    for lo, hi in ((0, n), (b, 2 * b), (2 * b, n), (4 * b, 4 * b + 3)):
        assert torch.equal(K.decode(enc, got["codes"], got["scale"], True, lo, hi), enc.decode(ref, True, lo, hi))


@pytest.mark.parametrize("name", ["8bit", "4bit"])
@pytest.mark.parametrize("signed", [True, False])
def test_codec_every_bucket(name, signed):
    """y at every bucket edge and every midpoint (and its float neighbours) in one block of
    absmax 1: the bucket table gives bucketize's code everywhere."""
    enc = encoding(name)
    q = torch.tensor(enc._map(signed))
    mids = ((q[1:].double() + q[:-1].double()) / 2).float()
    k = torch.arange(0x3F81, dtype=torch.int32) << 16
    edges = torch.cat([k, k | 0xFFFF, k + 1]).view(torch.float32)
    near = torch.cat([mids, torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1)])
    y = torch.cat([edges, near, torch.tensor([1.0, 0.0, -0.0])])
    y = torch.cat([y, -y]) if signed else y.abs()
    y = y[(y.abs() <= 1)]
    n = y.numel() // enc.block_size * enc.block_size
    blocks = y[:n].view(-1, enc.block_size).clone()
    blocks[:, 0] = 1.0  # absmax 1: x / scale == x exactly
    x = blocks.view(-1)
    ref, got = enc.empty(n, signed, CPU), enc.empty(n, signed, CPU)
    enc.encode_(x, signed, ref)
    K.encode(enc, x, signed, got["codes"], got["scale"])
    assert torch.equal(got["codes"], ref["codes"])


@pytest.mark.parametrize("name", ["8bit", "4bit"])
def test_codec_nonfinite(name):
    """NaN: the block's scale is NaN and its codes the last one (bucketize's NaN); inf: the
    scale is inf, the inf element gets the last code, the rest the code of 0 -- as torch ops."""
    enc = encoding(name)
    b = enc.block_size
    x = torch.randn(4 * b)
    x[3] = math.nan
    x[b + 5] = math.inf
    x[2 * b + 7] = -math.inf
    x[3 * b + 1] = -math.nan
    ref, got = enc.empty(4 * b, True, CPU), enc.empty(4 * b, True, CPU)
    enc.encode_(x, True, ref)
    K.encode(enc, x, True, got["codes"], got["scale"])
    assert torch.equal(got["codes"], ref["codes"])
    assert torch.equal(got["scale"].float().isnan(), ref["scale"].float().isnan())
    same = ~ref["scale"].float().isnan()
    assert torch.equal(got["scale"][same], ref["scale"][same])


def test_misuse():
    enc = encoding("8bit")
    st = enc.empty(1000, True, CPU)
    with pytest.raises(ValueError):
        K.encode(enc, torch.randn(1000, dtype=torch.float64), True, st["codes"], st["scale"])
    with pytest.raises(ValueError):
        K.encode(enc, torch.randn(2000), True, st["codes"], st["scale"])
    with pytest.raises(ValueError):
        K.decode(enc, st["codes"], st["scale"], True, 3, 100)
    with pytest.raises(ValueError):
        K.decode("fp8", st["codes"], st["scale"], True, 0, 100)
    with pytest.raises(ValueError):
        K.adam_8bit_(torch.randn(1000)[::2], torch.randn(500), st["codes"], st["scale"], st["codes"], st["scale"],
                     lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=True,
                     bias_correction1=0.1, bias_correction2_sqrt=0.03)  # fmt: skip


# -- the fused Adam(W) step --------------------------------------------------------------------
def _reference_step(enc, p, g, st, *, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, amsgrad, t):
    """The same formulas with torch ops on moments decoded by encodings.py's torch path."""
    n = p.numel()
    m, v = enc.decode(st["m"], True, 0, n), enc.decode(st["v"], False, 0, n)
    g = -g if maximize else g
    if decoupled:
        p.mul_(1 - lr * weight_decay)
    elif weight_decay:
        g = g.add(p, alpha=weight_decay)
    m.lerp_(g, 1 - beta1)
    v.lerp_(g * g, 1 - beta2)
    vv = v
    if amsgrad:
        vv = torch.maximum(enc.decode(st["x"], False, 0, n), v)
        enc.encode_(vv, False, st["x"])
    denom = (vv.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
    p.addcdiv_(m, denom, value=-(lr / (1 - beta1**t)))
    enc.encode_(m, True, st["m"])
    enc.encode_(v, False, st["v"])


def _kernel_step(enc, p, g, st, *, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, amsgrad, t):
    extra = {"max_codes": st["x"]["codes"], "max_scale": st["x"]["scale"]} if amsgrad else {}
    K.adam_(enc, p, g, st["m"]["codes"], st["m"]["scale"], st["v"]["codes"], st["v"]["scale"], lr=lr, beta1=beta1,
            beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled, bias_correction1=1 - beta1**t,
            bias_correction2_sqrt=(1 - beta2**t) ** 0.5, maximize=maximize, **extra)  # fmt: skip


def _states(enc, n):
    return {"m": enc.empty(n, True, CPU), "v": enc.empty(n, False, CPU), "x": enc.empty(n, False, CPU)}


ADAM_CASES = [
    dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=True, maximize=False, amsgrad=False),
    dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, decoupled=False, maximize=True, amsgrad=False),
    dict(lr=1e-3, beta1=0.3, beta2=0.4, eps=1e-8, weight_decay=0.0, decoupled=True, maximize=False, amsgrad=True),
]


@pytest.mark.parametrize("name", ["8bit", "4bit"])
@pytest.mark.parametrize("n", [100, 256, 1000, 4096 + 77, 70_000])
@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
def test_adam_matches_torch_ops(name, n, case):
    hyper = ADAM_CASES[case]
    enc = encoding(name)
    gen = torch.Generator().manual_seed(n + case)
    p0 = torch.randn(n, generator=gen)
    p_ref, p_k = p0.clone(), p0.clone()
    st_ref, st_k = _states(enc, n), _states(enc, n)
    for t in range(1, 6):
        g = torch.randn(n, generator=gen) * torch.logspace(-6, 0, n)
        if t == 3:
            g[: n // 3] = 0  # zero gradients
        _reference_step(enc, p_ref, g, st_ref, t=t, **hyper)
        _kernel_step(enc, p_k, g, st_k, t=t, **hyper)
    torch.testing.assert_close(p_k, p_ref, rtol=1e-6, atol=1e-7)
    for key in ("m", "v", "x") if hyper["amsgrad"] else ("m", "v"):
        same = (st_k[key]["codes"] == st_ref[key]["codes"]).float().mean().item()
        assert same >= 0.999, (key, same)
        torch.testing.assert_close(st_k[key]["scale"].float(), st_ref[key]["scale"].float(), rtol=1e-5, atol=0)


def test_adam_multi_equals_per_tensor():
    enc = encoding("8bit")
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=True, maximize=False)
    sizes = [5000, 256, 70_001, 1]
    ps = [torch.randn(n) for n in sizes]
    gs = [torch.randn(n) for n in sizes]
    a = [p.clone() for p in ps]
    sa, sb = [_states(enc, n) for n in sizes], [_states(enc, n) for n in sizes]
    for t in (1, 2):
        bc = dict(bias_correction1=1 - 0.9**t, bias_correction2_sqrt=(1 - 0.999**t) ** 0.5)
        for p, g, s in zip(a, gs, sa):
            K.adam_8bit_(p, g, s["m"]["codes"], s["m"]["scale"], s["v"]["codes"], s["v"]["scale"], **hyper, **bc)
        K.adam_multi_(enc, ps, gs, [s["m"]["codes"] for s in sb], [s["m"]["scale"] for s in sb],
                      [s["v"]["codes"] for s in sb], [s["v"]["scale"] for s in sb], **hyper, **bc)  # fmt: skip
    for x, y, s1, s2 in zip(a, ps, sa, sb):
        assert torch.equal(x, y)
        assert torch.equal(s1["m"]["codes"], s2["m"]["codes"]) and torch.equal(s1["v"]["scale"], s2["v"]["scale"])


def test_threads_agree():
    """The result does not depend on the thread count (blocks are independent)."""
    enc = encoding("8bit")
    n = 300_000
    outs = []
    threads = torch.get_num_threads()
    try:
        for nt in (1, max(2, threads)):
            torch.set_num_threads(nt)
            p, g, s = torch.ones(n), torch.linspace(-1, 1, n), _states(enc, n)
            _kernel_step(enc, p, g, s, t=1, **ADAM_CASES[0])
            outs.append((p, s["m"]["codes"], s["v"]["codes"]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(x, y) for x, y in zip(*outs))


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv("OPTIMKIT_NO_KERNELS", "1")
    assert kernels.load() is None


def _load_in_subprocess(tmp_path, env_extra):
    import subprocess
    import sys

    env = dict(os.environ, OPTIMKIT_CACHE_DIR=str(tmp_path), **env_extra)
    env.pop("OPTIMKIT_NO_KERNELS", None)
    code = "import warnings; warnings.simplefilter('always')\nfrom optimkit.execution import kernels\nprint(kernels.load() is not None)"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_no_compiler_falls_back(tmp_path):
    """A compiler that fails: load() is None, with one warning, and nothing is cached."""
    proc = _load_in_subprocess(tmp_path, {"CC": "/bin/false"})
    out, err = proc.communicate(timeout=120)
    assert out.strip() == "False", (out, err)
    assert "compiling the low-bit kernels failed" in err
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_concurrent_compiles(tmp_path):
    """Processes compiling into the same empty cache at once all load a whole library."""
    procs = [_load_in_subprocess(tmp_path, {}) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(out.strip() == "True" for out, _ in outs), outs
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 1
    assert not [p for p in (tmp_path / "kernels").iterdir() if p.name.startswith(".")]
