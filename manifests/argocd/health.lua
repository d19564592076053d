-- Argo CD health check for kubegraft.io/TransferJob (resource.customizations.health.kubegraft.io_TransferJob).
-- The order follows kstatus (what Flux reads), so both tools agree on every status:
--   metadata.deletionTimestamp set (being deleted)                            -> Progressing
--   no status yet, or status.observedGeneration < metadata.generation (stale) -> Progressing
--   Suspended condition True (or phase Suspended)                             -> Suspended
--   Reconciling condition True (the first of the two in the list)             -> Progressing
--   Stalled condition True (the first of the two in the list)                 -> Degraded
--   Failed condition True (or phase Failed)                                   -> Degraded
--   Succeeded condition True (or phase Succeeded)                             -> Healthy
--   anything else (Pending, Running)                                          -> Progressing
local hs = {}

local function condition(status, condition_type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == condition_type then
      return c
    end
  end
  return nil
end

local function is_true(status, condition_type)
  local c = condition(status, condition_type)
  return c ~= nil and c.status == "True"
end

local function message_of(status, condition_type, fallback)
  local c = condition(status, condition_type)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "The TransferJob is being deleted (since " .. tostring(obj.metadata.deletionTimestamp) .. ")"
  return hs
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubegraft operator to observe this TransferJob"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubegraft operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase

if is_true(status, "Suspended") or phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message_of(status, "Suspended", "The TransferJob is suspended")
  return hs
end

-- As kstatus: the first of Reconciling / Stalled that is True, in the order of the list, decides.
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Reconciling" and c.status == "True" then
      hs.status = "Progressing"
      hs.message = message_of(status, "Reconciling", "The TransferJob is being reconciled")
      return hs
    end
    if c.type == "Stalled" and c.status == "True" then
      hs.status = "Degraded"
      hs.message = message_of(status, "Stalled", "The TransferJob is stalled")
      return hs
    end
  end
end

if is_true(status, "Failed") or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(status, "Failed", "The training run failed")
  return hs
end

if is_true(status, "Succeeded") or phase == "Succeeded" then
  hs.status = "Healthy"
  local fallback = "The training run succeeded"
  if status.modelUri ~= nil then
    fallback = "Model published at " .. status.modelUri
  end
  hs.message = message_of(status, "Succeeded", fallback)
  return hs
end

hs.status = "Progressing"
if phase ~= nil then
  hs.message = message_of(status, "Reconciling", "The TransferJob is " .. phase)
else
  hs.message = message_of(status, "Reconciling", "The TransferJob is being reconciled")
end
return hs
