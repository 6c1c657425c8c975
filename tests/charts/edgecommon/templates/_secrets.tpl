{{/*
A password for key .key of Secret .secret: the value given in .provided if any,
else the one the existing Secret holds (lookup), else a new random one. This is
how public charts keep a generated password across upgrades.
Usage: {{ include "edgecommon.password" (dict "secret" NAME "key" KEY "provided" VALUE "context" $) }}
*/}}
{{- define "edgecommon.password" -}}
{{- $existing := lookup "v1" "Secret" .context.Release.Namespace .secret -}}
{{- if .provided -}}
{{- .provided | b64enc | quote -}}
{{- else if and $existing (index $existing.data .key) -}}
{{- index $existing.data .key | quote -}}
{{- else -}}
{{- randAlphaNum 20 | b64enc | quote -}}
{{- end -}}
{{- end -}}
