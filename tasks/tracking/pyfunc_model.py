"""The MLflow pyfunc for every rnnflow model, logged as "model from code" (nothing pickled).

MLflow saves this file beside the checkpoint; loading it rebuilds the module from the config
and `state_dict` stored in the checkpoint (`torch.load(weights_only=True)`).

Input: a batch-first numpy array — `B x L` int64 token ids for token models (0 = trailing
padding for classifiers), or `B x L x D` float32 features for the forecaster. Output: the model's
output made batch-first — class logits `B x C`, next-char logits `B x L x V`, or forecasts
`B x L x H x D`.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch


class RecurrentPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from rnn_core.models import build_model

        checkpoint = torch.load(context.artifacts["checkpoint"], weights_only=True, map_location="cpu")
        self.model = build_model(checkpoint["config"])
        self.model.load_state_dict(checkpoint["model_state"])
        self.model.eval()
        # Token classifiers pad with id 0 (trailing); a character LM has no padding.
        self.lengths_from_padding = checkpoint["config"].get("kind") == "classifier"

    def predict(self, context, model_input, params=None):
        x = torch.as_tensor(np.asarray(model_input))
        with torch.no_grad():
            if x.dtype in (torch.int32, torch.int64):
                lengths = None
                if self.lengths_from_padding:
                    lengths = (x != 0).sum(dim=1).clamp(min=1)  # trailing padding: B
                out, _ = self.model(x.long().t().contiguous(), lengths=lengths)
            else:
                out, _ = self.model(x.float().transpose(0, 1).contiguous())
        # Sequence outputs are time-major (L x B x ...): give them back batch-first.
        if out.dim() >= 3:
            out = out.transpose(0, 1)
        return out.numpy()


mlflow.models.set_model(RecurrentPyfunc())
