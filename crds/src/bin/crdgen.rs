//! Prints the EventStream CRD as YAML: `cargo run -p eventstream-crds --bin crdgen > crds/eventstream.yaml`.
fn main() {
    print!("{}", eventstream_crds::crd_yaml());
}
