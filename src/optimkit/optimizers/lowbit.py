r"""The low-bit optimizers by the names users know: torchao's ``AdamW8bit``, ``AdamW4bit``,
``AdamWFp8``, ``Adam8bit``, ``Adam4bit``, ``AdamFp8`` (same signatures) and bitsandbytes'
``Lion8bit`` and ``AdEMAMix8bit``.

Each is its optimizer with a ``state_encoding`` (:mod:`optimkit.execution.encodings`): the
same rule, the moments stored in 8 or 4 bits or FP8 between steps. Any other elementwise
optimizer takes the same keyword: ``optimkit.RMSprop(params, state_encoding="8bit")``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .adam import Adam, AdamW
from .ademamix import AdEMAMix
from .lion import Lion

__all__ = ["AdamW8bit", "AdamW4bit", "AdamWFp8", "Adam8bit", "Adam4bit", "AdamFp8", "Lion8bit", "AdEMAMix8bit"]


def _torchao_class(base: type, encoding: str, block: int, weight_decay: float) -> type:
    """``base`` with torchao's signature and ``state_encoding=encoding``."""
    name = f"{base.__name__}{ {'8bit': '8bit', '4bit': '4bit', 'fp8': 'Fp8'}[encoding] }"

    def __init__(self: Any, params: Any, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = weight_decay, amsgrad: bool = False, *,
                 block_size: int = block, bf16_stochastic_round: bool = False) -> None:  # fmt: skip
        base.__init__(self, params, lr, betas, eps, weight_decay, amsgrad)
        self._set_encoding(state_encoding=encoding, block_size=block_size, bf16_stochastic_round=bf16_stochastic_round)

    doc = (
        f"{base.__name__} with {encoding} moments (``state_encoding={encoding!r}``), with torchao's "
        f"``{name}`` signature: ``{name}(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, "
        f"weight_decay={weight_decay}, amsgrad=False, *, block_size={block}, bf16_stochastic_round=False)``.\n\n"
        "    The update is :class:`optimkit." + base.__name__ + "`'s rule, run in float32 on moments decoded a "
        "chunk at a time (see :mod:`optimkit.execution.encoded`); parameters under 4,096 elements keep "
        "float32 moments. ``bf16_stochastic_round=True`` rounds bfloat16 parameters stochastically."
    )
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__, "configs": ({},)})


AdamW8bit = _torchao_class(AdamW, "8bit", 256, 1e-2)
AdamW4bit = _torchao_class(AdamW, "4bit", 128, 1e-2)
AdamWFp8 = _torchao_class(AdamW, "fp8", 256, 1e-2)
Adam8bit = _torchao_class(Adam, "8bit", 256, 0.0)
Adam4bit = _torchao_class(Adam, "4bit", 128, 0.0)
AdamFp8 = _torchao_class(Adam, "fp8", 256, 0.0)


def _check_bnb(min_8bit_size: int, percentile_clipping: int, block_wise: bool, is_paged: bool, args: Any) -> None:
    """bitsandbytes' options optimkit does not have, refused by name rather than ignored."""
    if args is not None:
        raise ValueError("args (bitsandbytes' GlobalOptimManager config) is not supported")
    if min_8bit_size != 4096:
        raise ValueError("min_8bit_size: optimkit keeps tensors under 4,096 elements in full precision; "
                         "other sizes are not supported")  # fmt: skip
    if percentile_clipping != 100:
        raise ValueError("percentile_clipping is not supported (clip gradients before the step instead)")
    if not block_wise:
        raise ValueError("block_wise=False is not supported: optimkit's 8-bit state is blockwise")
    if is_paged:
        raise ValueError("is_paged=True is CUDA's paged memory; not supported")


class Lion8bit(Lion):
    r"""Lion with 8-bit momentum (``state_encoding="8bit"``), with bitsandbytes' ``Lion8bit``
    signature. The update is :class:`optimkit.Lion`'s rule. Options bitsandbytes has and
    optimkit does not (``percentile_clipping``, ``is_paged``...) are refused by name."""

    configs = ({},)

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, args: Any = None, min_8bit_size: int = 4096,
                 percentile_clipping: int = 100, block_wise: bool = True, is_paged: bool = False) -> None:  # fmt: skip
        _check_bnb(min_8bit_size, percentile_clipping, block_wise, is_paged, args)
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay)
        self._set_encoding(state_encoding="8bit")


class AdEMAMix8bit(AdEMAMix):
    r"""AdEMAMix with 8-bit moments (``state_encoding="8bit"``), with bitsandbytes'
    ``AdEMAMix8bit`` signature. The update is :class:`optimkit.AdEMAMix`'s rule."""

    configs = ({},)

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 5.0, t_alpha: int | None = None, t_beta3: int | None = None, eps: float = 1e-8,
                 weight_decay: float = 1e-2, min_8bit_size: int = 4096, is_paged: bool = False) -> None:  # fmt: skip
        _check_bnb(min_8bit_size, 100, True, is_paged, None)
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                         weight_decay=weight_decay)  # fmt: skip
        self._set_encoding(state_encoding="8bit")
