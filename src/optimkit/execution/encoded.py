r"""The executor for groups whose state is encoded, or whose bfloat16 parameters are rounded
stochastically or with Kahan compensation.

A group with ``state_encoding`` (``"bf16"``, ``"8bit"``, ``"4bit"``, ``"fp8"``: see
:mod:`.encodings`) keeps each moment its rule declares (:func:`optimkit.rule.moment`) encoded
between steps. The step runs the *same rule* as every other executor, on float32 copies::

    for each parameter (at least MIN_SIZE elements), CHUNK elements at a time:
        moments  <- decode(codes, scale)           # float32, chunk-sized temporaries
        rule(param, grad, {step, moments, ...})    # the optimizer's own math, unchanged
        codes, scale <- encode(moments)            # nearest code, one scale a block

so the temporaries are a chunk, never a whole model's moments, and a new rule gets low-bit
state without a line of its own. Smaller parameters and parameters this path cannot take
(complex, sparse gradients, non-contiguous) run through the group's ordinary executor with
full-precision state. DTensor (FSDP2) parameters are stepped on their local shards, their
encoded state sharded like them, where the blocks allow it (:mod:`.sharded_encoded`). State
the rule does not declare a moment (Schedule-Free's ``z``, ASGD's average) stays as the rule
makes it.

Parameters in bfloat16/float16 are computed in float32 (a copy of the chunk) and written back
rounded to nearest, or -- for bfloat16 with ``bf16_stochastic_round=True`` -- rounded up or
down with probability given by the distance (unbiased: small updates are not all lost), or with
``kahan_summation=True`` through a compensation buffer ``kahan_comp`` (bfloat16, param-shaped)
holding what the last rounding lost. The random bits of stochastic rounding are a hash of the
element's index and a per-parameter counter in the state (``rounding_seed``): no generator
state, so a resumed run rounds exactly as the uninterrupted one.

Adam/AdamW (rules declaring ``fused="adam"``) on float32 parameters with 8-bit state take the
compiled kernel of :mod:`.kernels` where a C compiler is available: the same codec and update
in one pass over memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..rule import Rule
from .encodings import MIN_SIZE, SCALE, Encoding, encoding
from .job import Executor, Job
from .sharded import is_dtensor

__all__ = ["Encoded", "ENCODING_KEYS", "SCALE", "check_encoding", "encoding_of", "conform", "stored_as_saved", "stored_bytes",
           "stochastic_round"]

#: Group keys of this path (present in a group only when set).
ENCODING_KEYS = ("state_encoding", "block_size", "bf16_stochastic_round", "kahan_summation")
#: Elements decoded per rule call (a multiple of every block size).
CHUNK = 1 << 18
_LOW = (torch.bfloat16, torch.float16)
_SEED_MUL = 6364136223846793005  # Knuth's MMIX LCG: advances rounding_seed once a step
_SEED_ADD = 1442695040888963407


def wants(group: dict[str, Any]) -> bool:
    """Whether ``group`` runs through this executor."""
    return bool(group.get("state_encoding") or group.get("bf16_stochastic_round") or group.get("kahan_summation"))


def encoding_of(group: dict[str, Any]) -> Encoding | None:
    name = group.get("state_encoding")
    return None if not name else encoding(name, group.get("block_size"))


def check_encoding(rule: Rule | None, group: dict[str, Any], name: str) -> None:
    """Raise ``ValueError`` naming the problem if ``group``'s encoding options cannot apply."""
    enc_name = group.get("state_encoding")
    if enc_name is not None:
        encoding(enc_name, group.get("block_size"))  # an unknown name or bad block size raises
    elif group.get("block_size") is not None:
        raise ValueError("block_size needs a state_encoding ('8bit', '4bit' or 'fp8')")
    sr, kahan = group.get("bf16_stochastic_round", False), group.get("kahan_summation", False)
    for key, value in (("bf16_stochastic_round", sr), ("kahan_summation", kahan)):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, got {value!r}")
    if sr and kahan:
        raise ValueError("bf16_stochastic_round and kahan_summation are two ways to round bfloat16 "
                         "parameters: choose one")  # fmt: skip
    if not wants(group):
        return
    what = f"state_encoding={enc_name!r}" if enc_name else ("bf16_stochastic_round" if sr else "kahan_summation")
    if rule is None or rule.caps.scope != "tensor" or not rule.caps.elementwise:
        raise ValueError(
            f"{what} needs an elementwise update rule; {name}'s step works on whole tensors or groups"
        )
    if enc_name and not rule.encodable:
        raise ValueError(f"{what}: {name} keeps no moment estimates to encode (its state is exact by design)")
    if (sr or kahan) and any(is_dtensor(p) and p.dtype == torch.bfloat16 for p in group.get("params", ())):
        raise ValueError(
            f"{'bf16_stochastic_round' if sr else 'kahan_summation'} is not supported for DTensor (FSDP2) "
            "parameters: keep float32 master weights under FSDP2 (MixedPrecisionPolicy) instead"
        )
    if group.get("fused"):
        raise ValueError(f"{what} cannot be used with fused=True (torch's kernel keeps float state)")
    if group.get("differentiable"):
        raise ValueError(f"{what} cannot be used with differentiable=True")
    if group.get("foreach"):
        raise ValueError(f"{what} cannot be used with foreach=True")


