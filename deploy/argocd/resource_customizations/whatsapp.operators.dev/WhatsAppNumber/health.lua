-- Health of a WhatsAppNumber (whatsapp.operators.dev) for Argo CD.
--
-- Suspended   spec.suspend is true, or an upgrade waits on spec.upgrade.paused
-- Progressing the operator has not reported on the newest generation yet, or a
--             rollout, shard change or upgrade is under way, or Ready is False
--             for a reason that clears by itself (a maintenance window)
-- Degraded    something a person must fix: Stalled, Conflict, an expired
--             build or Degraded is True
-- Healthy     Ready is True (the message warns of a build about to expire)
--
-- Written for Lua 5.1 (the dialect Argo CD embeds); also runs on Lua 5.4.
local hs = {}

local function find(conditions, conditionType)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == conditionType then
      return condition
    end
  end
  return nil
end

local function isTrue(condition)
  return condition ~= nil and condition.status == "True"
end

-- "Reason: message", tolerating either being absent.
local function describe(condition)
  local reason = condition.reason or condition.type
  if condition.message == nil or condition.message == "" then
    return reason
  end
  return reason .. ": " .. condition.message
end

local function result(status, message)
  hs.status = status
  hs.message = message
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  return result("Suspended", "spec.suspend is true: the operator leaves this number as it is")
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil or status.conditions == nil then
  return result("Progressing", "Waiting for the operator to report status")
end
if generation ~= nil and status.observedGeneration ~= generation then
  return result("Progressing", string.format(
    "Waiting for the operator to observe generation %d (status describes generation %d)",
    generation, status.observedGeneration))
end

local conditions = status.conditions
local ready = find(conditions, "Ready")

local stalled = find(conditions, "Stalled")
if isTrue(stalled) then
  return result("Degraded", describe(stalled))
end
local conflict = find(conditions, "Conflict")
if isTrue(conflict) then
  return result("Degraded", describe(conflict))
end

-- Work under way wins over the symptoms it is curing (an upgrade away from an
-- expired build, pods replaced by a rollout).
local reconciling = find(conditions, "Reconciling")
if not isTrue(reconciling) then
  reconciling = find(conditions, "Progressing")
end
if isTrue(reconciling) then
  return result("Progressing", describe(reconciling))
end

local expired = find(conditions, "BuildExpired")
if isTrue(expired) then
  return result("Degraded", describe(expired))
end
local degraded = find(conditions, "Degraded")
if isTrue(degraded) then
  return result("Degraded", describe(degraded))
end

if ready == nil then
  return result("Progressing", "Waiting for the operator to report readiness")
end
if ready.status == "True" then
  local expiring = find(conditions, "BuildExpiring")
  if isTrue(expiring) then
    return result("Healthy", describe(expiring))
  end
  return result("Healthy", ready.message or "Ready")
end
if ready.reason == "UpgradesPaused" then
  return result("Suspended", describe(ready))
end
return result("Progressing", describe(ready))
