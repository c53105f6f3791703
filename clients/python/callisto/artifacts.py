"""`client.orchestration`'s artifacts: the reports a conversation's runs made."""

from __future__ import annotations

from callisto._facade import Facade


class ArtifactsMixin(Facade):
    """Listing and downloading a conversation's artifacts."""
