{{/* Names and labels shared by every template. */}}

{{- define "sidegate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sidegate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sidegate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sidegate.serviceAccountName" -}}
{{- default (include "sidegate.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The image by digest when one is given, else by tag (the chart's appVersion by default). */}}
{{- define "sidegate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "sidegate.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "sidegate.fullname" .)) .Values.webhook.certificate.existingSecret -}}
{{- end -}}

{{- define "sidegate.brokerSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "sidegate.brokerName" -}}
{{- printf "%s-broker" (include "sidegate.fullname" .) -}}
{{- end -}}

{{- define "sidegate.brokerSecretName" -}}
{{- default (printf "%s-broker-tls" (include "sidegate.fullname" .)) .Values.broker.certificate.existingSecret -}}
{{- end -}}

{{/* Where injected sidecars reach the broker: its Service, by the cluster DNS name its certificate holds. */}}
{{- define "sidegate.brokerURL" -}}
{{- printf "https://%s.%s.svc:%v" (include "sidegate.brokerName" .) .Release.Namespace .Values.broker.port -}}
{{- end -}}

{{/* The hardened container securityContext every Sidegate pod uses; with userIds=platform
the platform (OpenShift's SCC) assigns the ids. */}}
{{- define "sidegate.containerSecurityContext" -}}
runAsNonRoot: true
{{- if eq .Values.userIds "fixed" }}
runAsUser: 65532
runAsGroup: 65532
{{- end }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sidegate.podSecurityContext" -}}
runAsNonRoot: true
{{- if eq .Values.userIds "fixed" }}
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The webhook configurations' annotations: the user's, and cert-manager's CA injection. */}}
{{- define "sidegate.webhookAnnotations" -}}
{{- $annotations := deepCopy .Values.webhook.annotations }}
{{- if .Values.certManager.enabled }}
{{- $_ := set $annotations "cert-manager.io/inject-ca-from" (printf "%s/%s-webhook" .Release.Namespace (include "sidegate.fullname" .)) }}
{{- end }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Namespaces whose pods are sent to the webhooks: the selected ones, never the release's own or
the system namespaces (kube-system, kube-public, kube-node-lease).
*/}}
{{/*
The guard's namespaces: every one but the system namespaces and the release namespace, and
any the values exclude explicitly (matchExpressions), never only those carrying the opt-in
label. The guard is what stops a namespace admin from exec-ing into a sidecar, or running a
hand-made one, and those need no label; its matchConditions keep it from being sent
anything else, so an operator outage holds up nothing that does not touch a sidecar.
*/}}
{{- define "sidegate.guardNamespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [{{ .Release.Namespace | quote }}, "kube-system", "kube-public", "kube-node-lease"]
  {{- with .Values.webhook.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "sidegate.webhookNamespaceSelector" -}}
{{- with .Values.webhook.namespaceSelector.matchLabels }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [{{ .Release.Namespace | quote }}, "kube-system", "kube-public", "kube-node-lease"]
  {{- with .Values.webhook.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The guard's matchCondition (CEL): an exec whose container may be the sidecar, or a pod with
anything of Sidegate's in it: a container named sidegate, a sidegate-* volume, or a projected
token for the broker's audience. The same test as the operator's injection.carries_sidegate.
*/}}
{{- define "sidegate.guardCondition" -}}
request.subResource == 'exec'
  ? (!has(object.container) || object.container == 'sidegate')
  : ((has(object.spec.initContainers) && object.spec.initContainers.exists(c, c.name == 'sidegate'))
    || (has(object.spec.containers) && object.spec.containers.exists(c, c.name == 'sidegate'))
    || (has(object.spec.ephemeralContainers) && object.spec.ephemeralContainers.exists(c, c.name == 'sidegate'))
    || (has(object.spec.volumes) && object.spec.volumes.exists(v, v.name.startsWith('sidegate-')
      || (has(v.projected) && has(v.projected.sources) && v.projected.sources.exists(s,
        has(s.serviceAccountToken) && has(s.serviceAccountToken.audience)
        && s.serviceAccountToken.audience == {{ .Values.broker.audience | squote }})))))
{{- end }}

{{/*
NetworkPolicy egress rules every Sidegate pod shares (values: networkPolicy). DNS only to the
configured DNS pods (kube-dns by default); the API server only at its configured addresses.
An empty apiServerCIDRs fails the render unless allowAnyAPIServerAddress says, explicitly,
that egress on the API server's ports may go anywhere.
*/}}
{{- define "sidegate.dnsEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{- define "sidegate.apiServerEgress" -}}
{{- $policy := .Values.networkPolicy }}
{{- if and (not $policy.apiServerCIDRs) (not $policy.allowAnyAPIServerAddress) }}
{{- fail "networkPolicy.apiServerCIDRs is empty: the NetworkPolicies would have to let the operator, webhook, broker and cleanup pods reach ports 443/6443 of any address. Set it to the API server's addresses as pods reach them (after the kubernetes Service's DNAT), e.g. the /32 of each address in: kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes -o jsonpath='{.items[*].endpoints[*].addresses[*]}' ; or set networkPolicy.allowAnyAPIServerAddress=true to accept any address (docs/install.md, NetworkPolicies)" }}
{{- end }}
- ports:
    {{- range $policy.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- if $policy.apiServerCIDRs }}
  to:
    {{- range $policy.apiServerCIDRs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* The ClusterKopfPeering the operator replicas elect their leader in (cluster-scoped). */}}
{{- define "sidegate.peeringName" -}}
{{- printf "%s-%s" (include "sidegate.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The webhook Deployment's pods (the webhook Service selects them). */}}
{{- define "sidegate.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{/* "true" when the operator keeps the webhook's CA and serving certificate (neither
cert-manager nor an existing Secret provides them). */}}
{{- define "sidegate.operatorKeepsWebhookTLS" -}}
{{- if and .Values.webhook.enabled (not .Values.certManager.enabled) (not .Values.webhook.certificate.existingSecret) -}}
true
{{- end -}}
{{- end -}}

{{/* The PodDisruptionBudget of a Deployment of replicas (webhook, broker): none for a single
replica, whose budget could only be `minAvailable: 1` of 1 and would refuse every eviction,
so that no node drain holding it ever finished (kubectl drain retries for ever); and a
render failure for a minAvailable that leaves no replica to evict. Arguments: root (.),
name, component ("webhook" or "broker", the values key), selector (rendered labels). */}}
{{- define "sidegate.podDisruptionBudget" -}}
{{- $values := get .root.Values .component -}}
{{- $replicas := int $values.replicas -}}
{{- $minAvailable := int $values.podDisruptionBudget.minAvailable -}}
{{- if gt $replicas 1 -}}
{{- if ge $minAvailable $replicas -}}
{{- fail (printf "%s.podDisruptionBudget.minAvailable (%d) must be below %s.replicas (%d), or no %s pod could ever be evicted and node drains would never finish" .component $minAvailable .component $replicas .component) -}}
{{- end }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "sidegate.labels" .root | nindent 4 }}
spec:
  minAvailable: {{ $minAvailable }}
  selector:
    matchLabels:
      {{- .selector | nindent 6 }}
---
{{- end -}}
{{- end -}}
