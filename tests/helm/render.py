"""Renders the Helm chart offline with Helm's own engine and validates the result.

Used by tests/chart.rs (the assertions live there). Reads one JSON request on
stdin and writes one JSON answer on stdout:

  request: {"chart": DIR, "values_files": [FILE...], "values": {...},
            "release": NAME, "namespace": NS, "kube_versions": ["1.29.0", "latest"]}
           or {"chart": DIR, "default_values": true}
  answer:  {"ok": true, "documents": [{"template": PATH, "object": {...}}],
            "embedded": [{"configmap": NAME, "key": KEY, "object": {...}}],
            "validation": [{"kind", "name", "kube_version", "status", "message"}],
            "lint": {...}}
           or {"ok": false, "stage": "values" | "render", "error": TEXT, "lint": {...}}

Rendering uses helm-python-sdk (Helm's Go SDK: schema validation, templates,
`fail` messages); every manifest, and the executor pod template embedded in
the ConfigMap, is checked with kubernetes-validate in strict mode.
"""

import json
import sys

HINT = (
    "run `make test` (it installs requirements-test.txt into .venv) or "
    "`.venv/bin/pip install -r requirements-test.txt`"
)

try:
    import helm_python as helm
except ImportError as e:  # fail loudly: the chart tests never skip
    print(json.dumps({"ok": False, "stage": "setup",
                      "error": f"helm-python-sdk is missing ({e}): {HINT}"}))
    sys.exit(3)
try:
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
    import yaml
except ImportError as e:
    print(json.dumps({"ok": False, "stage": "setup",
                      "error": f"kubernetes-validate is missing ({e}): {HINT}"}))
    sys.exit(3)

# Kinds that come from CRDs; kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}


def merge(base, top):
    """Values-file layering: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for k, v in top.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return top


def kube_version(v):
    if v == "latest":
        return kv_utils.latest_version() + ".0"
    return v


def validate(obj, versions, label):
    results = []
    for v in versions:
        entry = {"kind": obj.get("kind"), "name": label, "kube_version": v}
        try:
            kubernetes_validate.validate(obj, v, strict=True)
            entry["status"] = "valid"
        except kv_utils.SchemaNotFoundError as e:
            entry["status"] = "no-schema"
            entry["message"] = str(e)
        except kubernetes_validate.ValidationError as e:
            entry["status"] = "invalid"
            path = "/".join(str(p) for p in e.path)
            entry["message"] = f"{path}: {e.message}"
        results.append(entry)
    return results


def main():
    req = json.load(sys.stdin)
    chart_dir = req["chart"]
    chart = helm.Chart.load(chart_dir)
    if req.get("default_values"):
        print(json.dumps({"ok": True, "values": chart.values}))
        return

    values = {}
    for f in req.get("values_files", []):
        with open(f) as fh:
            values = merge(values, helm.values_from_yaml(fh.read()) or {})
    values = merge(values, req.get("values") or {})

    lint = helm.lint(chart_dir, values, strict=True, namespace=req["namespace"])
    try:
        manifests = chart.render(values=values, name=req["release"],
                                 namespace=req["namespace"], is_install=True)
    except helm.HelmValuesError as e:
        print(json.dumps({"ok": False, "stage": "values", "error": str(e), "lint": lint}))
        return
    except helm.HelmError as e:
        print(json.dumps({"ok": False, "stage": "render", "error": str(e), "lint": lint}))
        return

    versions = [kube_version(v) for v in req.get("kube_versions", [])]
    documents, embedded, validation = [], [], []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            documents.append({"template": path, "object": obj})
            label = f'{obj.get("kind")}/{obj.get("metadata", {}).get("name")}'
            validation += validate(obj, versions, label)
            if obj.get("kind") == "ConfigMap":
                for key, data in (obj.get("data") or {}).items():
                    if key.endswith(".yaml"):
                        inner = yaml.safe_load(data)
                        embedded.append({"configmap": obj["metadata"]["name"],
                                         "key": key, "object": inner})
                        validation += validate(inner, versions, f"{label}:{key}")

    print(json.dumps({
        "ok": True,
        "documents": documents,
        "embedded": embedded,
        "validation": validation,
        "lint": lint,
        "notes": next((t for p, t in manifests.items() if p.endswith("NOTES.txt")), ""),
    }))


if __name__ == "__main__":
    main()
