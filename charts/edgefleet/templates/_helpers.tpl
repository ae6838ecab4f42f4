{{/* Names and labels shared by every operator template. */}}

{{- define "edgefleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<operator>": the name of an operator's Deployment, ServiceAccount and Lease. */}}
{{- define "edgefleet.operatorName" -}}
{{- printf "%s-%s" (include "edgefleet.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edgefleet.labels" -}}
{{ include "edgefleet.chartLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgefleet.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: edgefleet
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of one operator's objects and pods: the chart's plus its selector labels, each key
once (a duplicate key is invalid YAML to strict parsers). (dict "root" $ "name" NAME) */}}
{{- define "edgefleet.operatorLabels" -}}
{{ include "edgefleet.chartLabels" .root }}
{{ include "edgefleet.selectorLabels" . }}
{{- end -}}

{{/* Labels that select one operator's pods; stable across upgrades. */}}
{{- define "edgefleet.selectorLabels" -}}
app.kubernetes.io/name: edgefleet-{{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "edgefleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Log format and level of one operator: its own when set, else the chart's. (dict "root" $ "name" NAME) */}}
{{- define "edgefleet.logFormat" -}}
{{- $op := index .root.Values.operators .name -}}
{{- default .root.Values.logFormat $op.logFormat -}}
{{- end -}}
{{- define "edgefleet.logLevel" -}}
{{- $op := index .root.Values.operators .name -}}
{{- default .root.Values.logLevel $op.logLevel -}}
{{- end -}}

{{/* An operator's affinity: its own, plus a required node affinity keeping it off edge nodes
(.Values.edgeNodeLabel) unless its own affinity already has a required node affinity. */}}
{{- define "edgefleet.affinity" -}}
{{- $op := index .root.Values.operators .name -}}
{{- $affinity := deepCopy (default dict $op.affinity) -}}
{{- $node := default dict $affinity.nodeAffinity -}}
{{- if and .root.Values.edgeNodeLabel (not $node.requiredDuringSchedulingIgnoredDuringExecution) -}}
{{- $term := dict "matchExpressions" (list (dict "key" .root.Values.edgeNodeLabel "operator" "DoesNotExist")) -}}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" (list $term)) -}}
{{- $_ := set $affinity "nodeAffinity" $node -}}
{{- end -}}
{{- with $affinity }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* Flags every operator understands (operators/kit CommonArgs). Call with (dict "root" $ "name" NAME). */}}
{{- define "edgefleet.commonArgs" -}}
- --metrics-addr=0.0.0.0:{{ .root.Values.metrics.port }}
- --log-format={{ include "edgefleet.logFormat" . }}
- --leader-elect={{ .root.Values.leaderElection.enabled }}
- --leader-election-id={{ include "edgefleet.operatorName" . }}
- --lease-duration-seconds={{ .root.Values.leaderElection.leaseDurationSeconds }}
- --lease-grace-seconds={{ .root.Values.leaderElection.graceSeconds }}
{{- if and (include "edgefleet.namespaced" .) (has .name (list "rollout" "objectsync" "hub" "device")) }}
- --watch-namespace={{ join "," .root.Values.watchNamespaces }}
{{- end }}
{{- end -}}

{{/* "true" in namespaced mode (.Values.watchNamespaces set), "" otherwise; fails on a name
that is not a namespace name, before anything is applied. (dict "root" $ ...) */}}
{{- define "edgefleet.namespaced" -}}
{{- range .root.Values.watchNamespaces -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" (toString .)) -}}
{{- fail (printf "watchNamespaces: %q is not a namespace name (lowercase letters, digits and '-', at most 63)" (toString .)) -}}
{{- end -}}
{{- end -}}
{{- if .root.Values.watchNamespaces }}true{{ end -}}
{{- end -}}

{{/* An operator's rights on namespaced resources: in its ClusterRole (cluster-wide mode,
nothing here) or, in namespaced mode, a Role and RoleBinding in each watched namespace.
(dict "root" $ "name" NAME "rules" YAML-LIST) */}}
{{- define "edgefleet.watchedRbac" -}}
{{- if include "edgefleet.namespaced" . }}
{{- $name := include "edgefleet.operatorName" . }}
{{- range .root.Values.watchNamespaces | uniq }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}-watched
  namespace: {{ . }}
  labels:
    {{- include "edgefleet.labels" $.root | nindent 4 }}
rules:
  {{- $.rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}-watched
  namespace: {{ . }}
  labels:
    {{- include "edgefleet.labels" $.root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}-watched
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ $.root.Release.Namespace }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment every operator reads: its identity and namespace for leader election, log level. */}}
{{- define "edgefleet.commonEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_UID
  valueFrom: {fieldRef: {fieldPath: metadata.uid}}
- name: RUST_LOG
  value: {{ include "edgefleet.logLevel" . | quote }}
{{- end -}}

{{/* Liveness on /healthz, readiness on /readyz (true once caches are synced), on the metrics port. */}}
{{- define "edgefleet.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/* The pod spec of an operator: restricted security, probes, metrics port. (dict "root" $ "name" NAME "command" LIST, optional "args" LIST and "ports" LIST of its own) */}}
{{- define "edgefleet.podSpec" -}}
{{- $op := index .root.Values.operators .name -}}
serviceAccountName: {{ include "edgefleet.operatorName" . }}
automountServiceAccountToken: true
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $op.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $op.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "edgefleet.affinity" . }}
affinity:
  {{- . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .name }}
    image: {{ include "edgefleet.image" .root }}
    imagePullPolicy: {{ .root.Values.image.pullPolicy }}
    command: {{ toJson .command }}
    args:
      {{- include "edgefleet.commonArgs" . | nindent 6 }}
      {{- with .args }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      {{- with $op.extraArgs }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    env:
      {{- include "edgefleet.commonEnv" . | nindent 6 }}
    ports:
      - name: metrics
        containerPort: {{ .root.Values.metrics.port }}
      {{- with .ports }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- include "edgefleet.probes" . | nindent 4 }}
    resources:
      {{- toYaml $op.resources | nindent 6 }}
    securityContext:
      {{- toYaml .root.Values.securityContext | nindent 6 }}
{{- end -}}

{{/* An operator that writes shared objects must not run two active replicas: without leader
election it runs one. (dict "root" $ "name" NAME) */}}
{{- define "edgefleet.singleWriter" -}}
{{- $op := index .root.Values.operators .name -}}
{{- if and (not .root.Values.leaderElection.enabled) (gt (int $op.replicas) 1) -}}
{{- fail (printf "operators.%s.replicas=%d needs leaderElection.enabled=true: without it every replica would act on the same objects" .name (int $op.replicas)) -}}
{{- end -}}
{{- end -}}

{{/* A Role and RoleBinding on Leases in the release namespace, for leader election; nothing
when leader election is off. */}}
{{- define "edgefleet.leaderElectionRbac" -}}
{{- if .root.Values.leaderElection.enabled }}
{{- $name := include "edgefleet.operatorName" . }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}-leader-election
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "edgefleet.labels" .root | nindent 4 }}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "list", "watch", "create", "update", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}-leader-election
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "edgefleet.labels" .root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}-leader-election
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ .root.Release.Namespace }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget keeping one replica of a multi-replica operator up. */}}
{{- define "edgefleet.pdb" -}}
{{- $op := index .root.Values.operators .name }}
{{- if gt (int $op.replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "edgefleet.operatorName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "edgefleet.labels" .root | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "edgefleet.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}
