"""`python -m callisto.gateway.control_plane`: the xDS control plane (settings from the
environment, see `ControlPlaneSettings`)."""

from callisto.gateway.control_plane.server import main

main()
