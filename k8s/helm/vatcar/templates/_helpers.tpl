{{/* The chart's name. */}}
{{- define "vatcar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's resources. */}}
{{- define "vatcar.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "vatcar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vatcar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the injector's pods. */}}
{{- define "vatcar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vatcar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{- define "vatcar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vatcar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The injector's image (the full vatcar binary). */}}
{{- define "vatcar.injectorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The injected sidecar's image (the -tags nok8s build): sidecar.image, else
the injector's repository less its "-injector" suffix, with the same tag. */}}
{{- define "vatcar.sidecarImage" -}}
{{- if .Values.sidecar.image }}
{{- .Values.sidecar.image }}
{{- else }}
{{- printf "%s:%s" (trimSuffix "-injector" .Values.image.repository) (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the webhook's certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "vatcar.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "vatcar.fullname" .) }}
{{- end }}
{{- end }}

{{/* The webhook Service's DNS names. */}}
{{- define "vatcar.serviceDNSNames" -}}
{{- $svc := include "vatcar.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.sidecar.clusterDomain) | toJson }}
{{- end }}

{{/* The injector's config file (k8s.Config). */}}
{{- define "vatcar.injectorConfig" -}}
{{- $kube := .Values.sidecar.kubeVersion }}
{{- if not $kube }}
{{- $kube = printf "%s.%s" .Capabilities.KubeVersion.Major (trimSuffix "+" .Capabilities.KubeVersion.Minor) }}
{{- end -}}
image: {{ include "vatcar.sidecarImage" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
kubeVersion: {{ $kube | quote }}
vatPort: {{ .Values.sidecar.vatPort }}
healthPort: {{ .Values.sidecar.adminPort | default .Values.sidecar.healthPort }}
healthAddress: {{ .Values.sidecar.healthAddress | quote }}
clusterDomain: {{ .Values.sidecar.clusterDomain | quote }}
{{- with .Values.sidecar.logFormat }}
logFormat: {{ . }}
{{- end }}
resources:
  {{- toYaml .Values.sidecar.resources | nindent 2 }}
{{- with .Values.sidecar.cpus }}
cpus: {{ . }}
{{- end }}
{{- with .Values.sidecar.extraArgs }}
extraArgs:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* namespaceSelector terms shared by both webhooks. */}}
{{- define "vatcar.excludedNamespaces" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values:
    {{- toYaml .Values.injector.excludeNamespaces | nindent 4 }}
{{- end }}