def _takes(p: Tensor, g: Tensor, enc: Encoding | None, low: bool) -> bool:
    """Whether this path steps ``p``: encoded state (big enough), or low-precision rounding."""
    if is_dtensor(p):  # FSDP2: on the local shards, where the state can be sharded like p
        from .sharded_encoded import takes

        return enc is not None and not (low and p.dtype == torch.bfloat16) and takes(p, g, enc)
    if type(p) not in (Tensor, torch.nn.Parameter) or type(g) is not Tensor or g.layout != torch.strided:
        return False
    if not p.is_floating_point() or not p.is_contiguous():
        return False
    return (enc is not None and p.numel() >= MIN_SIZE) or (low and p.dtype == torch.bfloat16)


def _stored(st: dict[str, Any], key: str) -> dict[str, Tensor]:
    out = {"codes": st[key].view(-1)}
    if key + SCALE in st:
        out["scale"] = st[key + SCALE].view(-1)  # 2-D (rows, blocks) when saved by FSDP2
    return out


def _put(st: dict[str, Any], key: str, stored: dict[str, Tensor], p: Tensor, enc: Encoding) -> None:
    codes = stored["codes"]
    st[key] = codes.view(p.shape) if codes.numel() == p.numel() else codes
    if "scale" in stored:
        st[key + SCALE] = stored["scale"]
    else:
        st.pop(key + SCALE, None)


def is_encoded(enc: Encoding | None, st: dict[str, Any], key: str, p: Tensor) -> bool:
    if enc is None or key not in st:
        return False
    return enc.is_stored(_stored(st, key), p.numel())


