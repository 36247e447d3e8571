{{/* Labels every object of the release carries. */}}
{{- define "gpudra.labels" -}}
app.kubernetes.io/part-of: gpudra
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The plugin pods of the release, whichever vendor: what the NetworkPolicy and the Service select. */}}
{{- define "gpudra.pluginSelector" -}}
app.kubernetes.io/component: kubelet-plugin
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpudra.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The service account's user name, as the apiserver puts it in a request's userInfo. */}}
{{- define "gpudra.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ .Values.serviceAccount.name }}
{{- end }}

{{/* The vendors a release deploys, in a fixed order: [{key, values}]. */}}
{{- define "gpudra.vendors" -}}
{{- $out := list -}}
{{- range $key := list "nvidia" "amd" "mock" -}}
{{- $v := index $.Values $key -}}
{{- if $v.enabled -}}
{{- $out = append $out $key -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end }}

{{/*
Node affinity of one vendor's DaemonSet (context: dict "root" $ "vendor" key). A node runs exactly one plugin:
- gpudra.io/vendor (vendorLabel), when an admin set it, decides alone: nvidia, amd, or anything else (none);
- otherwise a vendor's detection labels ("true") choose it, and a node with both NVIDIA and AMD labels runs
  the NVIDIA plugin (as `--backend auto` would pick NVML), unless the NVIDIA DaemonSet is disabled.
Terms are ORed, the expressions of one term ANDed; NotIn also matches a node without the label.
*/}}
{{- define "gpudra.nodeAffinity" -}}
{{- $root := .root -}}
{{- $key := .vendor -}}
{{- $v := index $root.Values $key -}}
{{- $vendorLabel := $root.Values.vendorLabel -}}
{{- if $v.affinity -}}
{{ toYaml $v.affinity }}
{{- else -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
{{- if eq $key "mock" }}
    - matchExpressions:
      - {key: {{ $v.nodeLabel }}, operator: In, values: ["true"]}
{{- else }}
{{- range $label := $v.nodeLabels }}
    - matchExpressions:
      - {key: {{ $label }}, operator: In, values: ["true"]}
      - {key: {{ $vendorLabel }}, operator: DoesNotExist}
{{- if and (eq $key "amd") $root.Values.nvidia.enabled }}
{{- range $nvidia := $root.Values.nvidia.nodeLabels }}
      - {key: {{ $nvidia }}, operator: NotIn, values: ["true"]}
{{- end }}
{{- end }}
{{- end }}
    - matchExpressions:
      - {key: {{ $vendorLabel }}, operator: In, values: [{{ $key | quote }}]}
{{- end }}
{{- end }}
{{- end }}
