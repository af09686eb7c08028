"""``compile=True``: the optimizer's one update rule under ``torch.compile``.

Why it exists. The exact path (:mod:`.packed`) runs the rule op by op, as torch's for-loop
does: every op is one pass over memory (Adam makes about ten), which is what makes its numbers
equal torch's bit for bit. ``torch.compile`` turns the same rule into one fused loop that reads
each tensor once and writes it once -- for the optimizers torch has no fused kernel for
(RMSprop, Adadelta, Adamax, NAdam, RAdam, ASGD, Rprop) the only way to such a loop. The price
is exactness: inductor fuses ``a * b + c`` into FMAs and folds the scalars differently, so
results differ from the exact path in the last bits (within 1e-6 relative; measured and tested
in ``tests/test_compile.py``). That is why this path is opt-in.

What is compiled. The rule itself -- ``adam_``, ``rmsprop_``, ... the very functions the exact
path runs; nothing here restates an update. Three things make the rule one graph:

* The scalars derived from the step (bias corrections, NAdam's momentum schedule, ASGD's eta
  and mu) come from ``ops.item`` / ``select`` / ``at_least``, which return the host
  number on the exact path and keep a 0-d float64 tensor while torch.compile traces.
* Numeric hyperparameters are passed as 0-d float64 tensors (a Python float's precision), so
  a scheduler changing ``lr``, ``betas`` or ``momentum`` every step (OneCycleLR) does not
  recompile. The rules branch on ``weight_decay`` and ``momentum`` through ``ops.taken``:
  they come as tensors only when positive, so only a change to or from zero compiles anew.
  (A tensor ``alpha`` of an out-of-place ``add`` would be baked into the graph by dynamo:
  the rules use ``ops.add_scaled``.)
* Tensors are fed as flat 1-D pieces with a dynamic size (``dynamic=True``): the flat
  layout's packs of small parameters and every big parameter whole, not chunked -- the fused
  loop makes no temporaries, so chunks would only add calls (measured on a 32M tensor: one
  call is fastest; 512K-1M-element chunks cost 15-25 % more on one thread, and several times
  more on two threads of a busy machine, where every call is an OpenMP region). A handful
  of graphs per rule, dtype and structural option (amsgrad, centered, ...) serves every
  size: one for packs, one per number of dimensions of the parameters (dynamo guards on the
  base of their flat views) and one for a one-element tensor (dynamo specializes size 1).

And one inductor pass makes the loop fast: ``_store_scalars`` below (measured: Adam's
compiled loop is 4x slower without it).

Which tensors. Those the flat layout could pack: plain CPU tensors of float32/float64,
contiguous, with a dense gradient of the same dtype and state alike (a DTensor's local shard
counts as plain). Everything else -- complex, bfloat16/float16 (inductor keeps intermediates
in float32 and rounds once, where torch rounds after every op: a bfloat16 ulp, ~4e-3, apart),
other devices, non-contiguous tensors -- takes the exact rule, in the same step. Should
dynamo hit its recompile limit, it runs the rule uncompiled: correct, just not faster.

Caching. Compiled graphs live with the rule's code object for the life of the process: every
optimizer instance using a rule shares them. Across processes, inductor's FX graph cache and
AOTAutograd's cache (on by default, on disk under ``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_<user>``) make a second run's first step skip code generation and the
C++ compiler: a cold first Adam step takes seconds, a warm one well under a second.
``compile_seconds`` (an attribute of a ``compile=True`` optimizer, read from this executor's
``seconds``) adds up the time of the steps that compiled.

The optimizer state is the exact path's, in torch's format: ``state_dict()``/``load_state_dict``
work unchanged, and a state dict moves freely between ``compile=True`` and the exact path.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .job import Job
from .packed import Packed, Run, packable

__all__ = ["Compiled", "compiled_rule"]

#: Hyperparameters the rules branch on (``if taken(weight_decay != 0)``): a tensor only when
#: positive (the branch is taken), else the number itself, decided when the graph is made.
BRANCH_HYPER = frozenset({"weight_decay", "momentum"})

_COMPILED: dict[Callable, Callable] = {}


def _store_scalars(graph: torch.fx.Graph) -> None:
    """Compute the 0-d scalars once per call, not once per vector of the loop.

    Inductor inlines a 0-d expression (``1 - beta2 ** step``, ``lr / bias_correction1``, ...)
    into every loop that reads it, and the C++ loop cannot hoist it (libm calls keep errno;
    the pointers may alias): Adam's fused loop then spends most of its time in ``pow`` (4x
    slower, measured). A 0-d value that feeds a larger tensor is passed through
    ``as_strided`` -- a no-op view, but one inductor only makes of a buffer: the scalar is
    stored once and the loop loads it.
    """
    for node in list(graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, Tensor) or val.dim() != 0:
            continue
        users = [u for u in node.users if isinstance(u.meta.get("val"), Tensor) and u.meta["val"].dim()]
        if users:
            with graph.inserting_after(node):
                stored = graph.call_function(torch.ops.aten.as_strided.default, (node, [], []))
            stored.meta["val"] = val
            for user in users:
                user.replace_input_with(node, stored)


@functools.cache
def _options() -> dict[str, Any]:
    # Imported on first use: torch._inductor takes a second to import.
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class StoreScalars(CustomGraphPass):
        __call__ = staticmethod(_store_scalars)

        def uuid(self) -> Any:  # part of the compile cache's key
            return get_hash_for_files((__file__,))

    return {"post_grad_custom_post_pass": StoreScalars()}


def compiled_rule(fn: Callable) -> Callable:
    """``torch.compile(fn)``, once per rule function for the process."""
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, dynamic=True, options=_options())
    return compiled


def _as_tensor(key: str, v: Any) -> Any:
    if type(v) in (float, int) and (key not in BRANCH_HYPER or v > 0):
        return torch.tensor(v, dtype=torch.float64)
    if isinstance(v, tuple):
        return tuple(_as_tensor(key, x) for x in v)
    return v


def _as_tensors(hyper: dict[str, Any]) -> dict[str, Any]:
    """Numeric hyperparameters (also inside tuples, like ``betas``) as 0-d float64 tensors (a
    Python float's precision), so that new values need no new graph; bools, tensors and a
    non-positive branch hyperparameter kept."""
    return {k: _as_tensor(k, v) for k, v in hyper.items()}


class Compiled:
    """The job's rule under ``torch.compile``, fed by the packed layout (see the module docstring).

    Attributes:
        seconds: time spent in the steps that compiled a graph (cold start included).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        # The fused loop makes no temporaries: big tensors go whole, not in chunks.
        self._packed = Packed(run=self._run, chunked=False)

    def step(self, job: Job) -> None:
        start = time.perf_counter()  # before compiled_rule: its first call imports inductor (~2 s)
        graphs = _graph_count()
        self._packed.step(job)
        if _graph_count() != graphs:
            self.seconds += time.perf_counter() - start

    @staticmethod
    def _run(job: Job) -> Run:
        rule, hyper = job.rule, job.hyper
        exact = rule.fn
        fn = compiled_rule(exact)
        tensors = _as_tensors(hyper)

        def run(p: Tensor, g: Tensor, state: dict[str, Any], **_: Any) -> None:
            if not packable(rule, p, g, state):
                exact(p, g, state, **hyper)
                return
            # 1-D views: tensors of every size share a graph. Keys the rule creates (SGD's
            # momentum buffer) come back flat and are given the parameter's shape. Detached: a
            # Parameter's view would require grad, and dynamo guards on that.
            flat_state = {k: v if k in rule.scalar_keys else v.view(-1) for k, v in state.items()}
            fn(p.detach().view(-1), g.detach().view(-1), flat_state, **tensors)
            for k, v in flat_state.items():
                if k not in state:
                    state[k] = v.view(p.shape)

        return run


def _graph_count() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]
