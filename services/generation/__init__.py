"""The generation service: token streams from language models served by Triton Inference Server."""
