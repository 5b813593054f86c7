{{/* Release-scoped name: the release name, with the chart name appended unless it is already in it. */}}
{{- define "bifusion.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "bifusion.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "bifusion.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "bifusion.mlflowName" -}}
{{- printf "%s-mlflow" (include "bifusion.fullname" .) -}}
{{- end -}}

{{/* Where stages log: the given URI, else the bundled server's Service. */}}
{{- define "bifusion.trackingUri" -}}
{{- if .Values.mlflow.trackingUri -}}
{{- .Values.mlflow.trackingUri -}}
{{- else if .Values.mlflow.server.enabled -}}
{{- printf "http://%s:%d" (include "bifusion.mlflowName" .) (int .Values.mlflow.server.port) -}}
{{- else -}}
{{- fail "mlflow.trackingUri is empty and mlflow.server.enabled is false: stages need a tracking server" -}}
{{- end -}}
{{- end -}}

{{- define "bifusion.versionPrefix" -}}
{{- .Values.pipeline.versionPrefix | default (printf "%s-%s" .Values.pipeline.name .Chart.AppVersion) -}}
{{- end -}}

{{- define "bifusion.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "bifusion.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "bifusion.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}
