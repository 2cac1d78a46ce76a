{{/*
Chart name, shortened to the 63 characters that Kubernetes allows in a label value.
*/}}
{{- define "pma2docker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: "<release>-<chart>", or the release name alone when it
already contains the chart name. Cluster-scoped objects use it too, so two releases in
one cluster never share a ClusterRole.
*/}}
{{- define "pma2docker.fullname" -}}
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
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "pma2docker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the controller pod. They never change between upgrades, because a
Deployment's selector is immutable.
*/}}
{{- define "pma2docker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pma2docker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "pma2docker.labels" -}}
helm.sh/chart: {{ include "pma2docker.chart" . }}
{{ include "pma2docker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pma2docker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Name of the ServiceAccount the controller runs as.
*/}}
{{- define "pma2docker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pma2docker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Controller image reference: repository plus digest when one is set, otherwise plus the
tag, which defaults to the chart's appVersion.
*/}}
{{- define "pma2docker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Listen address of the metrics endpoint as HOST:PORT, with brackets around an IPv6 host.
*/}}
{{- define "pma2docker.metricsAddress" -}}
{{- if contains ":" .Values.metrics.listenAddress }}
{{- printf "[%s]:%d" .Values.metrics.listenAddress (int .Values.metrics.port) }}
{{- else }}
{{- printf "%s:%d" .Values.metrics.listenAddress (int .Values.metrics.port) }}
{{- end }}
{{- end }}

{{/*
API access the controller needs, shared by the ClusterRole and the namespaced Role:
- ImageCopy objects: read and watch. The controller never writes spec, labels or
  annotations and sets no finalizers, so it gets no update, patch or delete on them.
- imagecopies/status: patch, for the server-side apply of the status.
- Secrets: get the pull Secrets an ImageCopy names, and list and watch Secrets of type
  kubernetes.io/dockerconfigjson by metadata, so a changed password triggers a new copy.
  RBAC cannot limit list to metadata, so these verbs also allow reading Secret data in
  their scope. Set watchNamespace to confine them to one namespace.
- events.k8s.io Events: create, and patch to raise the series count of a repeated Event.
*/}}
{{- define "pma2docker.rbacRules" -}}
- apiGroups: ["pma2docker.io"]
  resources: ["imagecopies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["pma2docker.io"]
  resources: ["imagecopies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
