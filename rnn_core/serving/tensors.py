"""No serving spec: the model's own tensors, batch-first (what every rnnflow model took before
serving specs, and what the diagnostics' models still take).

Input: `B x L` int64 token ids for token models (0 = trailing padding for classifiers) or
`B x L x D` float32 features. Output: the model's output made batch-first — class logits
`B x C`, next-char logits `B x L x V`, or forecasts `B x L x H x D`.
"""

from __future__ import annotations

import numpy as np
import torch

from rnn_core.serving import Server, ServingInputError, register


@register
class TensorServer(Server):
    kind = "tensor"

    def __init__(self, model, spec):
        super().__init__(model, spec)
        cfg = model.config
        # Token classifiers pad with id 0 (trailing); a character LM has no padding.
        self.lengths_from_padding = cfg.kind == "classifier"

    def example(self):
        cfg = self.model.config
        if getattr(cfg, "vocab_size", None):
            return np.array([[2, 3, 4, 0]], dtype=np.int64)
        width = cfg.input_size if cfg.kind == "classifier" else cfg.num_flows + cfg.num_covariates
        return np.zeros((1, 4, width), dtype=np.float32)

    @torch.no_grad()
    def predict(self, data, params=None) -> np.ndarray:
        self.resolve_params(params)
        if hasattr(data, "to_numpy"):
            data = data.to_numpy()
        try:
            x = torch.as_tensor(np.asarray(data))
        except (TypeError, ValueError) as err:
            raise ServingInputError(f"expected a numeric array: {err}") from None
        if x.dim() < 2:
            raise ServingInputError(f"expected batch-first B x L (ids) or B x L x D arrays, got "
                                    f"shape {tuple(x.shape)}")
        if x.dtype in (torch.int32, torch.int64):
            lengths = (x != 0).sum(dim=1).clamp(min=1) if self.lengths_from_padding else None
            out, _ = self.model(x.long().t().contiguous(), lengths=lengths)
        else:
            if not torch.isfinite(x).all():
                raise ServingInputError("input contains NaN or infinite values")
            try:
                out, _ = self.model(x.float().transpose(0, 1).contiguous())
            except ValueError as err:  # e.g. the forecaster's shape check
                raise ServingInputError(str(err)) from None
        return (out.transpose(0, 1) if out.dim() >= 3 else out).numpy()
