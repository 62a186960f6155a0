{{/* The chart's short name. */}}
{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name. */}}
{{- define "kiln.fullname" -}}
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

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kiln.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The rack agent's image: its kiln has the two file capabilities. */}}
{{- define "kiln.rackImage" -}}
{{- printf "%s:%s" .Values.image.rackRepository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* --etcd-endpoints, comma-separated; fails without any. */}}
{{- define "kiln.etcdEndpoints" -}}
{{- if not .Values.etcd.endpoints }}
{{- fail "etcd.endpoints: give the external etcd cluster's client URLs, e.g. --set 'etcd.endpoints={https://etcd-0.etcd:2379}'" }}
{{- end }}
{{- join "," .Values.etcd.endpoints }}
{{- end }}

{{/* The etcd client flags; the Secret is mounted at /etc/kiln/etcd. */}}
{{- define "kiln.etcdArgs" -}}
- {{ printf "--etcd-endpoints=%s" (include "kiln.etcdEndpoints" .) | quote }}
- --etcd-ca=/etc/kiln/etcd/ca.pem
- --etcd-cert=/etc/kiln/etcd/cert.pem
- --etcd-key=/etc/kiln/etcd/key.pem
{{- with .Values.etcd.prefix }}
- {{ printf "--prefix=%s" . | quote }}
{{- end }}
{{- end }}

{{/* The volume of an etcd client Secret; call with (list $ secretName). */}}
{{- define "kiln.etcdVolume" -}}
{{- $ := index . 0 -}}
- name: etcd
  secret:
    secretName: {{ index . 1 | quote }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.etcd.secretKeys.ca | quote }}
        path: ca.pem
      - key: {{ $.Values.etcd.secretKeys.cert | quote }}
        path: cert.pem
      - key: {{ $.Values.etcd.secretKeys.key | quote }}
        path: key.pem
{{- end }}

{{/*
Every pod runs as the image's user, 65532, which owns nothing in the image.
fsGroup makes the mounted Secrets and volumes readable to it.
*/}}
{{- define "kiln.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* A container's security context; call with the list of added capabilities. */}}
{{- define "kiln.securityContext" -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  {{- with . }}
  add:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  drop:
    - ALL
{{- end }}

{{/* Liveness on /healthz and readiness on /readyz, at the named port "metrics". */}}
{{- define "kiln.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* A rack's workload name; call with (list $ rackName). */}}
{{- define "kiln.rackFullname" -}}
{{- printf "%s-rack-%s" (include "kiln.fullname" (index . 0)) (index . 1) }}
{{- end }}
