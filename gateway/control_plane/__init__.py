"""The gateway's xDS control plane: Envoy's clusters and their serving endpoints over ADS.

`python -m callisto.gateway.control_plane` runs it; endpoints come from the Redis replica
registry or, in Kubernetes, from headless Services' DNS (`sources.py`).
"""
