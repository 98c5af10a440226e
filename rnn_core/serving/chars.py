"""Character models served from a prompt: the corpus' cleaner, its vocabulary, then sampling.

    spec = char_lm_spec(vocab, corpus="trump")
    server.predict({"prompt": ["We are going to "]}, {"length": 200, "temperature": 0.8,
                                                       "seed": 1})
    # {"prompt": [...], "text": ["...200 generated characters..."]}

The prompt is cleaned with the corpus' cleaner (rnn_core.datasets.corpus.CLEANERS: Trump's ASCII
alphabet, Molière's NFC text) and must then use the model's characters only. An empty prompt
starts from the zero state, fed a newline as the samples in the run's artifacts do. `mode`
"greedy" takes the most likely character each step; "sample" draws from softmax(logits / T),
seeded, so the same prompt, params and model give the same text.
"""

from __future__ import annotations

from typing import Any

import torch

from rnn_core.generation import decode, generate
from rnn_core.serving import (
    Column,
    Param,
    Server,
    ServingInputError,
    as_columns,
    is_missing,
    register,
    require,
)

MAX_LENGTH = 5000  # characters per request row


def char_lm_spec(vocab: list[str], corpus: str | None = None) -> dict[str, Any]:
    """Spec of a character model: `vocab` (id -> character), `corpus` names the cleaner."""
    start = "\n" if "\n" in vocab else " "
    return {"kind": "char_lm", "vocab": list(vocab), "cleaner": corpus,
            "start_id": vocab.index(start) if start in vocab else 0}


@register
class CharGenerator(Server):
    kind = "char_lm"
    inputs = (Column("prompt", "string", doc="text to continue (may be empty)"),)
    outputs = (Column("prompt", "string"), Column("text", "string"))
    params = (Param("length", "long", 200, "characters to generate, 1..5000"),
              Param("temperature", "double", 1.0, "sampling temperature, > 0"),
              Param("seed", "long", 0, "random seed of the sampling"),
              Param("mode", "string", "sample", "sample or greedy"))

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.vocab = list(spec["vocab"])
        self.index = {c: i for i, c in enumerate(self.vocab)}

    def example(self) -> dict[str, list]:
        """A prompt in the model's characters (the corpus' usual one when it fits)."""
        for prompt in ("We are going to ", "SGANARELLE.\n\n", "the ", ""):
            if all(c in self.index for c in prompt):
                return {"prompt": [prompt]}
        return {"prompt": [""]}

    def clean(self, prompt: str) -> str:
        corpus = self.spec.get("cleaner")
        if not corpus:
            return prompt
        from rnn_core.datasets.corpus import CLEANERS

        return CLEANERS[corpus](prompt)[0]

    def encode(self, prompt: Any, row: int) -> tuple[str, list[int]]:
        if is_missing(prompt):
            prompt = ""
        if not isinstance(prompt, str):
            raise ServingInputError(f"row {row}: prompt must be text")
        text = self.clean(prompt)
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise ServingInputError(f"row {row}: characters {''.join(unknown)!r} are not in this "
                                    f"model's {len(self.vocab)}-character vocabulary")
        return text, [self.index[c] for c in text]

    def check_params(self, params) -> dict[str, Any]:
        p = self.resolve_params(params)
        try:
            length, temperature, seed = int(p["length"]), float(p["temperature"]), int(p["seed"])
        except (TypeError, ValueError):
            raise ServingInputError(f"length and seed must be whole numbers, temperature a "
                                    f"number: got {p}") from None
        if not 1 <= length <= MAX_LENGTH:
            raise ServingInputError(f"length must lie in 1..{MAX_LENGTH}, got {length}")
        if not temperature > 0 or temperature == float("inf"):
            raise ServingInputError(f"temperature must be a finite number > 0, got {temperature}")
        if p["mode"] not in ("sample", "greedy"):
            raise ServingInputError(f"mode must be 'sample' or 'greedy', got {p['mode']!r}")
        return {"length": length, "temperature": temperature, "seed": seed, "mode": p["mode"]}

    @torch.no_grad()
    def predict(self, data, params=None) -> dict[str, list]:
        p = self.check_params(params)
        columns = as_columns(data, ["prompt"])
        rows = require(columns, self)
        prompts, texts = [], []
        for row in range(rows):
            prompt, ids = self.encode(columns["prompt"][row], row)
            generator = torch.Generator().manual_seed(p["seed"])
            out = generate(self.model, ids or None, p["length"], mode=p["mode"],
                           temperature=p["temperature"], generator=generator,
                           start_id=int(self.spec.get("start_id", 0)))
            prompts.append(prompt)
            texts.append(decode(out, self.vocab))
        return {"prompt": prompts, "text": texts}
