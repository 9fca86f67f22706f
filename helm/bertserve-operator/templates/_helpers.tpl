{{/*
Names are cut to 63 characters: they become label values and DNS labels.
*/}}
{{- define "bertserve-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. If the release name contains the chart name it is used as is.
*/}}
{{- define "bertserve-operator.fullname" -}}
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
A derived name: the fullname cut so that "-<suffix>" still fits in 63 characters.
Usage: include "bertserve-operator.suffixed" (list . "edit")
*/}}
{{- define "bertserve-operator.suffixed" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $max := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "bertserve-operator.fullname" $ctx | trunc $max | trimSuffix "-") $suffix }}
{{- end }}

{{- define "bertserve-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bertserve-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bertserve-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bertserve-operator.labels" -}}
helm.sh/chart: {{ include "bertserve-operator.chart" . }}
{{ include "bertserve-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bertserve
{{- end }}

{{- define "bertserve-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bertserve-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bertserve-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Watching all namespaces needs cluster-wide permissions: refuse a combination that cannot work.
*/}}
{{- define "bertserve-operator.validate" -}}
{{- if and (not .Values.watchNamespaces) (not .Values.rbac.clusterWide) }}
{{- fail "watchNamespaces is empty (watch every namespace) but rbac.clusterWide=false: list the namespaces or set rbac.clusterWide=true" }}
{{- end }}
{{- end }}

{{/*
The operator's permissions, shared by the ClusterRole and the per-namespace Roles.
Only what it uses: SSA (create+patch) of its children, delete only for the optional
HPA/PDB/NetworkPolicy/ServiceMonitor, read-only pods (scheduler messages for status), events
create and list (why a pod is stuck creating), its own resource and status. Secrets: create and
nothing else. The operator makes each BertServer's mesh key Secret once (an AlreadyExists answer
means it is there) and never reads, lists, watches or updates any Secret; RBAC cannot narrow
Secrets by name, so get/list/watch would expose every Secret of the watched namespaces.
*/}}
{{- define "bertserve-operator.rules" -}}
- apiGroups: [bertserve.io]
  resources: [bertservers]
  verbs: [get, list, watch, patch]
- apiGroups: [bertserve.io]
  resources: [bertservers/status]
  verbs: [get, patch]
# Children carry a controller ownerReference with blockOwnerDeletion: true; the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift's default) admits that only
# from someone who may update the owner's finalizers.
- apiGroups: [bertserve.io]
  resources: [bertservers/finalizers]
  verbs: [update]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, create, patch, delete]
{{- end }}
