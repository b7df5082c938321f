"""The one error the embedded infrastructure raises: a server could not be started, reached or stopped."""

from __future__ import annotations

from cag.errors import CagError, Status


class InfraError(CagError):
    """An embedded server failed to start, become healthy or stop; the message names its log file."""

    status = Status.UNAVAILABLE
    reason = "INFRA_UNAVAILABLE"
