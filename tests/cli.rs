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

fn operator() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_whatsapp-operator"));
    // `render` needs no cluster: make sure it reaches none.
    command.env("KUBECONFIG", "/nonexistent/kubeconfig").env_remove("KUBERNETES_SERVICE_HOST");
    command
}

#[test]
fn render_prints_every_object_of_an_example_without_a_cluster() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/multiconnect-postgresql.yaml");
    let out = operator().args(["render", example]).output().expect("the operator runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).expect("UTF-8");
    for kind in ["Secret", "ConfigMap", "Job", "StatefulSet", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(yaml.contains(&format!("\nkind: {kind}\n")), "a {kind} in:\n{yaml}");
    }
    assert!(yaml.contains("WA_DB_ENGINE: PGSQL"), "the example's engine, as the client names it");
    assert!(yaml.contains("/opt/whatsapp/bin/wait_on_postgres.sh"), "the explicit command");
    assert!(!yaml.contains("kind: WhatsAppNumber"), "the input itself is not printed");
}

#[test]
fn render_reads_standard_input_and_refuses_what_is_not_a_whatsappnumber() {
    use std::io::Write as _;
    use std::process::Stdio;
    let run = |input: &str| {
        let mut child = operator()
            .args(["render", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the operator runs");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("written");
        child.wait_with_output().expect("it ends")
    };
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ha-mysql.yaml")).unwrap();
    let out = run(&example);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("WA_DB_ENGINE: MYSQL"));

    let out = run("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no WhatsAppNumber"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = operator().args(["render", "/nonexistent/file.yaml"]).output().expect("the operator runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/file.yaml"));
}
