"""Runtime pieces that sit beside the services: the real Triton server and its environment."""
