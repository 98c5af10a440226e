"""Greedy and sampled decoding for any model with the char_lm contract.

    ids = generate(model, encode("To be", vocab), length=200, mode="sample", temperature=0.8,
                   top_k=10, generator=torch.Generator().manual_seed(0))
    print(decode(ids, vocab))

The model must map L x B ids and a state to (L x B x V logits, state), as
`models.CharLanguageModel` does. The prompt warms the state; without a prompt, generation starts
from the zero state by feeding `start_id` (e.g. a newline or a start-of-text character).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def encode(text: str, vocab: Sequence[str]) -> list[int]:
    """Characters -> ids in `vocab` (a list of characters); unknown characters are an error."""
    index = {c: i for i, c in enumerate(vocab)}
    try:
        return [index[c] for c in text]
    except KeyError as err:
        raise ValueError(f"character {err.args[0]!r} is not in the vocabulary") from None


def decode(ids: Sequence[int], vocab: Sequence[str]) -> str:
    return "".join(vocab[i] for i in ids)


def next_id(
    logits: torch.Tensor,
    mode: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick one id from V logits: argmax, or a sample from softmax(logits / T) over the top k."""
    if mode == "greedy":
        return int(logits.argmax().item())
    if mode != "sample":
        raise ValueError(f"unknown mode {mode!r}: expected greedy or sample")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # Sample on the CPU in float64 so a CPU generator works for a CUDA model and results match.
    logits = logits.detach().double().cpu() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Sequence[int] | None,
    length: int,
    mode: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    start_id: int = 0,
) -> list[int]:
    """`length` new ids after the prompt (the prompt itself is not returned).

    Without a prompt (None or empty) the state starts at zero and `start_id` is fed first.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        # Warm up: run the whole prompt at once, keep the last step's logits and the state.
        context = list(prompt_ids) if prompt_ids else [start_id]
        x = torch.tensor(context, dtype=torch.long, device=device).view(-1, 1)  # L x 1
        logits, state = model(x)
        out: list[int] = []
        for i in range(length):
            out.append(next_id(logits[-1, 0], mode, temperature, top_k, generator))
            if i == length - 1:
                break  # no need to run the model on the last pick
            x = torch.tensor([[out[-1]]], dtype=torch.long, device=device)  # 1 x 1
            logits, state = model(x, state=state)
        return out
    finally:
        model.train(was_training)
