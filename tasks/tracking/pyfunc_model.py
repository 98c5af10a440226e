"""The MLflow pyfunc for every rnnflow model, logged as "model from code" (nothing pickled).

MLflow saves this file in the model's `code/` folder next to a copy of `rnn_core` (the model's
`code_paths`), so loading needs only torch, numpy and mlflow: never this repository. Loading
rebuilds the module from the checkpoint's config and `state_dict` (`torch.load(weights_only=
True)`) and the serving spec saved beside it (`rnn_core.serving.load_server`).

Input and output are the raw forms of `rnn_core.serving` for the model's kind: a table of
`title`/`description` texts, of flows in passengers (+ `start`), or of `prompt`s with params;
models without a serving spec take batch-first arrays. Bad input is an MlflowException with
INVALID_PARAMETER_VALUE: HTTP 400 and one sentence under `mlflow models serve`.

This file imports nothing from `tasks` (it runs where `tasks` does not exist).
"""

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class RecurrentPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from rnn_core.serving import load_server  # from the model's code/ (code_paths)

        self.server = load_server(context.artifacts["checkpoint"],
                                  context.artifacts.get("serving"))

    # The hint only tells MLflow not to infer a schema from it: the logged signature, made from
    # the serving spec, describes the input (a DataFrame of raw columns, or an array).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from rnn_core.serving import ServingInputError

        try:
            out = self.server.predict(model_input, params)
        except ServingInputError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        if isinstance(out, dict):  # columns -> a DataFrame: records over HTTP, a CSV locally
            return pd.DataFrame(out)
        return out


mlflow.models.set_model(RecurrentPyfunc())
