"""sentiment: VADER compound score and label for each text, with dynamic batching.

VADER (the `vaderSentiment` package) ships its lexicons inside the package, so nothing is read
from the network. Texts longer than `max_chars` are cut before scoring; an empty text is neutral
with score 0. The label is `neutral` when the compound score lies within +-`neutral_band`.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.max_chars = max(1, int(params.get("max_chars") or 16384))
        self.neutral_band = abs(float(params.get("neutral_band") or 0.05))
        self.analyzer = SentimentIntensityAnalyzer()

    def _score(self, raw):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        text = text[: self.max_chars]
        if not text.strip():
            return "neutral", 0.0
        score = float(self.analyzer.polarity_scores(text)["compound"])
        score = min(1.0, max(-1.0, score))
        if score >= self.neutral_band:
            return "positive", score
        if score <= -self.neutral_band:
            return "negative", score
        return "neutral", score

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
                rows = raw.reshape(-1)
                scored = [self._score(text) for text in rows]
                labels = np.array([[label.encode()] for label, _ in scored], dtype=np.object_)
                scores = np.array([[score] for _, score in scored], dtype=np.float32)
                labels = labels.reshape(len(rows), 1)
                scores = scores.reshape(len(rows), 1)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("label", labels),
                            pb_utils.Tensor("score", scores),
                        ]
                    )
                )
            except Exception as exc:
                error = pb_utils.TritonError(f"internal: sentiment failed: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
