//! The image's files: the start scripts Meta's templates call by absolute
//! path, and no usable default command.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn docker(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)
}

#[test]
fn dockerfile_ships_the_scripts_without_a_default_command() {
    let text = std::fs::read_to_string(docker("Dockerfile")).unwrap();
    for script in ["launch_within_docker.sh", "wait_on_mysql.sh", "wait_on_postgres.sh"] {
        assert!(text.contains(&format!("emulator/docker/{script}")), "{script} is not copied");
        let mode = std::fs::metadata(docker(&format!("docker/{script}"))).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
    assert!(text.contains(" /opt/whatsapp/bin/\n"), "scripts go to /opt/whatsapp/bin");
    let cmd = text.lines().rfind(|l| l.starts_with("CMD")).expect("a CMD line");
    assert!(!cmd.contains("\"/"), "the default command must not be usable: {cmd}");
    assert!(!text.lines().any(|l| l.starts_with("ENTRYPOINT")));
    assert!(text.contains("ARG BASE_IMAGE="));
}

fn run(script: &str, port: &str, args: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(docker(&format!("docker/{script}")))
        .args(args)
        .env("WA_DB_HOSTNAME", "127.0.0.1")
        .env("WA_DB_PORT", port)
        .env("WA_DB_WAIT_SECONDS", "2")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text, started.elapsed())
}

#[test]
fn wait_scripts_wait_for_the_database_then_run_their_arguments() {
    let (my, pg) = common::servers();
    for (script, port) in [("wait_on_mysql.sh", &my.port), ("wait_on_postgres.sh", &pg.port)] {
        let (ok, out, _) = run(script, port, &["echo", "started", "with args"]);
        assert!(ok, "{script}: {out}");
        assert!(out.contains("started with args"), "{script}: {out}");
        // A closed port: it waits, then gives up.
        let closed = common::free_port().to_string();
        let (ok, out, took) = run(script, &closed, &["echo", "started"]);
        assert!(!ok && !out.contains("started") && out.contains("not reachable"), "{script}: {out}");
        assert!(took >= Duration::from_secs(1), "{script} did not wait");
    }
    let text = std::fs::read_to_string(docker("docker/wait_on_postgres.sh")).unwrap();
    assert!(text.contains("WA_DB_PORT:-5432"));
}
