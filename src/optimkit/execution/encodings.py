r"""State encodings: how a moment estimate is stored between steps.

An optimizer's moments (``exp_avg``, ``exp_avg_sq``, a momentum buffer...) are as big as the
model, and in float32 Adam's two cost 8 bytes per parameter. An encoding stores each moment
the rule declares :func:`~optimkit.rule.moment` in fewer bits; the step decodes it to float32,
runs the rule unchanged, and encodes the result again (:mod:`.encoded`). Nothing of this is
written per optimizer.

=========  ==================================================================  ===============
name       stored as                                                           bytes / element
=========  ==================================================================  ===============
``bf16``   bfloat16, rounded to nearest                                        2
``8bit``   blockwise dynamic quantization (Dettmers et al. 2022, *8-bit        1 + 4/256
           Optimizers via Block-wise Quantization*): 256 elements a block, one
           float32 scale (the block's absolute maximum) each, 8-bit codes of
           the *dynamic* map -- a sign, a decimal exponent 10^-7..10^0 in unary
           and a linear fraction with the bits left (bitsandbytes' and
           torchao's map, signed for first moments, unsigned for second)
``4bit``   blockwise 4-bit (Li et al. 2023, *Memory Efficient Optimizers with   1/2 + 2/128
           4-bit States*): 128 elements a block on the 4-bit dynamic-exponent
           map, signed for first moments, unsigned with zero excluded for second
           moments (their "B128/DE-0": a second moment never decodes to 0, which
           would make ``m / sqrt(v)`` blow up); two codes a byte; the scale in
           bfloat16, rounded up (so 1.04 bytes per parameter for Adam where
           torchao's float32 scales take 1.06)
``fp8``    float8 e4m3 (``torch.float8_e4m3fn``), 256 elements a block scaled    1 + 4/256
           so the block's maximum is 448 (torchao's ``AdamWFp8``)
=========  ==================================================================  ===============

Each encoding stores a moment as plain tensors -- ``codes`` (and ``scale`` per block) -- so
state dicts, ``torch.save``, safetensors and distributed checkpoints need nothing special:
the optimizer's state holds ``state[p]["exp_avg"]`` (the codes) and
``state[p]["exp_avg.scale"]``. Blocks run over the tensor's elements in memory order; the last
one may be partial.

Quantizing is rounding to the *nearest* code (ties to the larger; a positive second moment
never to 0, see :func:`midpoints`), written with torch ops here; :mod:`.kernels` has the same arithmetic compiled for the CPU when a compiler is there.
Tensors under :data:`MIN_SIZE` elements stay full precision, as in bitsandbytes and torchao:
their scales would cost more than they save.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ENCODINGS", "MIN_SIZE", "Encoding", "Blockwise", "BFloat16", "dynamic_map", "encoding", "SCALE"]

#: Tensors with fewer elements stay full precision (bitsandbytes' and torchao's threshold).
MIN_SIZE = 4096
#: The suffix of a moment's scale entry in a parameter's state (``"exp_avg.scale"``).
SCALE = ".scale"


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> list[float]:
    """The dynamic quantization map of Dettmers (2016, *8-Bit Approximations for Parallelism
    in Deep Learning*), as bitsandbytes' ``create_dynamic_map`` makes it (without its zero
    padding, so it also gives the 4-bit map of Li et al. 2023): sorted, ``2**total_bits``
    values in [-1, 1] (signed) or [0, 1].

    Each decimal exponent ``10**-k`` (k = ``max_exponent_bits``-1 .. 0) gets a linear fraction
    with one more bit than the exponent below it: small magnitudes are coarse, large ones fine.
    """
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        bits = i + non_sign_bits - max_exponent_bits + (0 if signed else 1)
        fraction_items = int(2**bits + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    if len(data) != 2**total_bits:
        raise ValueError(f"a dynamic map of {total_bits} bits needs other exponent bits than {max_exponent_bits}")
    return sorted(data)


def midpoints(values: tuple[float, ...]) -> Tensor:
    """The float32 thresholds between a map's neighbouring values: ``y`` takes code ``k`` for
    ``mids[k-1] <= y < mids[k]`` (the nearest value, ties to the larger).

    One exception, the *zero-point problem* of Li et al. 2023: on a map that starts at 0 (the
    unsigned 8-bit map of second moments) a positive value never takes the code of 0 -- it
    takes the smallest positive one. A second moment a thousand times below its block's
    maximum would otherwise decode to 0 and the next step divide its first moment by ``eps``
    alone (measured on the digits MLP: parameters jumping by tens in one step, with
    torchao's AdamW8bit as with the plain nearest code)."""
    q = torch.tensor(values, dtype=torch.float32)
    mids = ((q[1:].double() + q[:-1].double()) / 2).float()
    if values[0] == 0.0:
        mids[0] = torch.finfo(torch.float32).smallest_normal * 2.0**-23  # the smallest positive float
    return mids


@functools.cache
def _table(values: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """A map on ``device`` and its :func:`midpoints`."""
    return torch.tensor(values, dtype=torch.float32, device=device), midpoints(values).to(device)


class Encoding:
    """How a moment is stored. Subclasses define :meth:`empty`, :meth:`encode_` and
    :meth:`decode`; ``nbytes(n)`` is what ``n`` elements cost."""

    name: str = ""
    block_size: int | None = None

    def entries(self, key: str) -> tuple[str, ...]:
        """The state keys a moment ``key`` is stored under."""
        return (key,)

    def empty(self, n: int, signed: bool, device: torch.device) -> dict[str, Tensor]:
        """The stored form of ``n`` zeros: ``{"codes": ..., "scale": ...}`` (scale if any)."""
        raise NotImplementedError

    def encode_(self, x: Tensor, signed: bool, stored: dict[str, Tensor], lo: int = 0) -> None:
        """Store the float32 elements ``x`` (1-D) at element offset ``lo`` (a block boundary)."""
        raise NotImplementedError

    def decode(self, stored: dict[str, Tensor], signed: bool, lo: int, hi: int) -> Tensor:
        """Elements ``lo:hi`` (``lo`` a block boundary) as a new float32 1-D tensor."""
        raise NotImplementedError

    def is_stored(self, value: dict[str, Tensor], n: int) -> bool:
        """Whether ``value`` (``codes``/``scale``) is this encoding's form of ``n`` elements."""
        raise NotImplementedError

    def nbytes(self, n: int) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<encoding {self.name}{'' if self.block_size is None else f' block_size={self.block_size}'}>"


class BFloat16(Encoding):
    """bfloat16 moments (rounded to nearest)."""

    name = "bf16"

    def empty(self, n: int, signed: bool, device: torch.device) -> dict[str, Tensor]:
        return {"codes": torch.zeros(n, dtype=torch.bfloat16, device=device)}

    def encode_(self, x: Tensor, signed: bool, stored: dict[str, Tensor], lo: int = 0) -> None:
        stored["codes"][lo : lo + x.numel()].copy_(x)

    def decode(self, stored: dict[str, Tensor], signed: bool, lo: int, hi: int) -> Tensor:
        return stored["codes"][lo:hi].float()

    def is_stored(self, value: dict[str, Tensor], n: int) -> bool:
        codes = value.get("codes")
        return isinstance(codes, Tensor) and codes.dtype == torch.bfloat16 and "scale" not in value

    def nbytes(self, n: int) -> int:
        return 2 * n


@dataclass(frozen=True)
class _Maps:
    signed: tuple[float, ...]
    unsigned: tuple[float, ...]


class Blockwise(Encoding):
    """Blockwise quantization on a map (8-bit, 4-bit) or to float8 (FP8); see the module.

    Args:
        name: ``"8bit"``, ``"4bit"`` or ``"fp8"``.
        block_size: elements per scale.
    """

    def __init__(self, name: str, block_size: int) -> None:
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2 or block_size % 2:
            raise ValueError(f"block_size must be an even integer >= 2, got {block_size!r}")
        self.name = name
        self.block_size = block_size
        self.bits = 4 if name == "4bit" else 8
        self.maps = _MAPS.get(name)
        # 4-bit: the scale in bfloat16 (rounded up) so the scales cost 2/128 bytes an element.
        self.scale_dtype = torch.bfloat16 if name == "4bit" else torch.float32

    def entries(self, key: str) -> tuple[str, ...]:
        return (key, key + SCALE)

    def _blocks(self, n: int) -> int:
        return -(-n // self.block_size)

    def _ncodes(self, n: int) -> int:
        return -(-n // 2) if self.bits == 4 else n

    def empty(self, n: int, signed: bool, device: torch.device) -> dict[str, Tensor]:
        dtype = torch.float8_e4m3fn if self.name == "fp8" else torch.uint8
        codes = torch.zeros(self._ncodes(n), dtype=torch.uint8, device=device)
        if self.maps is not None:  # the code of 0
            q, _ = _table(self._map(signed), device)
            codes.fill_(self._pair(int(torch.argmin(q.abs()))))
        return {"codes": codes.view(dtype), "scale": torch.zeros(self._blocks(n), dtype=self.scale_dtype, device=device)}

    def _map(self, signed: bool) -> tuple[float, ...]:
        assert self.maps is not None
        return self.maps.signed if signed else self.maps.unsigned

    def _pair(self, code: int) -> int:
        return code | (code << 4) if self.bits == 4 else code

    def is_stored(self, value: dict[str, Tensor], n: int) -> bool:
        codes, scale = value.get("codes"), value.get("scale")
        if not isinstance(codes, Tensor) or not isinstance(scale, Tensor):
            return False
        dtype = torch.float8_e4m3fn if self.name == "fp8" else torch.uint8
        return (
            codes.dtype == dtype and codes.numel() == self._ncodes(n)
            and scale.dtype == self.scale_dtype and scale.numel() == self._blocks(n)
        )  # fmt: skip

    def nbytes(self, n: int) -> int:
        return self._ncodes(n) + self._blocks(n) * (2 if self.scale_dtype == torch.bfloat16 else 4)

    # -- the arithmetic (torch ops; .kernels does the same in one compiled loop) ----------
    def _absmax(self, x: Tensor) -> Tensor:
        b, n = self.block_size, x.numel()
        full = n // b
        absmax = x[: full * b].view(full, b).abs().amax(1) if full else x.new_empty(0)
        if n % b:
            absmax = torch.cat([absmax, x[full * b :].abs().amax().view(1)])
        return absmax

    def _per_element(self, scale: Tensor, n: int) -> Tensor:
        return scale.float().repeat_interleave(self.block_size)[:n]

    def encode_(self, x: Tensor, signed: bool, stored: dict[str, Tensor], lo: int = 0) -> None:
        n, b = x.numel(), self.block_size
        absmax = self._absmax(x)
        if self.name == "fp8":
            scale = absmax / torch.finfo(torch.float8_e4m3fn).max
        elif self.scale_dtype == torch.bfloat16:
            scale = _bf16_up(absmax)
        else:
            scale = absmax
        # A zero block stays zero: divide by 1 there instead of 0.
        divisor = torch.where(scale == 0, torch.ones_like(scale, dtype=torch.float32), scale.float())
        y = x / self._per_element(divisor, n)
        stored["scale"][lo // b : lo // b + scale.numel()].copy_(scale)
        if self.name == "fp8":
            codes = y.to(torch.float8_e4m3fn)
            if not signed:  # the zero-point rule (see midpoints): a positive value is never 0
                codes = torch.where((codes.float() == 0) & (y > 0), _FP8_TINY, codes)
            stored["codes"][lo : lo + n].copy_(codes)
            return
        q, mids = _table(self._map(signed), x.device)
        # Nearest code, ties to the larger one (right=True: mids[i-1] <= y < mids[i] -> i).
        codes = torch.bucketize(y, mids, right=True).to(torch.uint8)
        if self.bits == 4:
            if n % 2:
                codes = torch.cat([codes, codes.new_zeros(1)])
            pairs = codes.view(-1, 2)
            codes = pairs[:, 0] | (pairs[:, 1] << 4)
            stored["codes"][lo // 2 : lo // 2 + codes.numel()].copy_(codes)
        else:
            stored["codes"][lo : lo + n].copy_(codes)

    def decode(self, stored: dict[str, Tensor], signed: bool, lo: int, hi: int) -> Tensor:
        n, b = hi - lo, self.block_size
        scale = self._per_element(stored["scale"][lo // b : -(-hi // b)], n)
        if self.name == "fp8":
            return stored["codes"][lo:hi].float() * scale
        q, _ = _table(self._map(signed), stored["codes"].device)
        if self.bits == 4:
            packed = stored["codes"][lo // 2 : -(-hi // 2)]
            codes = torch.stack([packed & 15, packed >> 4], 1).view(-1)[:n]
        else:
            codes = stored["codes"][lo:hi]
        return q[codes.long()] * scale


def _bf16_up(x: Tensor) -> Tensor:
    """``x`` (float32, >= 0) in bfloat16, rounded up: every element of a block divided by it
    stays within [-1, 1]."""
    y = x.to(torch.bfloat16)
    below = y.float() < x
    return torch.where(below, torch.nextafter(y, torch.full_like(y, math.inf)), y)


_FP8_TINY = torch.tensor(2.0**-9, dtype=torch.float8_e4m3fn)  # e4m3's smallest positive value

_MAPS = {
    "8bit": _Maps(tuple(dynamic_map(signed=True)), tuple(dynamic_map(signed=False))),
    # Li et al. 2023: the dynamic exponent map (3 exponent bits), zero excluded for second
    # moments by the rule in midpoints (their B128/DE-0). Their best, rank-1 normalization with
    # a linear map, needs a whole tensor's row and column maxima (not chunkable); torchao's
    # choice, B128 with the linear map without zero, floors every second moment at 1/16 of its
    # block's maximum: on the lab's digits MLP it ended 20% above float32's training loss
    # after 300 steps, DE-0 7% (benchmarks/lowbit_quality.py).
    "4bit": _Maps(tuple(dynamic_map(True, 3, 4)), tuple(dynamic_map(False, 3, 4))),
}

#: Encoding names and their default block sizes (None: not blockwise).
ENCODINGS: dict[str, int | None] = {"bf16": None, "8bit": 256, "4bit": 128, "fp8": 256}


@functools.cache
def encoding(name: str, block_size: int | None = None) -> Encoding:
    """The encoding called ``name`` (see :data:`ENCODINGS`), with ``block_size`` or its default."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown state_encoding {name!r}; choose one of {', '.join(map(repr, ENCODINGS))} or None")
    if ENCODINGS[name] is None:
        if block_size is not None:
            raise ValueError(f"state_encoding={name!r} has no blocks: block_size must be None")
        return BFloat16()
    return Blockwise(name, ENCODINGS[name] if block_size is None else block_size)
