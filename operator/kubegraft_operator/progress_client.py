"""Reads a running trainer's live progress: `GET http://<podIP>:<PROGRESS_PORT>/progress`.

Called by `reconcile` from the 5-second timer of running TransferJobs. A short timeout and no retries: a
missed poll only delays the status by one tick, and a slow trainer must never stall the operator.
"""

from __future__ import annotations

import aiohttp
from pydantic import ValidationError

from kubegraft.runtime import PROGRESS_PORT, TrainingProgress


class ProgressClient:
    """A pooled HTTP client for trainer pods' /progress endpoints (one per operator process)."""

    def __init__(self, timeout: float = 2.0, port: int = PROGRESS_PORT) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._port = port
        self._session: aiohttp.ClientSession | None = None

    def url(self, pod_ip: str) -> str:
        """The /progress URL of a pod (IPv6 addresses bracketed)."""
        host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
        return f"http://{host}:{self._port}/progress"

    async def fetch(self, pod_ip: str) -> TrainingProgress | None:
        """The trainer's progress, or None when it does not answer (yet) or answers garbage."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self.url(pod_ip)) as response:
                if response.status != 200:
                    return None
                return TrainingProgress.model_validate_json(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValidationError, ValueError):
            return None

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
