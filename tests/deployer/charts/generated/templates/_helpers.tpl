{{/*
The password, base64-encoded: the one the values give, else the one the
release's Secret already holds (lookup finds it on a cluster, never offline),
else a new random one.
*/}}
{{- define "generated.password" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-auth" .Release.Name) -}}
{{- if .Values.auth.password -}}
{{- .Values.auth.password | b64enc -}}
{{- else if and $existing (hasKey ($existing.data | default dict) "password") -}}
{{- index $existing.data "password" -}}
{{- else -}}
{{- randAlphaNum 20 | b64enc -}}
{{- end -}}
{{- end -}}
