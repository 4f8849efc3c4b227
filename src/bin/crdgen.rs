//! Prints the CustomResourceDefinitions as YAML; `crds/` is generated from it.

fn main() {
    print!("{}", whatsapp_operator::api::crd_yaml());
}
