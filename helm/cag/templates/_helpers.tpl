{{/* Names, labels, images, probes and the pod spec every service shares. A component template calls
     include "cag.<kind>" (dict "root" $ "name" "<service>"). */}}

{{- define "cag.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cag.componentName" -}}
{{- printf "%s-%s" (include "cag.fullname" .root) .name -}}
{{- end -}}

{{- define "cag.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/part-of: cag
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "cag.selectorLabels" . }}
{{- end -}}

{{- define "cag.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "cag.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cag.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The health service name grpc.health.v1 reports for a service: cag.v1.<Name>Service. */}}
{{- define "cag.healthService" -}}
{{- $names := dict "registry" "Registry" "cachepool" "CachePool" "router" "Router" "compiler" "Compiler" "fallback" "Fallback" -}}
{{- printf "cag.v1.%sService" (get $names .name) -}}
{{- end -}}

{{- define "cag.envPrefix" -}}
{{- printf "CAG_%s_" (upper .name) -}}
{{- end -}}

{{/* The engine services have CPU and GPU images. */}}
{{- define "cag.image" -}}
{{- $img := .root.Values.image -}}
{{- $tag := default .root.Chart.AppVersion $img.tag -}}
{{- $repo := printf "cag-%s" .name -}}
{{- if has .name (list "cachepool" "compiler") -}}
{{- $tag = printf "%s-%s" $tag $img.variant -}}
{{- end -}}
{{- if $img.registry -}}
{{- printf "%s/%s:%s" $img.registry $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "cag.address" -}}
{{- $c := index .root.Values .name -}}
{{- printf "%s:%v" (include "cag.componentName" .) $c.port -}}
{{- end -}}

{{/* gRPC probes on the service's health service (grpc.health.v1): on its gRPC port, or with TLS on the plaintext
     health-only port (kubelet's gRPC probes speak no TLS). */}}
{{- define "cag.probes" -}}
{{- $c := index .root.Values .name -}}
{{- $port := ternary .root.Values.tls.healthPort $c.port .root.Values.tls.enabled -}}
{{- $health := include "cag.healthService" . -}}
startupProbe:
  grpc: {port: {{ $port }}, service: {{ $health }}}
  periodSeconds: 10
  failureThreshold: 60
readinessProbe:
  grpc: {port: {{ $port }}, service: {{ $health }}}
  periodSeconds: 10
  failureThreshold: 3
livenessProbe:
  grpc: {port: {{ $port }}, service: {{ $health }}}
  periodSeconds: 20
  failureThreshold: 3
{{- end -}}

{{/* The name clients check server certificates against (CAG_TLS_SERVER_NAME); the Certificate carries it. */}}
{{- define "cag.tlsServerName" -}}
{{- default (printf "%s-internal" (include "cag.fullname" .)) .Values.tls.serverName -}}
{{- end -}}

{{/* The release's certificate, its key and CA (the mounted Secret) and the server name: what every process that
     speaks gRPC to the platform reads (cag.rpc.tls). Takes the root context. */}}
{{- define "cag.tlsEnv" -}}
{{- if .Values.tls.enabled -}}
- name: CAG_TLS_CERT_FILE
  value: /etc/cag/tls/tls.crt
- name: CAG_TLS_KEY_FILE
  value: /etc/cag/tls/tls.key
- name: CAG_TLS_CA_FILE
  value: /etc/cag/tls/ca.crt
- name: CAG_TLS_SERVER_NAME
  value: {{ include "cag.tlsServerName" . | quote }}
{{- end -}}
{{- end -}}

{{- define "cag.secretEnv" -}}
- name: {{ .var }}
  valueFrom:
    secretKeyRef: {name: {{ .secret }}, key: {{ .key }}}
{{- end -}}

{{/* Where every process finds the infrastructure: NATS (its own identity), the signing key, TLS, telemetry. */}}
{{- define "cag.infraEnv" -}}
{{- $v := .root.Values -}}
{{- $p := include "cag.envPrefix" . -}}
- name: CAG_HOME
  value: /var/lib/cag
