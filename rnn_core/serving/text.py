"""AG News served from raw text: the training's cleaner, tokenizer and vocabulary, then the
label name and the class probabilities.

    spec = text_classifier_spec(vocab.tokens, vocab_size=12000, pad_id=0, unk_id=1,
                                classes=CLASS_NAMES, text="full", max_length=100)
    server.predict({"title": ["Oil prices fall"], "description": ["Crude slid 3%..."]})
    # {"label": ["Business"], "label_id": [2], "probability": [0.91], "World": [...], ...}

Rows are cleaned with `rnn_core.datasets.ag_news.clean_text` and tokenised with its `tokenize`,
exactly as the prepare step did; tokens outside the first `vocab_size` entries become `<unk>`
and the text is cut to `max_length` tokens, as the data phase did. Texts are batched by exact
length, so no row is padded and a row's prediction never depends on the other rows of a request:
a masked model sees what it saw in training; an unmasked post- or pre-padded one sees its text as
a batch of one would show it (its test figure was measured in padded batches, as it trained).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from rnn_core.datasets.ag_news import clean_text, tokenize
from rnn_core.serving import (
    Column,
    Server,
    ServingInputError,
    as_columns,
    is_missing,
    register,
    require,
)

BATCH = 256  # texts per forward pass


def text_classifier_spec(tokens: list[str], vocab_size: int, pad_id: int, unk_id: int,
                         classes: list[str] | tuple[str, ...], text: str,
                         max_length: int | None) -> dict[str, Any]:
    """The spec of an AG News classifier. `text`: "title" (title only) or "full" (title +
    description); `tokens`: the prepared vocabulary, id order, of which `vocab_size` are used."""
    if text not in ("title", "full"):
        raise ValueError(f"text must be 'title' or 'full', got {text!r}")
    return {"kind": "text_classifier", "tokens": list(tokens[:vocab_size]), "pad_id": pad_id,
            "unk_id": unk_id, "classes": list(classes), "text": text, "max_length": max_length,
            "cleaner": "rnn_core.datasets.ag_news.clean_text + tokenize"}


@register
class TextClassifier(Server):
    kind = "text_classifier"

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.index = {t: i for i, t in enumerate(spec["tokens"])}
        self.classes = list(spec["classes"])
        self.inputs = [Column("title", "string", doc="headline, raw as published"),
                       Column("description", "string", required=False,
                              doc="first lines of the article (used when the model reads them)")]
        self.outputs = [Column("label", "string"), Column("label_id", "long"),
                        Column("probability", "double"),
                        *[Column(c, "double") for c in self.classes]]

    def example(self) -> dict[str, list]:
        return {"title": ["Stocks rally as oil prices fall", "Striker scores twice in final"],
                "description": ["Wall Street rose on Tuesday as crude slid.",
                                "The champions won 3-1 on Sunday."]}

    def encode(self, title: Any, description: Any, row: int) -> list[int]:
        """One row -> token ids, as the prepare step and the data phase made them."""
        if is_missing(title):
            title = ""
        if not isinstance(title, str) or not (is_missing(description)
                                              or isinstance(description, str)):
            raise ServingInputError(f"row {row}: title and description must be text")
        parts = [clean_text(title)]
        if self.spec["text"] == "full" and not is_missing(description):
            parts.append(clean_text(description))
        ids = [self.index.get(t, self.spec["unk_id"])
               for t in tokenize(" ".join(p for p in parts if p))]
        if not ids:
            raise ServingInputError(f"row {row}: the text is empty after cleaning (give a title)")
        return ids[: self.spec["max_length"]] if self.spec["max_length"] else ids

    @torch.no_grad()
    def predict(self, data, params=None) -> dict[str, list]:
        self.resolve_params(params)
        columns = as_columns(data, ["title", "description"])
        rows = require(columns, self)
        titles = columns["title"]
        descriptions = columns.get("description", [None] * rows)
        ids = [self.encode(t, d, i) for i, (t, d) in enumerate(zip(titles, descriptions))]
        probs = np.zeros((rows, len(self.classes)), dtype=np.float64)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, seq in enumerate(ids):
            by_length[len(seq)].append(i)
        for rows_of_length in by_length.values():  # same length: no padding, no mask
            for start in range(0, len(rows_of_length), BATCH):
                chunk = rows_of_length[start : start + BATCH]
                x = torch.tensor([ids[i] for i in chunk], dtype=torch.long).t()  # L x B
                logits, _ = self.model(x)
                probs[chunk] = torch.softmax(logits.float(), dim=-1).double().numpy()
        best = probs.argmax(axis=1)
        return {"label": [self.classes[k] for k in best], "label_id": best.tolist(),
                "probability": probs[np.arange(rows), best].tolist(),
                **{c: probs[:, k].tolist() for k, c in enumerate(self.classes)}}
