r"""Compiled CPU kernels for low-bit optimizer state (:mod:`..encodings`' ``"8bit"`` and
``"4bit"``): the codec, and a fused Adam/AdamW step that decodes a block of moments, updates
the parameters and encodes the block again in one pass over memory.

The C source (``lowbit.c``, no torch headers) is compiled at first use with the system
compiler -- ``$CC``, else ``cc``, ``gcc`` or ``clang`` -- as::

    cc -O3 -march=native -fopenmp -fno-math-errno -ffp-contract=off -shared -fPIC

(IEEE division and sqrt: no ``-ffast-math``), cached as
``$OPTIMKIT_CACHE_DIR/kernels/<hash>.so`` (default ``~/.cache/optimkit/kernels``; the hash
covers the source, the flags, the compiler's version and the CPU's flags), written atomically,
and loaded with :mod:`ctypes`. :func:`load` returns None -- and the caller keeps the torch-ops
path -- when ``OPTIMKIT_NO_KERNELS=1``, when there is no compiler, or when compiling fails
(one warning). Every call runs on ``torch.get_num_threads()`` OpenMP threads (the ``.so`` is
linked to the process's ``libgomp.so.1``, torch's own when torch is loaded first) and
releases the GIL.

API (all tensors contiguous, on the CPU; misuse raises ValueError)::

    k = kernels.load()                       # Kernels or None
    k.decode(enc, codes, scale, signed, lo, hi, out=None) -> out   # float32 [hi - lo]
    k.encode(enc, x, signed, codes, scale, lo=0)                   # x float32 1-D
    k.adam_(enc, param, grad, m_codes, m_scale, v_codes, v_scale, *, lr, beta1, beta2, eps,
            weight_decay, decoupled, bias_correction1, bias_correction2_sqrt,
            maximize=False, max_codes=None, max_scale=None)
    k.adam_8bit_(param, grad, m_codes, m_scale, v_codes, v_scale, **same)   # enc = "8bit"
    k.adam_multi_(enc, params, grads, m_codes, m_scales, v_codes, v_scales, **same,
                  max_codes=None, max_scales=None)  # lists: one C call for many tensors

``enc`` is an :class:`~..encodings.Blockwise` (``"8bit"`` or ``"4bit"``, any even block size;
the fused step takes blocks up to 4096) or its name. ``decode``/``encode`` give exactly the
codes, scales and floats of ``Blockwise.decode``/``Blockwise.encode_`` (same arguments: the
stored tensors of the whole moment and the element offset ``lo``, a block boundary), NaN and
infinities included: a NaN in a block makes its scale NaN and every code the last one (what
``torch.bucketize`` gives NaN); an infinity makes the scale inf, the infinite element's code
the last one (inf / inf is NaN) and the others the code nearest 0 (0 and -0 alike). Under
65536 elements a call runs on one thread.

``adam_`` is one step of torch's Adam (``decoupled=False``: L2, ``grad + wd * param``) or
AdamW (``decoupled=True``: ``param *= 1 - lr * wd``) on float32 ``param`` with ``grad``
(float32, same size), its moments stored as ``enc`` (``m`` signed, ``v`` unsigned; with
``max_codes``/``max_scale``, AMSGrad's running maximum of ``v``, unsigned)::

    g = -grad if maximize else grad
    m = m.lerp(g, 1 - beta1);  v = v.lerp(g * g, 1 - beta2)        # torchao's formulation
    v' = max(v_max, v) (amsgrad, stored back) or v
    param += (-(lr / bias_correction1) * m) / (sqrt(v') / bias_correction2_sqrt + eps)

with ``bias_correction1 = 1 - beta1**t``, ``bias_correction2_sqrt = (1 - beta2**t) ** 0.5``
(the caller counts ``t``). The update uses the new m and v before they are quantized
(torchao's and bitsandbytes' order); each block's m and v are then encoded as ``encode``
does. Scalars are rounded to float32 as torch's CPU ops round them, and lerp is ATen's (a
fused multiply-add), so it follows torch ops on the decoded moments to the last bit or two.

Cost (``benchmarks/lowbit_kernel.py``, GPT-2-small-like shapes, 21.5M parameters, AMD EPYC
Zen 3, one thread, CPU time, on a machine shared with other jobs): torch's fused float32 AdamW
43 ms a step, this kernel 118 ms (2.7x), torchao's AdamW8bit 1544 ms, bitsandbytes'
AdamW8bit 994 ms. The kernel moves 16 bytes an element against the fused float32 step's 28,
but spends ~3 ns an element per core on table lookups (decode 2, encode 2) and divisions, so
it is compute-bound where the float32 step is memory-bound.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Kernels", "load", "FLAGS", "source_path"]

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-std=c11", "-shared", "-fPIC")
_SOURCE = Path(__file__).with_name("lowbit.c")
_LAST = 0x3F80  # the bucket of 1.0 (y bits >> 16)
#: The largest block the fused step takes.
MAX_FUSED_BLOCK = 4096


def source_path() -> Path:
    return _SOURCE


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or (cc if os.path.isfile(cc) else None)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    base = os.environ.get("OPTIMKIT_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "optimkit"
    return root / "kernels"


def _build(cc: str) -> Path:
    """The compiled library's path (compiled now unless cached)."""
    source = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), cc.encode(), version.encode(),
                                      _cpu_flags().encode()])).hexdigest()[:24]  # fmt: skip
    out_dir = _cache_dir()
    target = out_dir / f"lowbit-{key}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".lowbit-{key}-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, target)  # atomic: a concurrent process sees the old state or a whole .so
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _HP(ctypes.Structure):
    _fields_ = [(name, ctypes.c_double) for name in
                ("lr", "beta1", "beta2", "eps", "weight_decay", "bias_correction1", "bias_correction2_sqrt")]  # fmt: skip


