-- Argo CD health check for kubegraft.io/TransferJob (resource.customizations.health.kubegraft.io_TransferJob).
--   no status yet, or status.observedGeneration < metadata.generation (stale) -> Progressing
--   Suspended condition True (or phase Suspended)                             -> Suspended
--   Failed condition True (or phase Failed)                                   -> Degraded
--   Succeeded condition True (or phase Succeeded)                             -> Healthy
--   Stalled condition True                                                    -> Degraded
--   anything else (Pending, Running, Reconciling)                             -> Progressing
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

if is_true(status, "Stalled") then
  hs.status = "Degraded"
  hs.message = message_of(status, "Stalled", "The TransferJob is stalled")
  return hs
end

hs.status = "Progressing"
if phase ~= nil then
  hs.message = message_of(status, "Reconciling", "The TransferJob is " .. phase)
else
  hs.message = message_of(status, "Reconciling", "The TransferJob is being reconciled")
end
return hs
