// Alerts over the app's telemetry in the workspace (AppRequests: one row per function
// run; AppTraces: the app's structured log lines), mailed through one action group.

@description('Required. Azure region of the alert rules.')
@allowed(['uksouth', 'westeurope'])
param location string

@description('Required. Prefix of the alert rule names.')
@minLength(2)
@maxLength(40)
param namePrefix string

@description('Required. Resource id of the Log Analytics workspace the queries run over.')
param workspaceId string

@description('Required. Address that receives the alerts.')
@minLength(3)
param alertEmail string

@description('Optional. Tags applied to every resource.')
param tags object = {}

@description('Required. Name of the owner-jobs Function App: the purge and retention alerts read its telemetry.')
@minLength(2)
param ownerAppName string

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${namePrefix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'custos'
    enabled: true
    emailReceivers: [
      {
        name: 'ops'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var rules = [
  {
    name: 'heartbeat-failed'
    severity: 1
    description: 'The heartbeat timer failed, found a dependency down, or did not run for 15 minutes.'
    frequency: 'PT5M'
    window: 'PT15M'
    query: 'let runs = AppRequests | where Name == "heartbeat"; let failed = union (runs | where Success == false), (AppTraces | where Message startswith "heartbeat: dependency down"); print failures = toscalar(failed | count), runs = toscalar(runs | count) | where failures > 0 or runs == 0'
  }
  {
    name: 'audit-verify-failed'
    severity: 0
    description: 'The nightly audit verification found a chain that does not verify, or did not complete.'
    frequency: 'PT1H'
    window: 'P1D'
    query: 'let runs = AppRequests | where Name == "audit_verify_all"; let failed = union (runs | where Success == false), (AppTraces | where Message startswith "audit chain verification failed" and Message !has "code=checkpoint_stale"); print failures = toscalar(failed | count), runs = toscalar(runs | count) | where failures > 0 or runs == 0'
  }
  {
    name: 'audit-checkpoint-stale'
    severity: 1
    description: 'Audit checkpoints stopped: verification reports a stale checkpoint, or the checkpoint timer has not succeeded for an hour.'
    frequency: 'PT15M'
    window: 'PT1H'
    query: 'let ok = AppRequests | where Name == "audit_checkpoint" and Success == true; let stale = AppTraces | where Message has "code=checkpoint_stale" or Message startswith "audit checkpoint refused"; print stale = toscalar(stale | count), ok = toscalar(ok | count) | where stale > 0 or ok == 0'
  }
  {
    name: 'blob-snapshot-failed'
    severity: 1
    description: 'The daily attachment snapshot run failed, found a blob whose content does not match its address, or did not run for a day.'
    frequency: 'PT1H'
    window: 'P1D'
    query: 'let runs = AppRequests | where Name == "snapshot_blobs"; let failed = union (runs | where Success == false), (AppTraces | where Message startswith "blob snapshot run failed" or Message startswith "blob snapshot: content does not match"); print failures = toscalar(failed | count), runs = toscalar(runs | count) | where failures > 0 or runs == 0'
  }
  {
    name: 'tenant-purge-failed'
    severity: 1
    description: 'The daily tenant purge failed (a purge stopped half way resumes on the next run), or did not run for two days.'
    frequency: 'PT1H'
    window: 'P2D'
    query: 'let runs = AppRequests | where Name == "purge_cancelled_tenants" and AppRoleName == "${ownerAppName}"; let failed = union (runs | where Success == false), (AppTraces | where Message startswith "tenant purge failed"); print failures = toscalar(failed | count), runs = toscalar(runs | count) | where failures > 0 or runs == 0'
  }
  {
    name: 'audit-retention-failed'
    severity: 1
    description: 'The daily audit retention cut failed or refused a tenant (its chain or checkpoints do not verify), or did not run for two days.'
    frequency: 'PT1H'
    window: 'P2D'
    query: 'let runs = AppRequests | where Name == "audit_retention" and AppRoleName == "${ownerAppName}"; let failed = union (runs | where Success == false), (AppTraces | where Message startswith "audit retention refused"); print failures = toscalar(failed | count), runs = toscalar(runs | count) | where failures > 0 or runs == 0'
  }
  {
    name: 'job-failed'
    severity: 2
    description: 'A job (export, purge, ...) ended FAILED, or the Functions host moved a job message to the poison queue.'
    frequency: 'PT15M'
    window: 'PT15M'
    query: 'AppTraces | where Message startswith "job failed:" or (Message has "MaxDequeueCount" and Message has "poison")'
  }
  {
    name: 'housekeeping-failed'
    severity: 2
    description: 'The housekeeping timer failed a step (expired throttle rows, tickets, tokens, old mail or idle sessions not cleared), or did not run for 2 hours.'
    frequency: 'PT1H'
    window: 'PT2H'
    query: 'let runs = AppRequests | where Name == "housekeeping"; let failed = union (runs | where Success == false), (AppTraces | where Message startswith "housekeeping step failed"); print failures = toscalar(failed | count), runs = toscalar(runs | count) | where failures > 0 or runs == 0'
  }
  {
    name: 'sso-purge-failed'
    severity: 2
    description: 'The SSO housekeeping timer (SAML replay cache, expired requests and sign-in codes) failed or did not succeed for three hours.'
    frequency: 'PT1H'
    window: 'PT3H'
    query: 'let runs = AppRequests | where Name == "purge_sso_state"; print failures = toscalar(runs | where Success == false | count), ok = toscalar(runs | where Success == true | count) | where failures > 0 or ok == 0'
  }
  {
    name: 'incident-notice-overdue'
    severity: 0
    description: 'A security incident affecting tenant data has gone 20 hours without notice to the tenant admins (24-hour commitment), or the incident sweep failed or did not run for an hour (docs/incidents.md).'
    frequency: 'PT15M'
    window: 'PT1H'
    query: 'let runs = AppRequests | where Name == "incidents_sweep"; let bad = union (runs | where Success == false), (AppTraces | where Message startswith "incident notice overdue" or Message startswith "incident sweep failed"); print bad = toscalar(bad | count), runs = toscalar(runs | count) | where bad > 0 or runs == 0'
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [for rule in rules: {
  name: '${namePrefix}-${rule.name}'
  location: location
  tags: tags
  properties: {
    displayName: '${namePrefix} ${rule.name}'
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [ workspaceId ]
    evaluationFrequency: rule.frequency
    windowSize: rule.window
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [ actionGroup.id ]
    }
  }
}]

@description('Resource id of the action group.')
output actionGroupId string = actionGroup.id

@description('Names of the alert rules.')
output alertRuleNames array = [for (rule, i) in rules: alertRules[i].name]
