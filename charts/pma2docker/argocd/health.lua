-- Argo CD health check for pma2docker.io/ImageCopy.
--
-- Maps the Ready condition the controller writes to an Argo CD health status:
--   spec.suspend is true                              -> Suspended
--   no status yet, or status for an older generation  -> Progressing
--   Ready is Unknown (reason Copying) or missing      -> Progressing
--   Ready is True for the current generation          -> Healthy
--   Ready is False with a failure reason              -> Degraded
--
-- Argo CD runs scripts from the argocd-cm ConfigMap without the Lua standard libraries
-- unless resource.customizations.useOpenLibs is set. So this script calls only ipairs
-- from the base library, and no string, math or os function.

local health = {}

local function progressing(message)
  health.status = "Progressing"
  health.message = message
  return health
end

local generation = obj.metadata.generation
local status = obj.status
local suspend = obj.spec ~= nil and obj.spec.suspend == true

-- Finds the Ready condition, or returns nil.
local function readyCondition()
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      return condition
    end
  end
  return nil
end

local ready = readyCondition()

-- Returns the condition's message, or its reason when the message is empty.
local function summary(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return "No message"
end

-- Returns "Reason: message" for a failure, so the reason shows in the Argo CD UI.
local function failure(condition)
  if condition.reason ~= nil and condition.reason ~= ""
    and condition.message ~= nil and condition.message ~= "" then
    return condition.reason .. ": " .. condition.message
  end
  return summary(condition)
end

-- A condition without observedGeneration is taken as current, so older writers still count.
local function isCurrent(condition)
  return condition.observedGeneration == nil or generation == nil
    or condition.observedGeneration == generation
end

if suspend then
  health.status = "Suspended"
  if ready ~= nil and ready.reason == "Suspended" and isCurrent(ready) then
    health.message = summary(ready)
  else
    health.message = "Copying is suspended because spec.suspend is true"
  end
  return health
end

if status == nil then
  return progressing("Waiting for the controller to report a status")
end

if generation ~= nil and status.observedGeneration ~= generation then
  return progressing("Waiting for the controller to observe generation " .. generation)
end

if ready == nil then
  return progressing("Waiting for the Ready condition")
end

if not isCurrent(ready) then
  return progressing("Waiting for the Ready condition of generation " .. generation)
end

if ready.status == "True" then
  health.status = "Healthy"
  health.message = summary(ready)
  return health
end

if ready.status == "False" then
  if ready.reason == "Suspended" then
    -- The spec is no longer suspended, but the controller has not resumed yet.
    return progressing("Resuming after suspension")
  end
  health.status = "Degraded"
  health.message = failure(ready)
  return health
end

-- Ready is Unknown: a copy is running.
return progressing(summary(ready))
