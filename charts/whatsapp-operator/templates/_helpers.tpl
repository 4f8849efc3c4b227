{{/*
Chart name, truncated to the 63 characters allowed in a label value.
*/}}
{{- define "whatsapp-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full resource name prefix: the release name, plus the chart name unless the
release name already contains it.
*/}}
{{- define "whatsapp-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "whatsapp-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "whatsapp-operator.labels" -}}
helm.sh/chart: {{ include "whatsapp-operator.chart" . }}
{{ include "whatsapp-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: whatsapp-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (immutable on the Deployment: never add to them).
*/}}
{{- define "whatsapp-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "whatsapp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "whatsapp-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "whatsapp-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Namespace the operator watches, as passed in WATCH_NAMESPACE. Empty means all
namespaces (cluster scope only).
*/}}
{{- define "whatsapp-operator.watchNamespace" -}}
{{- if eq .Values.rbac.scope "namespace" }}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- else }}
{{- .Values.watchNamespace }}
{{- end }}
{{- end }}

{{/*
Leader-election Lease name.
*/}}
{{- define "whatsapp-operator.leaseName" -}}
{{- default (include "whatsapp-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Container image reference: repository@digest, or repository:tag with the tag
defaulting to the chart's appVersion.
*/}}
{{- define "whatsapp-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Content of the release catalog (key catalog.yaml): a YAML list of
{version, releasedAt, expiresAt?}, keys written in a fixed order.
*/}}
{{- define "whatsapp-operator.releaseCatalog" -}}
{{- range .Values.releaseCatalog.entries }}
- version: {{ .version | toString | quote }}
  releasedAt: {{ .releasedAt | toString | quote }}
{{- if .expiresAt }}
  expiresAt: {{ .expiresAt | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Rules for the resources the operator manages in the watched namespace(s).
Shared by the ClusterRole (cluster scope) and the Role (namespace scope).
*/}}
{{- define "whatsapp-operator.managedRules" -}}
# Every verb below is one the operator's code uses; the integration suite runs
# the operator with exactly these rules, and hack/rbac-audit.py fails CI when
# one of them is never used in the suite's audit log (or a request is refused).
- apiGroups: ["whatsapp.operators.dev"]
  resources: ["whatsappnumbers"]
  # patch: the claim finalizer.
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["whatsapp.operators.dev"]
  resources: ["whatsappnumbers/status"]
  verbs: ["patch"]
- apiGroups: ["whatsapp.operators.dev"]
  resources: ["whatsappnumbers/finalizers"]
  # Children carry blockOwnerDeletion owner references.
  verbs: ["update"]
# Children are read from the operator's watch caches (list/watch), never by
# a get; server-side apply writes them (patch, which creates too).
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  # delete: a WhatsAppNumber that lost its number claim stops its nodes.
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps", "persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  # list/watch: a cache of every Secret's metadata. It says which Secrets the
  # spec names exist and at which version, and a change reconciles the
  # WhatsAppNumbers that name it at once (credentials created after it, a
  # renewed certificate, a registration code arriving). list also finds a
  # number's backup Secrets (by label) to prune beyond keep.
  # get: a named Secret's data, read again only when its version changed.
  # create/update: the generated key Secret; patch: the pinned webapp CA;
  # create/delete: backups beyond spec.backup.keep.
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  # list/watch: a cache of master and coreapp pods (metadata and address), so
  # that no node of a number starts while another instance's pods still
  # exist, and one of schema Job pods (status); list reads a schema Job's
  # pods again before an upgrade is called off.
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  # get: while a registered number is down, the recent log of its masters
  # and coreapps, where the client names a second instance of the number.
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  # delete: a budget for a tier that no longer has several pods.
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  # delete: the schema Job of an upgrade that is called off (list reads it
  # again by name first), and a WhatsAppNumber's schema Jobs when it is
  # deleted. patch: a failed one is kept (its time to live
  # taken away) until a person deletes it.
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  # spec.monitoring.serviceMonitor: the client's own metrics. get: the first
  # read shows the CRD is served; list/watch (metadata) from then on.
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}

{{/*
Bind address of the HTTP server (metrics and probes), host:port; IPv6 hosts
are bracketed.
*/}}
{{- define "whatsapp-operator.metricsAddress" -}}
{{- if contains ":" .Values.metrics.bindAddress }}
{{- printf "[%s]:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- else }}
{{- printf "%s:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- end }}
{{- end }}

{{/*
PromQL label matchers selecting the operator's scrape job: the job label the
Prometheus Operator gives the chart's ServiceMonitor (the Service name) or
PodMonitor (namespace/name), unless metrics.prometheusRule.jobSelector is set.
*/}}
{{- define "whatsapp-operator.jobSelector" -}}
{{- $rule := .Values.metrics.prometheusRule }}
{{- if $rule.jobSelector }}
{{- $rule.jobSelector }}
{{- else if .Values.metrics.podMonitor.enabled }}
{{- printf "job=%q" (printf "%s/%s" (default .Release.Namespace .Values.metrics.podMonitor.namespace) (include "whatsapp-operator.fullname" .)) }}
{{- else }}
{{- printf "job=%q" (printf "%s-metrics" (include "whatsapp-operator.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}
{{- end }}
