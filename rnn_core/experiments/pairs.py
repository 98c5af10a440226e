"""Backend pairs: one configuration trained twice from the same seed, once on each backend.

An experiment Config lists in `backend_twins` the configurations that also train on the other
backend; the twin is named after the backend it runs on, right after its configuration:

    plan  ["gru-10st-in", "lstm8"]  with backend_twins = ["lstm8"], model.backend = "fused"
      ->  ["gru-10st-in", "lstm8", "lstm8-scratch"]

A listed configuration that the profile does not plan has no twin (a profile that narrows the
grid needs no change to `backend_twins`).

The course's own model (metro "course-*": rnn_core.course_models.RNN, hand-written) pairs with the
torch.nn model it equals at init: "course-10st-in-fused" (nn.RNN + Linear, same weights).

Both runs read the same data, start from the same weights (the runner seeds before the model is
built; both backends initialise their parameters in torch.nn's order) and see the same batches,
so any difference in their test metrics comes from float arithmetic done in another order and
amplified by training. `rnn_core.comparisons.backend_agreement` turns the pair into rows with a
tolerance per metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# rnn_core.layers.BACKENDS, spelt here so that this module (and rnn_core.comparisons, which names
# pairs with it) imports no torch; tests check the two agree.
BACKENDS = ("scratch", "fused")


def other_backend(backend: str) -> str:
    """The backend a twin runs on: the one its configuration does not."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return "scratch" if backend == "fused" else "fused"


def twin_name(name: str, backend: str) -> str:
    return f"{name}-{backend}"


def split_twin(name: str) -> tuple[str, str | None]:
    """"lstm8-scratch" -> ("lstm8", "scratch"); a name without a backend suffix -> (name, None)."""
    for backend in BACKENDS:
        suffix = f"-{backend}"
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], backend
    return name, None


def with_twins(experiment: str, names: Iterable[str], twins: Iterable[str],
               backend_of: Callable[[str], str]) -> list[str]:
    """`names` with each twin inserted right after its configuration; `backend_of(name)` is the
    backend the configuration itself runs on. A twin whose configuration is not planned is left
    out (narrowing a grid in a profile needs no change to `backend_twins`); the experiment checks
    that each twin is a name it knows."""
    names, twins = list(names), set(twins)
    twinned = [n for n in twins if split_twin(n)[1] is not None]
    if twinned:
        raise ValueError(f"{experiment}: backend_twins {sorted(twinned)} already name a backend; "
                         "list the configuration itself")
    out = []
    for name in names:
        out.append(name)
        if name in twins:
            out.append(twin_name(name, other_backend(backend_of(name))))
    return out
