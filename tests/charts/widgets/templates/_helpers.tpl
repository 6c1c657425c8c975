{{- define "widgets.labels" -}}
app.kubernetes.io/name: widgets
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "widgets.hookJob" -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .root.Release.Name }}-{{ .name }}
  labels: {{- include "widgets.labels" .root | nindent 4 }}
  annotations:
    helm.sh/hook: {{ .events }}
    helm.sh/hook-weight: {{ .weight | quote }}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels:
        {{- include "widgets.labels" .root | nindent 8 }}
        app.kubernetes.io/component: hook
    spec:
      restartPolicy: Never
      securityContext: {{- toYaml .root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: {{ .root.Values.image }}
          command: [sh, -c, "echo {{ .name }} {{ .root.Release.Name }}"]
{{- end }}