def _foreign(st: dict[str, Any], key: str, p: Tensor) -> Encoding | None:
    """The encoding ``st[key]`` is stored in when it is not plain float state of ``p``."""
    v = st.get(key)
    if not isinstance(v, Tensor):
        return None
    n = p.numel()
    if key + SCALE in st:
        for name in ("8bit", "fp8", "4bit"):
            scale = st[key + SCALE]
            ncodes = -(-n // 2) if name == "4bit" else n
            if v.numel() != ncodes or scale.numel() == 0:
                continue
            enc = encoding(name, _block_for(n, scale.numel(), name))
            if enc.is_stored(_stored(st, key), n):
                return enc
        raise ValueError(f"state {key!r} has a scale but is no known encoding of a {n}-element parameter")
    if v.dtype == torch.bfloat16 and p.dtype != torch.bfloat16 and v.numel() == n:
        return encoding("bf16")
    return None


def _block_for(n: int, blocks: int, name: str) -> int | None:
    for b in (256, 128, 64, 512, 1024, 2048, 32, 16, 4096):
        if -(-n // b) == blocks:
            return b
    raise ValueError(f"cannot tell the block size of {name} state: {n} elements in {blocks} blocks")


def conform(rule: Rule, p: Tensor, st: dict[str, Any], group: dict[str, Any]) -> list[str]:
    """Bring ``p``'s moments into ``group``'s encoding (decode what is stored otherwise,
    encode plain ones): after ``load_state_dict``. Returns ``"key: from -> to"`` for each change."""
    if is_dtensor(p):
        from .sharded_encoded import conform as conform_sharded

        return conform_sharded(rule, p, st, group)
    enc = encoding_of(group)
    target = enc if enc is not None and p.numel() >= MIN_SIZE and p.is_contiguous() else None
    changes = []
    for key, sign in rule.encodable.items():
        if key not in st or not isinstance(st[key], Tensor):
            continue
        source = _foreign(st, key, p)
        if source is target or (source is not None and target is not None and source.name == target.name
                                and source.block_size == target.block_size):  # fmt: skip
            continue
        if source is None:
            if target is None:
                continue
            value = st[key].reshape(-1).float()
        else:
            value = source.decode(_stored(st, key), sign == "signed", 0, p.numel())
        if target is None:
            st.pop(key + SCALE, None)
            st[key] = value.to(p.dtype).view(p.shape)
        else:
            stored = target.empty(p.numel(), sign == "signed", p.device)
            target.encode_(value, sign == "signed", stored)
            _put(st, key, stored, p, target)
        changes.append(f"{key}: {source.name if source else str(p.dtype).replace('torch.', '')} -> "
                       f"{target.name if target else str(p.dtype).replace('torch.', '')}")  # fmt: skip
    return changes


def keep_own_encoding(loaded: dict[str, Any], own: dict[str, Any]) -> None:
    """A loaded group takes the optimizer's own encoding options, not the saved ones: an
    8-bit optimizer loading a float32 state dict stays 8-bit (and converts the moments)."""
    for k in ENCODING_KEYS:
        if k in own:
            loaded[k] = own[k]
        else:
            loaded.pop(k, None)


def stored_as_saved(value: dict[str, Any], p: Tensor, group: dict[str, Any], rule: Rule | None) -> set[str]:
    """The entries of a loaded state ``value`` that keep their saved dtype and shape: encoded
    codes and their scales (a bf16 moment of a float32 parameter under ``state_encoding="bf16"``,
    FP8 codes, bfloat16 4-bit scales -- casting any of them to the parameter's dtype would
    change what they mean); also the ``rounding_seed`` of stochastic rounding."""
    kept = {k for k in value if isinstance(k, str) and (k.endswith(SCALE) or k + SCALE in value)}
    if "rounding_seed" in value:
        kept.add("rounding_seed")
    if rule is not None and group.get("state_encoding") == "bf16":
        kept |= {k for k in rule.encodable if isinstance(value.get(k), Tensor) and value[k].dtype == torch.bfloat16}
    return {k for k in kept if isinstance(value.get(k), Tensor)}


def stored_bytes(state: dict[Any, dict[str, Any]]) -> int:
    """Bytes of every tensor in an optimizer's ``state`` (codes, scales, steps, all)."""
    total = 0
    for st in state.values():
        for v in st.values():
            if isinstance(v, Tensor):
                total += v.numel() * v.element_size()
    return total


class Encoded:
    """Runs groups with an encoding (see the module); the rest of a group's parameters go to
    ``fallback(job)``, the executor the group would have without one."""

    def __init__(self, fallback: Callable[[Job], Executor]) -> None:
        self._fallback = fallback

    def step(self, job: Job) -> None:
        group, rule = job.group, job.rule
        enc = encoding_of(group)
        sr, kahan = bool(group.get("bf16_stochastic_round")), bool(group.get("kahan_summation"))
        if (sr or kahan) and any(is_dtensor(p) and p.dtype == torch.bfloat16 for p in job.params):
            # The rounding would need a seed shared by the ranks and global element indices.
            raise NotImplementedError(
                f"{'bf16_stochastic_round' if sr else 'kahan_summation'} is not supported for DTensor (FSDP2) "
                "parameters: keep float32 master weights under FSDP2 (MixedPrecisionPolicy) instead"
            )
        mine = [i for i, (p, g) in enumerate(zip(job.params, job.grads)) if _takes(p, g, enc, sr or kahan)]
        if len(mine) < len(job.params):
            taken = set(mine)
            rest = [i for i in range(len(job.params)) if i not in taken]
            sub = Job(
                rule=rule, group=group, params=[job.params[i] for i in rest], grads=[job.grads[i] for i in rest],
                hyper=job.hyper, store=job.store, grad_scale=job.grad_scale, found_inf=job.found_inf,
            )  # fmt: skip
            self._fallback(sub).step(sub)
        if not mine:
            return
        params = [job.params[i] for i in mine]
        states = [job.store.state.get(p) or {} for p in params]
        try:
            fast = _adam_kernel(rule, job, mine, params, states, group, enc)
            for i, p, st in zip(mine, params, states):
                if i in fast:
                    continue
                if is_dtensor(p):
                    from .sharded_encoded import step as step_sharded

                    step_sharded(rule, p, job.grads[i], st, group, job.hyper, enc)
                    continue
                if not st:
                    _init(rule, p, st, group, enc)
                _step(rule, p, job.grads[i], st, group, job.hyper, enc, sr, kahan)
        finally:
            job.store.commit(params, states)


def _kernels(enc: Encoding | None) -> Any:
    """The compiled kernels where they can run ``enc`` (8-bit, 4-bit), else None."""
    if enc is None or enc.name not in ("8bit", "4bit"):
        return None
    from . import kernels

    return kernels.load()


def _decode(enc: Encoding, stored: dict[str, Tensor], signed: bool, lo: int, hi: int) -> Tensor:
    k = _kernels(enc)
    codes = stored["codes"]
    if k is not None and codes.device.type == "cpu" and codes.is_contiguous() and stored["scale"].is_contiguous():
        return k.decode(enc, codes, stored["scale"], signed, lo, hi)  # the same floats, one pass
    return enc.decode(stored, signed, lo, hi)


def _encode(enc: Encoding, x: Tensor, signed: bool, stored: dict[str, Tensor], lo: int) -> None:
    k = _kernels(enc)
    codes = stored["codes"]
    if (k is not None and codes.device.type == "cpu" and x.device.type == "cpu" and codes.is_contiguous()
            and stored["scale"].is_contiguous()):  # fmt: skip
        x = x.contiguous()
        k.encode(enc, x, signed, codes, stored["scale"], lo)  # the same codes and scales, one pass
    else:
        enc.encode_(x, signed, stored, lo)


def _kernel_keys(rule: Rule, hyper: dict[str, Any], enc: Encoding | None) -> tuple[Any, tuple[str, ...]]:
    """The compiled kernels and the moments they update, where the fused Adam(W) step applies
    to this group (a rule declaring torch's ``fused="adam"``, 8-bit or 4-bit moments)."""
    k = _kernels(enc)
    if k is None or rule.caps.fused != "adam" or hyper.get("cautious"):
        return None, ()
    amsgrad = bool(hyper.get("amsgrad"))
    return k, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")


def _kernel_takes(p: Tensor, g: Tensor, st: dict[str, Any], enc: Encoding, keys: tuple[str, ...]) -> bool:
    if type(p) not in (Tensor, torch.nn.Parameter) or p.dtype != torch.float32 or p.device.type != "cpu":
        return False
    if g.dtype != torch.float32 or not g.is_contiguous() or not p.is_contiguous():
        return False
    return all(is_encoded(enc, st, key, p) for key in keys) and isinstance(st.get("step"), Tensor)


def _run_kernel(k: Any, enc: Encoding, keys: tuple[str, ...], hyper: dict[str, Any],
                members: list[tuple[Tensor, Tensor, dict[str, Any]]]) -> None:  # fmt: skip
    """One fused step of ``members`` (parameter, gradient, state) that share a step count."""
    for _, _, st in members:
        st["step"] += 1
    t = float(members[0][2]["step"])
    beta1, beta2 = (float(b) for b in hyper["betas"])
    lists = {key: ([st[key].view(-1) for *_, st in members], [st[key + SCALE].view(-1) for *_, st in members])
             for key in keys}  # fmt: skip
    amsgrad = "max_exp_avg_sq" in lists
    k.adam_multi_(
        enc, [p.view(-1) for p, _, _ in members], [g.view(-1) for _, g, _ in members],
        *lists["exp_avg"], *lists["exp_avg_sq"],
        lr=float(hyper["lr"]), beta1=beta1, beta2=beta2, eps=float(hyper["eps"]),
        weight_decay=float(hyper["weight_decay"]), decoupled=bool(hyper["decoupled_weight_decay"]),
        bias_correction1=1 - beta1**t, bias_correction2_sqrt=(1 - beta2**t) ** 0.5,
        maximize=bool(hyper["maximize"]),
        max_codes=lists["max_exp_avg_sq"][0] if amsgrad else None,
        max_scales=lists["max_exp_avg_sq"][1] if amsgrad else None,
    )  # fmt: skip


def kernel_step(rule: Rule, p: Tensor, g: Tensor, st: dict[str, Any], hyper: dict[str, Any],
                enc: Encoding | None) -> bool:  # fmt: skip
    """The fused kernel's step of one plain tensor (a DTensor's local shard), if it applies."""
    k, keys = _kernel_keys(rule, hyper, enc)
    if k is None or not _kernel_takes(p, g, st, enc, keys):
        return False
    _run_kernel(k, enc, keys, hyper, [(p, g, st)])
    return True


def _adam_kernel(rule: Rule, job: Job, mine: list[int], params: list[Tensor], states: list[dict[str, Any]],
                 group: dict[str, Any], enc: Encoding | None) -> set[int]:  # fmt: skip
    """Adam/AdamW on float32 CPU parameters with 8-bit or 4-bit moments: the compiled kernel's
    one pass per block (decode, the same update, encode) instead of the rule on decoded
    chunks, for all of them in one call per step count. Returns the indices it stepped."""
    k, keys = _kernel_keys(rule, job.hyper, enc)
    if k is None:
        return set()
    by_step: dict[float, list[tuple[int, Tensor, Tensor, dict[str, Any]]]] = {}
    for i, p, st in zip(mine, params, states):
        g = job.grads[i]
        if type(p) not in (Tensor, torch.nn.Parameter) or p.numel() < MIN_SIZE:
            continue
        if not st:
            _init(rule, p, st, group, enc)
        if _kernel_takes(p, g, st, enc, keys):  # else state to convert first: the generic path
            by_step.setdefault(float(st["step"]), []).append((i, p, g, st))
    for members in by_step.values():
        _run_kernel(k, enc, keys, job.hyper, [(p, g, st) for _, p, g, st in members])
    return {i for members in by_step.values() for i, *_ in members}


def _init(rule: Rule, p: Tensor, st: dict[str, Any], group: dict[str, Any], enc: Encoding | None,
          whole: int | None = None) -> None:  # fmt: skip
    """A parameter's first state: moments made encoded (zeros never exist in float32).
    ``whole``: the elements of the whole parameter when ``p`` is a shard of it (MIN_SIZE)."""
    n = p.numel()
    use = enc if enc is not None and (n if whole is None else whole) >= MIN_SIZE else None
    for key, slot in rule.state.items():
        if slot.init is None or not slot.wanted(p, group):
            continue
        if use is not None and slot.encodable is not None:
            signed = slot.encodable == "signed"
            stored = use.empty(n, signed, p.device)
            if slot.init.__name__ != "_zeros":  # a non-zero start (Adagrad's initial sum)
                use.encode_(slot.init(p, group).reshape(-1).float(), signed, stored)
            _put(st, key, stored, p, use)
        else:
            st[key] = slot.init(p, group)
    if p.dtype == torch.bfloat16 and group.get("bf16_stochastic_round"):
        seed = torch.randint(-(2**62), 2**62, (), dtype=torch.int64)
        st["rounding_seed"] = seed
    if p.dtype == torch.bfloat16 and group.get("kahan_summation"):
        st["kahan_comp"] = torch.zeros_like(p)


def _step(rule: Rule, p: Tensor, g: Tensor, st: dict[str, Any], group: dict[str, Any], hyper: dict[str, Any],
          enc: Encoding | None, sr: bool, kahan: bool, whole: int | None = None) -> None:  # fmt: skip
    n = p.numel()
    big = (n if whole is None else whole) >= MIN_SIZE
    if enc is not None and big and any(
        k in st and not is_encoded(enc, st, k, p) for k in rule.encodable
    ):  # state from before the encoding was set (or another one): convert it once
        conform(rule, p, st, group)
    compute = torch.float32 if p.dtype in _LOW else p.dtype
    flat_p, flat_g = p.view(-1), g.reshape(-1)
    scalars = {k: v for k, v in st.items() if k in rule.scalar_keys}
    encoded = {k: rule.encodable[k] == "signed" for k in rule.encodable if is_encoded(enc, st, k, p)}
    plain = {k: v.view(-1) for k, v in st.items() if k in rule.param_keys and k not in encoded}
    seed = st.get("rounding_seed") if sr and p.dtype == torch.bfloat16 else None
    comp = st.get("kahan_comp") if kahan and p.dtype == torch.bfloat16 else None
    created: dict[str, dict[str, Tensor]] = {}
    after: dict[str, Tensor] = {}
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        state = {k: v.clone() for k, v in scalars.items()}
        for k, signed in encoded.items():
            state[k] = _decode(enc, _stored(st, k), signed, lo, hi).to(compute)
        for k, v in plain.items():
            state[k] = v[lo:hi] if v.dtype == compute else v[lo:hi].to(compute)
        p_old = flat_p[lo:hi]
        pc = p_old if p.dtype == compute else p_old.to(compute)
        gc = flat_g[lo:hi] if g.dtype == compute else flat_g[lo:hi].to(compute)
        rule.fn(pc, gc, state, **hyper)
        for k, v in state.items():
            if k in scalars:
                after[k] = v
            elif k in encoded:
                _encode(enc, v.reshape(-1).float(), encoded[k], _stored(st, k), lo)
            elif k in plain:
                if plain[k].dtype != compute:
                    plain[k][lo:hi].copy_(v)
            else:  # created by the rule in this step (SGD's first momentum buffer)
                _created(rule, k, v, lo, n, p, enc if big else None, created, st)
        if pc is not p_old:
            _write_back(p_old, pc, seed, comp, lo)
    for k, v in after.items():
        scalars[k].copy_(v)
    for k, stored in created.items():
        if "full" in stored:
            st[k] = stored["full"].view(p.shape)
        else:
            _put(st, k, stored, p, enc)
    if seed is not None:
        seed.mul_(_SEED_MUL).add_(_SEED_ADD)


def _created(rule: Rule, k: str, v: Tensor, lo: int, n: int, p: Tensor, enc: Encoding | None,
             created: dict[str, dict[str, Tensor]], st: dict[str, Any]) -> None:  # fmt: skip
    sign = rule.encodable.get(k)
    if enc is not None and sign is not None:  # (enc is None under MIN_SIZE: see _step)
        if k not in created:
            created[k] = enc.empty(n, sign == "signed", p.device)
        _encode(enc, v.reshape(-1).float(), sign == "signed", created[k], lo)
    else:
        if k not in created:
            created[k] = {"full": torch.empty(n, dtype=p.dtype, device=p.device)}
        created[k]["full"][lo : lo + v.numel()].copy_(v.reshape(-1))


def _write_back(p: Tensor, x: Tensor, seed: Tensor | None, comp: Tensor | None, lo: int) -> None:
    """Store the float32 result ``x`` into the low-precision parameter chunk ``p``."""
    if seed is not None:
        p.copy_(stochastic_round(x, seed, lo))
    elif comp is not None:
        c = comp.view(-1)[lo : lo + x.numel()]
        old = p.float()
        y = (x - old) + c.float()  # the update, plus what earlier roundings lost
        new = (old + y).to(p.dtype)
        c.copy_(y - (new.float() - old))
        p.copy_(new)
    else:
        p.copy_(x)


def _hash(i: Tensor) -> Tensor:
    """A 64-bit integer mix (splitmix64's finalizer; int64 arithmetic wraps in torch)."""
    i = i ^ ((i >> 30) & 0x3FFFFFFFF)
    i = i * -4658895280553007687  # 0xBF58476D1CE4E5B9 as a signed int64
    i = i ^ ((i >> 27) & 0x1FFFFFFFFF)
    i = i * -7723592293110705685  # 0x94D049BB133111EB
    return i ^ ((i >> 31) & 0x1FFFFFFFF)


def stochastic_round(x: Tensor, seed: Tensor, offset: int = 0) -> Tensor:
    """``x`` (float32) in bfloat16, rounded away from zero with probability equal to the
    discarded fraction (unbiased); the random bits hash ``seed`` and each element's index."""
    bits = x.contiguous().view(torch.int32)
    index = torch.arange(offset, offset + x.numel(), dtype=torch.int64, device=x.device)
    rand = (_hash(index + seed.to(x.device)) & 0xFFFF).to(torch.int32)
    # Adding 16 random bits below bfloat16's last one and truncating rounds up exactly with
    # probability (discarded bits) / 2**16. Infinities and NaNs are left to plain rounding.
    rounded = ((bits + rand) & -65536).view(torch.float32)
    finite = torch.isfinite(x)
    return torch.where(finite, rounded, x).to(torch.bfloat16)


def warn_conversions(changes: dict[str, list[str]], cls: str) -> None:
    if changes:
        sample = "; ".join(f"{name}: {', '.join(c)}" for name, c in list(changes.items())[:3])
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        warnings.warn(
            f"{cls}.load_state_dict converted the saved moments of {len(changes)} parameter(s) to this "
            f"optimizer's state encoding: {sample}{more}. Decoding is exact; encoding rounds each moment to its nearest code.",
            stacklevel=3,
        )

