"""How GitOps tools read a TransferJob's health: the Argo CD Lua check, run for real, and kstatus (Flux).

Who uses it: tests/integration/deploy/test_argocd_health.py (the script on hand-written statuses) and the
operator's integration tests (both readings of the statuses the real operator writes must agree).

- `argocd_health` runs manifests/argocd/health.lua in Lua 5.1 (lupa), as Argo CD runs health scripts in
  gopher-lua with the live object as the global `obj`.
- `kstatus` is the generic rule of kstatus (sigs.k8s.io/cli-utils `pkg/kstatus/status/generic.go`,
  `checkGenericProperties` / `GetGenericStatus`), which Flux's health checks use for custom resources:
  `metadata.deletionTimestamp` -> Terminating; `status.observedGeneration` present and not the generation ->
  InProgress; then the first condition in the list that is `Reconciling` True (InProgress) or `Stalled` True
  (Failed); otherwise Current. It is a port of those few lines, not the library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lupa import lua51

HEALTH_LUA = Path(__file__).resolve().parents[2] / "manifests" / "argocd" / "health.lua"
# What each kstatus result means in Argo CD's words, for checks that both tools agree.
KSTATUS_AS_ARGOCD = {
    "InProgress": "Progressing",
    "Terminating": "Progressing",
    "Failed": "Degraded",
    "Current": "Healthy",
}


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def argocd_health(obj: dict[str, Any], script: Path = HEALTH_LUA) -> tuple[str, str]:
    """Run the Argo CD health script on `obj`; returns (status, message)."""
    runtime = lua51.LuaRuntime()
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(script.read_text(encoding="utf-8"))
    return str(result["status"]), str(result["message"])


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus's generic status of `obj`: Terminating, InProgress, Failed or Current (see the docstring)."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed != meta.get("generation"):
        return "InProgress"
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Reconciling":
            return "InProgress"
        if condition.get("type") == "Stalled":
            return "Failed"
    return "Current"