def _tables(values: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """A map's float32 values and its bucket table (see lowbit.c): for ``k = y bits >> 16``,
    ``base | t << 8`` with ``base`` the code of the bucket's smallest y and ``t`` the key
    (``y bits & 0xffff``, reversed for negative y so that it grows with y) from which on the
    code is ``base + 1`` (0x10000: never)."""
    from ..encodings import midpoints

    q = torch.tensor(values, dtype=torch.float32)
    mids = midpoints(values)  # the torch-ops path's thresholds, zero-point rule included
    k = torch.arange(_LAST + 1, dtype=torch.int32) << 16  # |y| <= 1.0078
    lo_pos, hi_pos = k.view(torch.float32), (k | 0xFFFF).view(torch.float32)
    last = len(values) - 1
    table = torch.full((65536,), last | (0x10000 << 8), dtype=torch.int32)  # |y| > 1.0078, NaN: the last code
    for offset, ylo, yhi, negative in ((0, lo_pos, hi_pos, False), (0x8000, -hi_pos, -lo_pos, True)):
        base = torch.bucketize(ylo, mids, right=True)
        top = torch.bucketize(yhi, mids, right=True)
        # The table's premise: no bucket holds two midpoints (one comparison finishes a code).
        if not bool((top - base <= 1).all()):
            raise ValueError("the map has midpoints closer than a bfloat16 bucket; no bucket table")
        mid = mids[base.clamp(max=len(mids) - 1)]  # the one midpoint in (ylo, yhi] where top > base
        key = mid.abs().view(torch.int32) & 0xFFFF
        if negative:
            key = 0xFFFF - key
        t = torch.where(top > base, key, torch.full_like(key, 0x10000))
        table[offset : offset + _LAST + 1] = base.to(torch.int32) | (t << 8)
    return q, table


def _check(t: Tensor, name: str, dtype: torch.dtype | tuple[torch.dtype, ...], numel: int | None = None) -> None:
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a tensor")
    if t.dtype not in dtypes or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU tensor of {' or '.join(map(str, dtypes))}, "
                         f"got {t.dtype} on {t.device}{'' if t.is_contiguous() else ' (not contiguous)'}")  # fmt: skip
    if numel is not None and t.numel() != numel:
        raise ValueError(f"{name} has {t.numel()} elements, expected {numel}")


