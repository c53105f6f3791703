"""The shared service runtime: bootstrap, configuration, errors, auth, health and telemetry.

Every service composes these; none re-implements them.
"""
