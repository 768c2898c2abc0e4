-- Argo CD health check for kubeforge resources (TrainingJob, ModelDeployment, FeatureView).
-- Reads the kstatus-style conditions the operators write. Install it under
-- resource.customizations.health.kubeforge.dev_<Kind> in argocd-cm (see README.md).
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  conditions[c.type] = c
end
local ready, degraded, progressing = conditions["Ready"], conditions["Degraded"], conditions["Progressing"]
local function text(c)
  if c == nil then return "" end
  if c.message ~= nil and c.message ~= "" then return c.reason .. ": " .. c.message end
  return c.reason
end
if obj.kind == "TrainingJob" then
  if obj.status.phase == "Failed" then
    return { status = "Degraded", message = text(ready) }
  end
  if obj.status.phase == "Suspended" then
    return { status = "Suspended", message = text(ready) }
  end
  if obj.status.phase == "Succeeded" and ready ~= nil and ready.status == "True" then
    return { status = "Healthy", message = text(ready) }
  end
  return { status = "Progressing", message = text(ready) }
end
if ready ~= nil and ready.reason == "InvalidSpec" then
  return { status = "Degraded", message = text(ready) }
end
local approved = conditions["Approved"]
if approved ~= nil and approved.status == "False" and approved.reason == "AwaitingApproval" then
  -- Waiting for a person (kubeforge model approve), as a paused rollout does: Suspended, not Progressing.
  return { status = "Suspended", message = text(approved) }
end
if progressing ~= nil and progressing.status == "True" then
  return { status = "Progressing", message = text(progressing) }
end
if degraded ~= nil and degraded.status == "True" then
  return { status = "Degraded", message = text(degraded) }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = text(ready) }
end
return { status = "Progressing", message = text(ready) }
