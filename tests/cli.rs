//! The operator binary's start-up, without a cluster.

use std::process::Command;

#[test]
fn a_metrics_port_in_use_stops_the_operator_with_a_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = busy.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_whatsapp-operator"))
        .args(["--metrics-address", &address, "--leader-election=false"])
        // Nothing to reach: the bind must fail before any client is configured.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("the operator runs");
    assert!(!out.status.success(), "the operator must not keep running without its probes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address} for metrics and probes")),
        "the reason is printed: {stderr}"
    );
}
