#!/usr/bin/env bash
# The values table of docs/helm.md is generated from the comments of
# charts/whatsapp-operator/values.yaml with helm-docs (built and cached by
# hack/check-tools.sh) and sits between the markers
#   <!-- values-table:start -->  and  <!-- values-table:end -->
# Usage: hack/helm-docs.sh          rewrite the table in docs/helm.md
#        hack/helm-docs.sh check    fail if docs/helm.md is not up to date
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=charts/whatsapp-operator
DOC=docs/helm.md
mode="${1:-write}"
helm_docs="$(hack/check-tools.sh helm-docs)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$CHART" "$work/chart"
echo '{{ template "chart.valuesTable" . }}' > "$work/chart/values-table.md.gotmpl"
"$helm_docs" --chart-search-root "$work/chart" --template-files values-table.md.gotmpl \
  --output-file values-table.md --sort-values-order file --log-level warning
# helm-docs ends the table with blank lines; keep exactly one newline.
sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$work/chart/values-table.md" > "$work/table.md"

python3 - "$DOC" "$work/table.md" "$work/doc.md" <<'PY'
import sys
doc, table, out = sys.argv[1:]
text = open(doc, encoding="utf-8").read()
start, end = "<!-- values-table:start -->", "<!-- values-table:end -->"
if text.count(start) != 1 or text.count(end) != 1:
    sys.exit(f"{doc}: needs exactly one {start} and one {end}")
head, rest = text.split(start)
_, tail = rest.split(end)
body = open(table, encoding="utf-8").read().strip("\n")
open(out, "w", encoding="utf-8").write(f"{head}{start}\n{body}\n{end}{tail}")
PY

if [ "$mode" = check ]; then
  if ! diff -u "$DOC" "$work/doc.md"; then
    echo "$DOC: the values table is out of date; run hack/helm-docs.sh" >&2
    exit 1
  fi
else
  cp "$work/doc.md" "$DOC"
fi