class Kernels:
    """The loaded library (see the module)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib, self.path = lib, path
        lib.ok_decode.argtypes = [ctypes.c_int, _I64, _P, _P, _I64, _I64, _P, _P, ctypes.c_int]
        lib.ok_encode.argtypes = [ctypes.c_int, _I64, _P, _I64, _I64, _P, _P, _P, ctypes.c_int]
        lib.ok_adam_multi.argtypes = [ctypes.c_int, _I64, ctypes.c_int] + [_P] * 13 + [ctypes.POINTER(_HP),
                                                                                    ctypes.c_int, ctypes.c_int]  # fmt: skip
        for f in (lib.ok_decode, lib.ok_encode, lib.ok_adam_multi):
            f.restype = None
        self.avx2 = bool(lib.ok_avx2())
        self._tables: dict[tuple[str, bool], tuple[Tensor, Tensor]] = {}

    def tables(self, enc, signed: bool) -> tuple[Tensor, Tensor]:
        key = (enc.name, bool(signed))
        if key not in self._tables:
            self._tables[key] = _tables(enc._map(signed))
        return self._tables[key]

    @staticmethod
    def _encoding(enc):
        from ..encodings import Blockwise, encoding

        if isinstance(enc, str):
            enc = encoding(enc)
        if not isinstance(enc, Blockwise) or enc.name not in ("8bit", "4bit"):
            raise ValueError(f"the kernels take the '8bit' and '4bit' encodings, not {enc!r}")
        return enc

    @staticmethod
    def _stored(enc, codes: Tensor, scale: Tensor, name: str = "") -> int:
        """Checks a moment's stored tensors; returns the element count they hold room for."""
        _check(codes, name + "codes", torch.uint8)
        _check(scale, name + "scale", enc.scale_dtype)
        return codes.numel() * (2 if enc.bits == 4 else 1)

    def decode(self, enc, codes: Tensor, scale: Tensor, signed: bool, lo: int, hi: int,
               out: Tensor | None = None) -> Tensor:  # fmt: skip
        """Elements ``lo:hi`` as float32 (``out``, or a new tensor): ``Blockwise.decode``."""
        enc = self._encoding(enc)
        room = self._stored(enc, codes, scale)
        b = enc.block_size
        if lo % b or not 0 <= lo <= hi or hi > room or -(-hi // b) > scale.numel():
            raise ValueError(f"bad range {lo}:{hi} for {room} stored elements (block {b})")
        if out is None:
            out = torch.empty(hi - lo, dtype=torch.float32)
        _check(out, "out", torch.float32, hi - lo)
        q, _ = self.tables(enc, signed)
        self.lib.ok_decode(enc.bits, b, codes.data_ptr(), scale.data_ptr(), lo, hi, q.data_ptr(), out.data_ptr(),
                           torch.get_num_threads())  # fmt: skip
        return out

    def encode(self, enc, x: Tensor, signed: bool, codes: Tensor, scale: Tensor, lo: int = 0) -> None:
        """Stores float32 ``x`` (1-D) at element ``lo``: ``Blockwise.encode_``."""
        enc = self._encoding(enc)
        room = self._stored(enc, codes, scale)
        _check(x, "x", torch.float32)
        n, b = x.numel(), enc.block_size
        if lo % b or lo < 0 or lo + n > room or lo // b + -(-n // b) > scale.numel():
            raise ValueError(f"cannot store {n} elements at {lo} in {room} stored elements (block {b})")
        _, bucket = self.tables(enc, signed)
        self.lib.ok_encode(enc.bits, b, x.data_ptr(), n, lo, bucket.data_ptr(), codes.data_ptr(),
                           scale.data_ptr(), torch.get_num_threads())  # fmt: skip

    def adam_(self, enc, param: Tensor, grad: Tensor, m_codes: Tensor, m_scale: Tensor, v_codes: Tensor,
              v_scale: Tensor, *, max_codes: Tensor | None = None, max_scale: Tensor | None = None,
              **hyper) -> None:  # fmt: skip
        """One fused Adam(W) step in place on ``param`` and its moments (see the module)."""
        amsgrad = max_codes is not None or max_scale is not None
        self.adam_multi_(enc, [param], [grad], [m_codes], [m_scale], [v_codes], [v_scale],
                         max_codes=[max_codes] if amsgrad else None, max_scales=[max_scale] if amsgrad else None,
                         **hyper)  # fmt: skip

    def adam_multi_(self, enc, params, grads, m_codes, m_scales, v_codes, v_scales, *, lr: float, beta1: float,
                    beta2: float, eps: float, weight_decay: float, decoupled: bool, bias_correction1: float,
                    bias_correction2_sqrt: float, maximize: bool = False, max_codes=None, max_scales=None) -> None:  # fmt: skip
        """:meth:`adam_` on lists of tensors (one hyperparameter set) in one call: one
        OpenMP loop over the blocks of all of them (no per-tensor fork or Python cost)."""
        enc = self._encoding(enc)
        if enc.block_size > MAX_FUSED_BLOCK:
            raise ValueError(f"the fused step takes blocks up to {MAX_FUSED_BLOCK}, not {enc.block_size}")
        amsgrad = max_codes is not None or max_scales is not None
        lists = [params, grads, m_codes, m_scales, v_codes, v_scales]
        if amsgrad:
            if max_codes is None or max_scales is None:
                raise ValueError("amsgrad needs both max_codes and max_scales")
            lists += [max_codes, max_scales]
        count = len(params)
        if any(len(x) != count for x in lists):
            raise ValueError("params, grads and the moments' lists must have the same length")
        f32, u8, sd = torch.float32, torch.uint8, enc.scale_dtype
        ncodes, sizes = (lambda n: -(-n // 2)) if enc.bits == 4 else (lambda n: n), []
        for j, p in enumerate(params):
            _check(p, "param", f32)
            n = p.numel()
            _check(grads[j], "grad", f32, n)
            nb = -(-n // enc.block_size)
            for codes, scale, name in zip(lists[2::2], lists[3::2], ("m_", "v_", "max_")):
                _check(codes[j], name + "codes", u8, ncodes(n))
                _check(scale[j], name + "scale", sd, nb)
            sizes.append(n)
        if count == 0:
            return
        ptrs = [(_P * count)(*[t.data_ptr() for t in lst]) for lst in lists]
        if not amsgrad:
            ptrs += [None, None]
        qs, bucket_s = self.tables(enc, True)
        qu, bucket_u = self.tables(enc, False)
        hp = _HP(float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), float(bias_correction1),
                 float(bias_correction2_sqrt))  # fmt: skip
        flags = (1 if decoupled else 0) | (2 if maximize else 0) | (4 if amsgrad else 0)
        self.lib.ok_adam_multi(enc.bits, enc.block_size, count, ptrs[0], ptrs[1], (_I64 * count)(*sizes), *ptrs[2:],
                               qs.data_ptr(), bucket_s.data_ptr(), qu.data_ptr(), bucket_u.data_ptr(),
                               ctypes.byref(hp), flags, torch.get_num_threads())  # fmt: skip

    def adam_8bit_(self, param: Tensor, grad: Tensor, m_codes: Tensor, m_scale: Tensor, v_codes: Tensor,
                   v_scale: Tensor, **kwargs) -> None:  # fmt: skip
        """:meth:`adam_` with the ``"8bit"`` encoding (block 256)."""
        self.adam_("8bit", param, grad, m_codes, m_scale, v_codes, v_scale, **kwargs)


_lock = threading.Lock()


@functools.cache
def _load() -> Kernels | None:
    cc = _compiler()
    if cc is None:
        warnings.warn("optimkit: no C compiler found (set CC); low-bit state uses torch ops", stacklevel=3)
        return None
    try:
        path = _build(cc)
        return Kernels(ctypes.CDLL(str(path)), path)
    except Exception as exc:  # noqa: BLE001 -- any failure means: no kernels
        warnings.warn(f"optimkit: compiling the low-bit kernels failed; using torch ops ({exc})", stacklevel=3)
        return None


def load() -> Kernels | None:
    """The compiled kernels, or None (``OPTIMKIT_NO_KERNELS=1``, no compiler, or it failed)."""
    if os.environ.get("OPTIMKIT_NO_KERNELS", "") not in ("", "0"):
        return None
    with _lock:
        return _load()
