//! Schema gate and upgrade, build expiry, single-instance health,
//! authentication, and concurrent first starts.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn node_status(ip: &str) -> Option<Value> {
    let resp = reqwest::get(format!("http://{ip}:6252/control/status")).await.ok()?;
    resp.json().await.ok()
}

async fn schema_gate(engine: Engine) {
    let dir = test_dir("schema");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("schema", engine, &gw, &dir);
    assert!(c.upgrade("2.51.1").await.success(), "initialise the schema at 2.51");

    // A newer node waits in the UPGRADE state.
    let (newer, ip) = c.coreapp_with("new", &[("WA_EMULATOR_VERSION", "2.53.2")]);
    eventually("the newer node reports uninitialized and logs the UPGRADE state", WAIT, || async {
        let s = node_status(&ip).await?;
        (s["gateway_status"] == json!("uninitialized") && c.logs_of(newer).contains(UPGRADE_LINE)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.procs[newer].exited().is_none(), "the newer node must keep retrying");

    // The schema upgrade with the new version lets it proceed.
    assert!(c.upgrade("2.53.2").await.success());
    eventually("the newer node proceeds", WAIT, || async {
        let s = node_status(&ip).await?;
        (s["gateway_status"] != json!("uninitialized")).then_some(())
    })
    .await;

    // An older node refuses to start; the old upgrade job refuses to downgrade.
    let (older, _) = c.coreapp_with("old", &[("WA_EMULATOR_VERSION", "2.51.1")]);
    let status = c.procs[older].wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(c.logs_of(older).contains("refusing to start"), "{}", c.logs_of(older));
    let i = c.spawn("downgrade", &[("WA_DB_UPGRADE", "1"), ("WA_EMULATOR_VERSION", "2.51.1")]);
    let status = c.procs[i].wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(c.logs_of(i).contains("refusing to downgrade"), "{}", c.logs_of(i));

    // Running the current upgrade again is a no-op that succeeds.
    assert!(c.upgrade("2.53.2").await.success());

    // While a (slow) upgrade runs, the running node drops to the UPGRADE
    // state; once the schema is newer than the node, the node stops.
    let before = c.logs_of(newer).matches(UPGRADE_LINE).count();
    let job = c.spawn(
        "slow-upgrade",
        &[("WA_DB_UPGRADE", "1"), ("WA_EMULATOR_VERSION", "2.55.1"), ("WA_EMULATOR_UPGRADE_SECONDS", "3")],
    );
    eventually("the running node reports uninitialized during the upgrade", WAIT, || async {
        let s = node_status(&ip).await?;
        (s["gateway_status"] == json!("uninitialized") && c.logs_of(newer).matches(UPGRADE_LINE).count() > before)
            .then_some(())
    })
    .await;
    assert!(c.procs[job].wait_exit(WAIT).await.success());
    let status = c.procs[newer].wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(c.logs_of(newer).contains("refusing to start"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_gate_mariadb() {
    schema_gate(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_gate_postgresql() {
    schema_gate(Engine::Postgres).await;
}

/// Single-instance deployment (no multiconnect): the single health shape,
/// expiry with the clock overridden, and an unreachable coreapp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_single_health() {
    let dir = test_dir("expiry");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("expiry", Engine::Postgres, &gw, &dir);
    c.unset("WA_APP_MULTICONNECT");
    assert!(c.upgrade("2.53.2").await.success());
    let (valid, _) = c.coreapp("valid");
    let url = c.webapp(&[]);
    eventually("single-instance health shows connected", WAIT, || async {
        let (status, body) = get(&format!("{url}/v1/health")).await.ok()?;
        (status == 200 && body["health"] == json!({"gateway_status": "connected"})).then_some(())
    })
    .await;
    c.procs[valid].kill();

    // 2.53.2 was released 2024-01-10, so it expires 180 days later, 2024-07-08.
    let (expired, _) = c.coreapp_with("expired", &[("WA_EMULATOR_NOW", "2024-07-08T00:00:01Z")]);
    let body = eventually("the expired build reports disconnected with the reason", WAIT, || async {
        let (_, body) = get(&format!("{url}/v1/health")).await.ok()?;
        (body["health"]["gateway_status"] == json!("disconnected")).then_some(body)
    })
    .await;
    assert_eq!(body["health"]["errors"][0]["code"], json!(1005), "{body}");
    assert!(body["health"]["errors"][0]["details"].as_str().unwrap().contains("App Expired"), "{body}");
    assert!(c.logs_of(expired).contains("This build has expired"));
    assert!(gateway_connections(&gw).await.is_empty());

    // With the coreapp gone, the health object carries the error.
    c.procs[expired].kill();
    eventually("an unreachable coreapp gives an error object", WAIT, || async {
        let (status, body) = get(&format!("{url}/v1/health")).await.ok()?;
        (status == 200 && body["health"]["errors"][0]["code"] == json!(1011)).then_some(())
    })
    .await;
}

async fn login(url: &str, user: &str, password: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().post(format!("{url}/v1/users/login")).basic_auth(user, Some(password));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn with_bearer(url: &str, token: &str) -> u16 {
    client().get(format!("{url}/v1/health")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication() {
    let dir = test_dir("auth");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("auth", Engine::Mysql, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    let w1 = c.webapp(&[]);
    let w2 = c.webapp(&[]);
    let other = c.webapp(&[("WA_WEB_JWT_CRYPTO_KEY", "a-different-key")]);
    for url in [&w1, &w2, &other] {
        eventually("webapp answers", WAIT, || async { get(&format!("{url}/v1/health")).await.ok().map(|_| ()) }).await;
    }

    // No credentials, a wrong API key, then the right one.
    let resp = client().get(format!("{w1}/v1/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], json!(1005));
    let resp = client()
        .get(format!("{w1}/v1/health"))
        .header("Authorization", "Apikey wrong-key-wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(get(&format!("{w1}/v1/health")).await.unwrap().0, 200);

    // First login must change the password.
    let (status, body) = login(&w1, "admin", "secret", None).await;
    assert_eq!((status, body["errors"][0]["code"].clone()), (401, json!(1024)), "{body}");
    let (status, _) = login(&w1, "admin", "wrong", None).await;
    assert_eq!(status, 401);
    let (status, body) = login(&w1, "admin", "secret", Some(json!({"new_password": "weakpass"}))).await;
    assert_eq!((status, body["errors"][0]["code"].clone()), (400, json!(1009)), "{body}");
    let (status, body) = login(&w1, "admin", "secret", Some(json!({"new_password": "Str0ng!Pass"}))).await;
    assert_eq!(status, 200, "{body}");
    let token = body["users"][0]["token"].as_str().unwrap().to_string();
    assert!(body["users"][0]["expires_after"].as_str().unwrap().ends_with("+00:00"));

    // The token is valid on every webapp sharing the JWT key, and only there.
    assert_eq!(with_bearer(&w1, &token).await, 200);
    assert_eq!(with_bearer(&w2, &token).await, 200);
    assert_eq!(with_bearer(&other, &token).await, 401);
    assert_eq!(with_bearer(&w1, "not.a.token").await, 401);

    // The old password is gone; the new one logs in without a change.
    assert_eq!(login(&w2, "admin", "secret", None).await.0, 401);
    assert_eq!(login(&w2, "admin", "Str0ng!Pass", None).await.0, 200);

    let resp = client().get(format!("{w1}/metrics")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.unwrap().contains("wa_webapp_requests_total"));
    let (status, body) = get(&format!("{w1}/v1/no/such/path")).await.unwrap();
    assert_eq!((status, body["errors"][0]["code"].clone()), (404, json!(1006)));

    // A webapp with an API key outside 12-128 characters does not start.
    c.webapp(&[("WA_API_KEY", "short")]);
    let last = c.procs.len() - 1;
    assert!(!c.procs[last].wait_exit(WAIT).await.success());
}

/// Several webapps starting at once on an empty database do not race.
async fn concurrent_first_start(engine: Engine) {
    let dir = test_dir("race");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("race", engine, &gw, &dir);
    let urls: Vec<String> = (0..3).map(|_| c.webapp(&[])).collect();
    for url in &urls {
        eventually("every webapp serves", WAIT, || async {
            let (status, body) = get(&format!("{url}/v1/health")).await.ok()?;
            (status == 200 && body["health"].is_object()).then_some(())
        })
        .await;
    }
    for p in c.procs.iter_mut() {
        assert!(p.exited().is_none(), "{} exited:\n{}", p.name, p.logs());
    }
    let initialised = c.procs.iter().filter(|p| p.logs().contains("initialising the schema")).count();
    assert_eq!(initialised, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_start_mariadb() {
    concurrent_first_start(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_start_postgresql() {
    concurrent_first_start(Engine::Postgres).await;
}

/// The webapp serves a given certificate instead of its self-signed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_certificate() {
    let dir = test_dir("cert");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("cert", Engine::Mysql, &gw, &dir);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let url = c.webapp(&[
        ("WA_EMULATOR_TLS_CERT_FILE", cert.to_str().unwrap()),
        ("WA_EMULATOR_TLS_KEY_FILE", key.to_str().unwrap()),
    ]);
    let url = url.replace("127.0.0.1", "localhost");
    // Trust only the given certificate: the handshake verifies it.
    let strict = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually("the webapp serves the given certificate", WAIT, || async {
        let resp = strict
            .get(format!("{url}/v1/health"))
            .header("Authorization", format!("Apikey {API_KEY}"))
            .send()
            .await
            .ok()?;
        (resp.status().as_u16() == 200).then_some(())
    })
    .await;
}

/// `WA_DB_SSL_CA`: TLS to the database, verified against the given CA.
async fn database_tls(engine: Engine) {
    let dir = test_dir("dbtls");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("dbtls", engine, &gw, &dir);
    let ca = c.server.ssl_ca.clone();
    c.set("WA_DB_SSL_CA", &ca);
    assert!(c.upgrade("2.53.2").await.success(), "upgrade over TLS");
    let url = c.webapp(&[]);
    eventually("the webapp serves over a TLS database connection", WAIT, || async {
        let (status, _) = get(&format!("{url}/v1/health")).await.ok()?;
        (status == 200).then_some(())
    })
    .await;

    // A CA that did not sign the server's certificate is refused.
    let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_string()]).unwrap();
    let wrong = dir.join(format!("wrong-ca-{}.pem", c.db));
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    c.set("WA_DB_SSL_CA", wrong.to_str().unwrap());
    let status = c.upgrade("2.53.2").await;
    assert!(!status.success(), "a wrong CA must fail the connection");
    let last = c.procs.len() - 1;
    assert!(c.logs_of(last).contains("certificate"), "{}", c.logs_of(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tls_mariadb() {
    database_tls(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tls_postgresql() {
    database_tls(Engine::Postgres).await;
}
