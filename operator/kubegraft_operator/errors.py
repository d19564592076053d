"""Translation of Kubernetes API failures into kopf's retry vocabulary; called by `kube`.

"Not yet" (server busy, timeouts, conflicts) becomes `kopf.TemporaryError` so kopf retries the handler
after a delay; "never" (the server rejects what we send: 400, 403, 422) becomes `kopf.PermanentError`.
409 on create and 404 on delete are not errors at all: `kube` treats them as success before getting here.
"""

from __future__ import annotations

import math

import kopf

RETRY_DELAY_SECONDS = 5.0
# A server's Retry-After (429, 503) is obeyed within these bounds: at least a second, at most a minute.
RETRY_AFTER_BOUNDS = (1.0, 60.0)

# Status codes that mean the request itself is wrong (or forbidden): repeating it cannot help.
_PERMANENT_STATUSES = frozenset({400, 401, 403, 405, 415, 422})


class InvalidSpecError(ValueError):
    """The TransferJob's spec cannot be rendered into a Job (admission should have refused it)."""


def retry_after_seconds(value: str | None) -> float | None:
    """The delay a `Retry-After` header asks for, within `RETRY_AFTER_BOUNDS`; None if absent or unreadable.

    Only the delta-seconds form is read (what kube-apiserver sends); an HTTP date counts as unreadable.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    low, high = RETRY_AFTER_BOUNDS
    return min(max(seconds, low), high)


def translate_api_error(
    status: int | None, what: str, reason: str = "", *, retry_after: str | None = None
) -> kopf.TemporaryError | kopf.PermanentError:
    """The kopf error for an API failure of `what` (a short phrase) with HTTP `status`.

    Args:
        status: the HTTP status code, or None for a connection-level failure.
        what: what the operator was doing, e.g. "create Job ns/name-1".
        reason: the server's reason phrase, if any (never an object body: it could hold secret data).
        retry_after: the answer's `Retry-After` header, if any: the retry delay (bounded), instead of
            `RETRY_DELAY_SECONDS`.

    Returns:
        `kopf.PermanentError` for client errors that repeating cannot fix, else `kopf.TemporaryError`.
    """
    detail = f"{what} failed with HTTP {status}" if status else f"{what} failed: no response"
    if reason:
        detail = f"{detail} ({reason})"
    if status in _PERMANENT_STATUSES:
        return kopf.PermanentError(detail)
    delay = retry_after_seconds(retry_after)
    return kopf.TemporaryError(detail, delay=RETRY_DELAY_SECONDS if delay is None else delay)
