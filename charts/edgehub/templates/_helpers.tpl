{{/* The chart's name, cut to 63 characters (a DNS label). */}}
{{- define "edgehub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: RELEASE-CHART, or the release name when it already holds the chart's. */}}
{{- define "edgehub.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "edgehub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgehub.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgehub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "edgehub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgecollab
{{- end -}}

{{- define "edgehub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "edgehub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "edgehub.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "edgehub.mosquittoImage" -}}
{{- if .Values.mosquitto.image.repository -}}
{{- printf "%s:%s" .Values.mosquitto.image.repository (.Values.mosquitto.image.tag | default "latest") -}}
{{- else -}}
{{- include "edgehub.image" . -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the hub CA: the user's, or the chart's own ("" when the CA lives on the PVC only). */}}
{{- define "edgehub.caSecretName" -}}
{{- if .Values.ca.existingSecret -}}
{{- .Values.ca.existingSecret -}}
{{- else if .Values.ca.storeInSecret -}}
{{- printf "%s-ca" (include "edgehub.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Service's in-cluster DNS names (the hub's allowed_hosts and the broker's certificate carry them). */}}
{{- define "edgehub.serviceNames" -}}
{{- $svc := include "edgehub.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/*
The data of the CA Secret the chart renders, given what `lookup` found (a Secret object, or an empty
map offline and at first install): its hub.key and hub-ca.crt when it holds both, so an upgrade
carries the CA the init container stored there; else nothing (the init container fills it).
Called as: include "edgehub.caSecretData" (dict "existing" (lookup "v1" "Secret" NAMESPACE NAME))
*/}}
{{- define "edgehub.caSecretData" -}}
{{- $data := dict -}}
{{- with .existing -}}
{{- $data = (get . "data") | default dict -}}
{{- end -}}
{{- if and (hasKey $data "hub.key") (hasKey $data "hub-ca.crt") -}}
hub.key: {{ get $data "hub.key" | quote }}
hub-ca.crt: {{ get $data "hub-ca.crt" | quote }}
{{- end -}}
{{- end -}}

{{/* The hub's settings file: the values' settings with the keys the chart owns. */}}
{{- define "edgehub.settings" -}}
{{- $s := deepCopy .Values.settings -}}
{{- $_ := set $s "state_dir" "/data/hub" -}}
{{- $_ = set $s "listen_host" "0.0.0.0" -}}
{{- $_ = set $s "listen_port" (int .Values.service.port) -}}
{{- $hosts := concat (include "edgehub.serviceNames" . | fromJsonArray) .Values.service.extraNames .Values.settings.allowed_hosts | uniq -}}
{{- $_ = set $s "allowed_hosts" $hosts -}}
{{- if not $s.mqtt_url -}}
{{- if not .Values.mosquitto.enabled -}}
{{- fail "settings.mqtt_url is required when mosquitto.enabled is false (the hub needs a broker: mqtts://HOST:PORT)" -}}
{{- end -}}
{{- $_ = set $s "mqtt_url" (printf "mqtts://127.0.0.1:%d" (int .Values.service.mqttPort)) -}}
{{- end -}}
{{- if and (not $s.mqtt_advertise_url) .Values.mosquitto.enabled -}}
{{- $_ = set $s "mqtt_advertise_url" (printf "mqtts://%s.%s.svc:%d" (include "edgehub.fullname" .) .Release.Namespace (int .Values.service.mqttPort)) -}}
{{- end -}}
{{- if not $s.mqtt_advertise_url -}}
{{- $_ = unset $s "mqtt_advertise_url" -}}
{{- end -}}
{{- toPrettyJson $s -}}
{{- end -}}

{{/* The API's probe scheme: HTTPS unless tls is off (listening on 0.0.0.0, auto means on). */}}
{{- define "edgehub.scheme" -}}
{{- if eq (toString .Values.settings.tls) "off" -}}HTTP{{- else -}}HTTPS{{- end -}}
{{- end -}}
