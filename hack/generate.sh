#!/usr/bin/env bash
# Regenerates every file derived from the Rust types: the CRD under crds/ and
# the copy the Helm chart renders (templates/crds.yaml reads it from files/crds/),
# and the API reference docs/api.md written from it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --bin crdgen > crds/whatsappnumbers.whatsapp.operators.dev.yaml
mkdir -p charts/whatsapp-operator/files/crds
cp crds/whatsappnumbers.whatsapp.operators.dev.yaml charts/whatsapp-operator/files/crds/
python3 hack/api-docs.py crds/whatsappnumbers.whatsapp.operators.dev.yaml > docs/api.md
echo "regenerated crds/, charts/whatsapp-operator/files/crds/ and docs/api.md"
