#!/usr/bin/env bash
# Regenerates every file derived from the Rust types: the CRDs under crds/ and
# the copy the Helm chart renders (templates/crds.yaml reads it from files/crds/),
# and the API reference docs/api.md written from it.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f crds/*.yaml charts/whatsapp-operator/files/crds/*.yaml
cargo run --quiet --bin crdgen -- crds
mkdir -p charts/whatsapp-operator/files/crds
cp crds/*.yaml charts/whatsapp-operator/files/crds/
python3 hack/api-docs.py crds/whatsappnumbers.whatsapp.operators.dev.yaml > docs/api.md
echo "regenerated crds/, charts/whatsapp-operator/files/crds/ and docs/api.md"