- name: CAG_AUTH_KEY_FILE
  value: /etc/cag/auth/{{ $v.auth.key }}
{{ include "cag.secretEnv" (dict "var" (printf "%sNATS_URL" $p) "secret" $v.nats.existingSecret "key" (index $v.nats.urlKeys .name)) }}
{{- if $v.tls.enabled }}
{{ include "cag.tlsEnv" .root }}
- name: {{ $p }}HEALTH_ADDRESS
  value: "0.0.0.0:{{ $v.tls.healthPort }}"
{{- end }}
{{- with $v.sources.roots }}
- name: CAG_SOURCE_ROOTS
  value: {{ append . (printf "file://%s/{tenant}/" (include "cag.promotionsDir" $)) | join "," | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: cag-{{ .name }}
{{- if $v.otlp.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otlp.endpoint | quote }}
{{- else }}
- name: CAG_TRACES
  value: "off"
{{- end }}
{{- end -}}

{{- define "cag.databaseEnv" -}}
{{- $v := .root.Values -}}
{{ include "cag.secretEnv" (dict "var" (printf "%sDATABASE_URL" (include "cag.envPrefix" .)) "secret" $v.database.existingSecret "key" $v.database.urlKey) }}
{{- end -}}

{{- define "cag.objectStoreEnv" -}}
{{- $s := .root.Values.objectStore -}}
{{- if $s.endpoint }}
- name: CAG_S3_ENDPOINT_URL
  value: {{ $s.endpoint | quote }}
{{- end }}
- name: CAG_S3_REGION
  value: {{ $s.region | quote }}
{{- if $s.existingSecret }}
{{ include "cag.secretEnv" (dict "var" "CAG_S3_ACCESS_KEY_ID" "secret" $s.existingSecret "key" $s.accessKeyIdKey) }}
{{ include "cag.secretEnv" (dict "var" "CAG_S3_SECRET_ACCESS_KEY" "secret" $s.existingSecret "key" $s.secretAccessKeyKey) }}
{{- end }}
{{- end -}}

{{/* Extra settings of one service (values <service>.env, named without the CAG_<SERVICE>_ prefix): the data of
     its ConfigMap, which the container reads with envFrom. */}}
{{- define "cag.configData" -}}
{{- $c := index .root.Values .name -}}
{{- $p := include "cag.envPrefix" . -}}
{{- range $k, $val := $c.env }}
{{ printf "%s%s" $p $k }}: {{ $val | toString | quote }}
{{- end }}
{{- end -}}

{{- define "cag.configMap" -}}
{{- $c := index .root.Values .name -}}
{{- if $c.enabled }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "cag.componentName" . }}
  labels:
    {{- include "cag.labels" . | nindent 4 }}
{{- with include "cag.configData" . }}
data:
  {{- . | trim | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "cag.podAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{- define "cag.ports" -}}
{{- $c := index .root.Values .name -}}
- name: grpc
  containerPort: {{ $c.port }}
  protocol: TCP
{{- if .root.Values.tls.enabled }}
- name: health
  containerPort: {{ .root.Values.tls.healthPort }}
  protocol: TCP
{{- end }}
- name: metrics
  containerPort: {{ .root.Values.metrics.port }}
  protocol: TCP
{{- end -}}

{{- define "cag.volumeMounts" -}}
- name: home
  mountPath: /var/lib/cag
- name: tmp
  mountPath: /tmp
- name: auth
  mountPath: /etc/cag/auth
  readOnly: true
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /etc/cag/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cag.volumes" -}}
{{- $v := .root.Values -}}
- name: home
{{- if and $v.models.existingClaim (has .name (list "cachepool" "compiler" "fallback")) }}
  persistentVolumeClaim:
    claimName: {{ $v.models.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{ include "cag.authVolumes" .root }}
{{- include "cag.tlsVolume" .root }}
{{- end -}}

{{/* The release's certificate Secret (root context); nothing without tls.enabled. The services check no mode on
     it: under fsGroup it is group-readable, which is how the non-root user reads it. */}}
{{- define "cag.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "cag.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* The signing key: the services refuse a key file other users can read, and a Secret volume's files become
     group-readable under the pod's fsGroup, so an init container copies the key into an emptyDir with mode 0600. */}}
{{- define "cag.authVolumes" -}}
- name: auth
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: auth-secret
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    # Owned by root with group fsGroup: group-readable so that the init container (uid 10001) can copy it.
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.key }}
        path: {{ .Values.auth.key }}
{{- end -}}

{{- define "cag.authInitContainer" -}}
{{- $v := .root.Values -}}
- name: auth-key
  image: {{ include "cag.image" . }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command: [install, -m, "0600", /etc/cag/auth-secret/{{ $v.auth.key }}, /etc/cag/auth/{{ $v.auth.key }}]
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 32Mi}
  volumeMounts:
    - {name: auth, mountPath: /etc/cag/auth}
    - {name: auth-secret, mountPath: /etc/cag/auth-secret, readOnly: true}
{{- end -}}

{{- define "cag.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "cag.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* The pod template of one service; `env` is the service's own settings (YAML list, already rendered). */}}
{{- define "cag.podTemplate" -}}
{{- $v := .root.Values -}}
{{- $c := index $v .name -}}
metadata:
  labels:
    {{- include "cag.labels" . | nindent 4 }}
  annotations:
    checksum/config: {{ include "cag.configData" . | sha256sum | trunc 16 }}
    {{- include "cag.podAnnotations" . | nindent 4 }}
spec:
  serviceAccountName: {{ include "cag.serviceAccountName" .root }}
  automountServiceAccountToken: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: 30
  initContainers:
    {{- include "cag.authInitContainer" . | nindent 4 }}
  containers:
    - name: {{ .name }}
      image: {{ include "cag.image" . }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      ports:
        {{- include "cag.ports" . | nindent 8 }}
      env:
        {{- include "cag.infraEnv" . | nindent 8 }}
        - name: {{ include "cag.envPrefix" . }}METRICS_PORT
          value: {{ $v.metrics.port | quote }}
        - name: {{ include "cag.envPrefix" . }}METRICS_HOST
          value: "0.0.0.0"
        {{- .env | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "cag.componentName" . }}
      {{- include "cag.probes" . | nindent 6 }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      volumeMounts:
        {{- include "cag.volumeMounts" . | nindent 8 }}
        {{- with .extraMounts }}
        {{- . | nindent 8 }}
        {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumes:
    {{- include "cag.volumes" . | nindent 4 }}
    {{- with .extraVolumes }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "cag.promotionsDir" -}}
/var/lib/cag-promotions
{{- end -}}

{{/* The folder where the fallback writes approved candidates' sources and the compiler reads them (file:// URIs):
     one claim both mount, else an emptyDir each (approvals then cannot compile across pods). */}}
{{- define "cag.promotionsVolume" -}}
- name: promotions
{{- with .Values.promotions.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{/* The knowledge sources claim (root context), read-only where file:// sources are read: nothing without one. */}}
{{- define "cag.sourcesVolume" -}}
{{- with .Values.sources.existingClaim }}
- name: sources
  persistentVolumeClaim:
    claimName: {{ . }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "cag.sourcesMount" -}}
{{- if .Values.sources.existingClaim }}
- name: sources
  mountPath: {{ .Values.sources.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* A Deployment for a stateless service. */}}
{{- define "cag.deployment" -}}
{{- $c := index .root.Values .name -}}
{{- if $c.enabled }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cag.componentName" . }}
  labels:
    {{- include "cag.labels" . | nindent 4 }}
spec:
  {{- if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicaCount }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "cag.selectorLabels" . | nindent 6 }}
  template:
    {{- include "cag.podTemplate" . | nindent 4 }}
{{- end }}
{{- end -}}

{{- define "cag.service" -}}
{{- $c := index .root.Values .name -}}
{{- if $c.enabled }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cag.componentName" . }}
  labels:
    {{- include "cag.labels" . | nindent 4 }}
spec:
  type: {{ dig "service" "type" "ClusterIP" $c }}
  selector:
    {{- include "cag.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $c.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ .root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
{{- end }}
{{- end -}}

{{- define "cag.hpa" -}}
{{- $c := index .root.Values .name -}}
{{- if and $c.enabled $c.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "cag.componentName" . }}
  labels:
    {{- include "cag.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ .kind | default "Deployment" }}
    name: {{ include "cag.componentName" . }}
  minReplicas: {{ $c.autoscaling.minReplicas }}
  maxReplicas: {{ $c.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end -}}

{{- define "cag.pdb" -}}
{{- $c := index .root.Values .name -}}
{{- if and $c.enabled $c.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "cag.componentName" . }}
  labels:
    {{- include "cag.labels" . | nindent 4 }}
spec:
  minAvailable: {{ $c.pdb.minAvailable }}
  selector:
    matchLabels:
      {{- include "cag.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "cag.serviceMonitor" -}}
{{- $c := index .root.Values .name -}}
{{- $m := .root.Values.metrics -}}
{{- if and $c.enabled $m.serviceMonitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "cag.componentName" . }}
  labels:
    {{- include "cag.labels" . | nindent 4 }}
    {{- with $m.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "cag.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ $m.serviceMonitor.interval }}
{{- end }}
{{- end -}}

{{/* Ingress: the gRPC port from the release's own pods only (the router's from `networkPolicy.routerFrom`, anyone
     when empty), the metrics port from `networkPolicy.metricsFrom`. */}}
{{- define "cag.networkPolicy" -}}
{{- $v := .root.Values -}}
{{- $c := index $v .name -}}
{{- if and $c.enabled $v.networkPolicy.enabled }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "cag.componentName" . }}
  labels:
    {{- include "cag.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "cag.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - ports:
        - {port: grpc, protocol: TCP}
      {{- if eq .name "router" }}
      {{- with $v.networkPolicy.routerFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- else }}
      from:
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: {{ .root.Chart.Name }}
              app.kubernetes.io/instance: {{ .root.Release.Name }}
      {{- end }}
    - ports:
        - {port: metrics, protocol: TCP}
      {{- with $v.networkPolicy.metricsFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
{{- end -}}
