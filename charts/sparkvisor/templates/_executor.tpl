{{/*
The executor pod template (spark.kubernetes.executor.podTemplateFile). Spark
fills in the image, resources, env and ports; the template carries
scheduling (spot nodes), security and the container command.
*/}}
{{- define "sparkvisor.executorPodTemplate" -}}
{{- $e := .Values.executor -}}
apiVersion: v1
kind: Pod
metadata:
  # Not the Deployment's selector labels: executors belong to the driver pod, not to the ReplicaSet.
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/part-of: {{ include "sparkvisor.fullname" . }}
    app.kubernetes.io/component: executor
    {{- with $e.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $e.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $e.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $e.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $e.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $e.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $e.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: spark-kubernetes-executor
      {{- with $e.command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $e.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
