{{/* Names, labels and images shared by the templates. */}}

{{- define "flux-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flux-proxy.fullname" -}}
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

{{- define "flux-proxy.injector" -}}
{{- printf "%s-injector" (include "flux-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flux-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "flux-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "flux-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flux-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "flux-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flux-proxy.injector" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flux-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "flux-proxy.sidecarImage" -}}
{{- $repository := .Values.sidecar.image.repository | default .Values.image.repository }}
{{- $tag := .Values.sidecar.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{- define "flux-proxy.keySecret" -}}
{{- .Values.key.existingSecret | default (printf "%s-key" (include "flux-proxy.fullname" .)) }}
{{- end }}

{{- define "flux-proxy.tlsSecret" -}}
{{- printf "%s-tls" (include "flux-proxy.injector" .) }}
{{- end }}

{{- define "flux-proxy.serviceDNS" -}}
{{- printf "%s.%s.svc" (include "flux-proxy.injector" .) .Release.Namespace }}
{{- end }}
