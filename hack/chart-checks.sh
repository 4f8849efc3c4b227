#!/usr/bin/env bash
# Checks of the Helm chart beyond `helm lint` and `helm template`:
#   1. the CRD the chart renders is the generated one (files/crds/ and crds/),
#      plus the release's labels and helm.sh/resource-policy: keep;
#   2. the PrometheusRule, rendered with every ci/ values file that enables it
#      and with the defaults, passes `promtool check rules`, and the defaults
#      pass the unit tests in tests/alerts/ (`promtool test rules`);
#   3. every query of the Grafana dashboard parses as PromQL;
#   4. the values table of docs/helm.md (hack/helm-docs.sh) and the API
#      reference docs/api.md (hack/api-docs.py) are up to date;
#   5. the examples beside the chart: the kustomize overlays build, each
#      environment has its own phone number, the release catalog's entries
#      are well formed, the GitOps manifests parse.
# promtool and helm-docs come from hack/check-tools.sh, helm and kubectl from
# hack/tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=charts/whatsapp-operator
TOOLS="$(hack/tools.sh ensure)"
HELM="${HELM:-$TOOLS/helm}"
KUBECTL="${KUBECTL:-$TOOLS/kubectl}"
PROMTOOL="$(hack/check-tools.sh promtool)"
log() { echo "[chart-checks] $*" >&2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

render() { # <output> [helm template args...]
  local out="$1"; shift
  "$HELM" template whatsapp-operator "$CHART" --namespace whatsapp-operator "$@" > "$out"
}

log "the rendered CRD is the generated one"
render "$work/crds.yaml" --show-only templates/crds.yaml
python3 - "$work/crds.yaml" crds/*.yaml <<'PY'
import sys, yaml
rendered = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
generated = [d for f in sys.argv[2:] for d in yaml.safe_load_all(open(f)) if d]
by_name = {d["metadata"]["name"]: d for d in generated}
assert len(rendered) == len(generated), f"{len(rendered)} CRDs rendered, {len(generated)} generated"
for crd in rendered:
    meta = crd["metadata"]
    name = meta["name"]
    assert meta.get("annotations", {}).get("helm.sh/resource-policy") == "keep", f"{name}: not kept on uninstall"
    assert meta.get("labels", {}).get("app.kubernetes.io/managed-by") == "Helm", f"{name}: no release labels"
    meta.pop("annotations"); meta.pop("labels")
    if crd != by_name[name]:
        sys.exit(f"{name}: the rendered CRD differs from crds/ (beyond labels and annotations)")
PY
render "$work/no-crds.yaml" --set crds.create=false
if grep -q '^kind: CustomResourceDefinition' "$work/no-crds.yaml"; then
  log "crds.create=false still renders a CRD"; exit 1
fi

rules() { # <output> [helm template args...]: the PrometheusRule's spec, as a rules file
  local out="$1"; shift
  render "$work/rule.yaml" --show-only templates/prometheusrule.yaml "$@"
  python3 -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], open(sys.argv[2], "w"), sort_keys=False)' \
    "$work/rule.yaml" "$out"
}

log "alerts: promtool check rules and promtool test rules"
for values in "$CHART"/ci/*.yaml; do
  grep -q 'prometheusRule:' "$values" || continue
  rules "$work/ci.rules.yaml" -f "$values"
  "$PROMTOOL" check rules "$work/ci.rules.yaml" >/dev/null
done
mkdir -p "$work/alerts"
rules "$work/alerts/whatsapp-operator.rules.yaml" --set metrics.prometheusRule.enabled=true
"$PROMTOOL" check rules "$work/alerts/whatsapp-operator.rules.yaml" >/dev/null
# Every runbook link, and every condition reason of the GitOps fixtures, has
# its section in docs/troubleshooting.md.
python3 - "$work/alerts/whatsapp-operator.rules.yaml" docs/troubleshooting.md \
  deploy/argocd/resource_customizations/*/*/testdata/*.yaml <<'PY'
import re, sys, yaml
rules, doc, fixtures = sys.argv[1], sys.argv[2], sys.argv[3:]
anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+ (.+)$", open(doc).read(), re.M)}
missing = []
for group in yaml.safe_load(open(rules))["groups"]:
    for rule in group["rules"]:
        url = rule["annotations"]["runbook_url"]
        if url.split("#")[1] not in anchors:
            missing.append(f"runbook of {rule['alert']}: #{url.split('#')[1]}")
# Reasons that say all is well need no section.
fine = {"AsExpected", "Reconciled", "NotStalled", "NumberClaimed", "Valid", "GatewayConnected", "Suspended"}
for f in fixtures:
    for c in (yaml.safe_load(open(f)).get("status") or {}).get("conditions") or []:
        if c["reason"] not in fine and c["reason"].lower() not in anchors:
            missing.append(f"reason {c['reason']} ({f})")
if missing:
    sys.exit("docs/troubleshooting.md has no section for:\n  " + "\n  ".join(sorted(set(missing))))
PY
cp tests/alerts/*_test.yaml "$work/alerts/"
(cd "$work/alerts" && "$PROMTOOL" test rules ./*_test.yaml)

log "dashboard: every query parses"
python3 - "$CHART/files/dashboards/whatsapp-operator.json" "$work/dashboard.rules.yaml" <<'PY'
import json, sys, yaml
board = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            exprs.append((p["title"], t["expr"]))
walk(board["panels"])
assert exprs, "the dashboard has no queries"
subst = {"$__rate_interval": "5m", "$job": ".*", "$namespace": ".*", "$number": ".*"}
rules = []
for i, (title, expr) in enumerate(exprs):
    for k, v in subst.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"{title}: unknown variable in {expr}"
    rules.append({"record": f"dashboard:query_{i}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
PY
"$PROMTOOL" check rules "$work/dashboard.rules.yaml" >/dev/null

log "docs/helm.md values table, docs/api.md"
hack/helm-docs.sh check
python3 hack/api-docs.py crds/whatsappnumbers.whatsapp.operators.dev.yaml > "$work/api.md"
if ! diff -u docs/api.md "$work/api.md"; then
  log "docs/api.md is out of date with the CRD; run hack/generate.sh"; exit 1
fi

log "examples: kustomize overlays, release catalog, GitOps manifests"
for overlay in examples/kustomize/overlays/*/; do
  "$KUBECTL" kustomize "$overlay" > "$work/overlay-$(basename "$overlay").yaml"
done
python3 - "$work" <<'PY'
import datetime, glob, os, re, sys, yaml
work = sys.argv[1]
numbers = {}
for f in sorted(glob.glob(os.path.join(work, "overlay-*.yaml"))):
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    wans = [d for d in docs if d["kind"] == "WhatsAppNumber"]
    assert wans, f"{f}: no WhatsAppNumber"
    for w in wans:
        n = w["spec"]["phoneNumber"]
        assert re.fullmatch(r"\+[1-9][0-9]{6,14}", n), f"{f}: bad phone number {n}"
        assert n not in numbers, f"{f}: {n} is also used by {numbers[n]}: one number per environment"
        numbers[n] = f
        assert w["metadata"].get("namespace"), f"{f}: no namespace"
cm = yaml.safe_load(open("examples/release-catalog.yaml"))
assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "whatsapp-operator-release-catalog"
entries = yaml.safe_load(cm["data"]["catalog.yaml"])
versions = {e["version"] for e in entries}
assert {"2.53.2", "2.55.1"} <= versions, versions
for e in entries:
    assert isinstance(e["version"], str) and re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", e["version"]), e
    released = datetime.date.fromisoformat(e["releasedAt"])
    expires = datetime.date.fromisoformat(e.get("expiresAt") or (released + datetime.timedelta(days=180)).isoformat())
    assert expires > released, e
for f in glob.glob("examples/gitops/*.yaml"):
    assert [d for d in yaml.safe_load_all(open(f)) if d], f
PY
