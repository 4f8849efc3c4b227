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

    // A newer node logs the UPGRADE state and exits, without opening its ports.
    let (newer, ip) = c.coreapp_with("new", &[("WA_EMULATOR_VERSION", "2.53.2")]);
    let status = c.procs[newer].wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(c.logs_of(newer).contains(UPGRADE_LINE), "{}", c.logs_of(newer));
    assert!(c.logs_of(newer).contains("exit!"), "{}", c.logs_of(newer));
    assert!(node_status(&ip).await.is_none(), "the control port must not be open");
    // So does a newer webapp.
    c.webapp(&[("WA_EMULATOR_VERSION", "2.53.2")]);
    let web = c.procs.len() - 1;
    assert!(!c.procs[web].wait_exit(WAIT).await.success());
    assert!(c.logs_of(web).contains(UPGRADE_LINE), "{}", c.logs_of(web));

    // After the schema upgrade with the new version, the node starts (as its
    // orchestrator would restart it).
    assert!(c.upgrade("2.53.2").await.success());
    let (newer, ip) = c.coreapp_with("new2", &[("WA_EMULATOR_VERSION", "2.53.2")]);
    eventually("the newer node proceeds", WAIT, || async {
        let s = node_status(&ip).await?;
        (s["gateway_status"] != json!("uninitialized")).then_some(())
    })
    .await;

    // An older node logs the same line and refuses to start; the old upgrade
    // job refuses to downgrade.
    let (older, _) = c.coreapp_with("old", &[("WA_EMULATOR_VERSION", "2.51.1")]);
    let status = c.procs[older].wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(c.logs_of(older).contains(UPGRADE_LINE), "{}", c.logs_of(older));
    assert!(c.logs_of(older).contains("refusing to start"), "{}", c.logs_of(older));
    let i = c.spawn("downgrade", &[("WA_DB_UPGRADE", "1"), ("WA_EMULATOR_VERSION", "2.51.1")]);
    let status = c.procs[i].wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(c.logs_of(i).contains("refusing to downgrade"), "{}", c.logs_of(i));

    // Running the current upgrade again is a no-op that succeeds.
    assert!(c.upgrade("2.53.2").await.success());

    // A running node that sees an upgrade start exits with the UPGRADE line.
    let job = c.spawn(
        "slow-upgrade",
        &[("WA_DB_UPGRADE", "1"), ("WA_EMULATOR_VERSION", "2.55.1"), ("WA_EMULATOR_UPGRADE_SECONDS", "3")],
    );
    let status = c.procs[newer].wait_exit(WAIT).await;
    assert!(!status.success());
    assert!(c.logs_of(newer).contains(UPGRADE_LINE), "{}", c.logs_of(newer));
    assert!(c.procs[job].exited().is_none(), "the node must stop while the upgrade runs");
    assert!(c.procs[job].wait_exit(WAIT).await.success());
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

    // Admin endpoints need the admin session; the API key is for monitoring only.
    for path in ["/v1/settings/application", "/v1/account/shards", "/v1/certificates/external/ca"] {
        let (status, body) = with_api_key(reqwest::Method::GET, &format!("{w1}{path}"), None).await.unwrap();
        assert_eq!((status, body["errors"][0]["code"].clone()), (401, json!(1005)), "{path}: {body}");
        assert_eq!(body["errors"][0]["title"], json!("Access denied"));
    }
    let (status, _) = with_api_key(
        reqwest::Method::PATCH,
        &format!("{w1}/v1/settings/application"),
        Some(json!({"heartbeat_interval": 2})),
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    for path in ["/v1/stats/app", "/v1/stats/db", "/metrics"] {
        let (status, body) = with_api_key(reqwest::Method::GET, &format!("{w1}{path}"), None).await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    let resp = client().get(format!("{w1}/v1/settings/application")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);

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

/// Several webapps starting at once on an empty server race on `CREATE
/// DATABASE`, as the client's do: the losers exit. The schema upgrade job,
/// run first, creates the databases and the webapps then start together.
async fn create_database_race(engine: Engine) {
    let dir = test_dir("race");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("race", engine, &gw, &dir);
    // Every webapp checks, then waits, then creates: all see no database.
    c.set("WA_EMULATOR_CREATE_DB_DELAY_MS", "1500");
    for _ in 0..3 {
        c.webapp(&[]);
    }
    let mut failed = 0;
    for p in c.procs.iter_mut() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.exited().is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(status) = p.exited() {
            assert!(!status.success());
            assert!(p.logs().contains("Unable to initialize config store"), "{}", p.logs());
            failed += 1;
        }
    }
    assert!(failed >= 1, "no webapp lost the CREATE DATABASE race");

    let mut c = Cluster::new("norace", engine, &gw, &dir);
    c.set("WA_EMULATOR_CREATE_DB_DELAY_MS", "1500");
    assert!(c.upgrade("2.53.2").await.success());
    assert!(c.logs_of(0).contains("creating database"), "{}", c.logs_of(0));
    assert!(c.logs_of(0).contains(&format!("{}_waent", c.db)), "the prefix names the database: {}", c.logs_of(0));
    let urls: Vec<String> = (0..3).map(|_| c.webapp(&[])).collect();
    for url in &urls {
        eventually("every webapp serves", WAIT, || async {
            let (status, body) = get(&format!("{url}/v1/health")).await.ok()?;
            (status == 200 && body["health"].is_object()).then_some(())
        })
        .await;
    }
    for p in c.procs.iter_mut().skip(1) {
        assert!(p.exited().is_none(), "{} exited:\n{}", p.name, p.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_database_race_mariadb() {
    create_database_race(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_database_race_postgresql() {
    create_database_race(Engine::Postgres).await;
}

/// The webapp's certificate: issued by the deployment's CA (readable through
/// the API) until one is uploaded, then the upload from the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webapp_certificates() {
    let dir = test_dir("cert");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("cert", Engine::Mysql, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("WA_WEB_SERVERNAME", "wa.example.test"),
        ("WA_EMULATOR_IMAGE", "web"),
        ("WA_EMULATOR_WEB_LISTEN", listen.as_str()),
    ];
    let first = c.spawn("webapp-1", &env);
    let url = format!("https://{listen}");
    eventually("the webapp answers", WAIT, || async { get(&format!("{url}/v1/health")).await.ok().map(|_| ()) }).await;

    // The deployment's CA, for admins only.
    let token = admin_token(&url).await.unwrap();
    let resp = client().get(format!("{url}/v1/certificates/external/ca")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let ca = resp.text().await.unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .resolve("wa.example.test", listen.parse().unwrap())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    // WA_WEB_SERVERNAME is one of the names of the served certificate.
    let named = format!("https://wa.example.test:{port}/v1/health");
    let strict = trusting(&ca);
    let resp = strict.get(&named).header("Authorization", format!("Apikey {API_KEY}")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Upload: private key, certificate, intermediate CA, in that order.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.distinguished_name.push(rcgen::DnType::CommonName, "Test root");
    let root = root_params.self_signed(&root_key).unwrap();
    let mid_key = rcgen::KeyPair::generate().unwrap();
    let mut mid_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    mid_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    mid_params.distinguished_name.push(rcgen::DnType::CommonName, "Test intermediate");
    let mid = mid_params.signed_by(&mid_key, &root, &root_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["wa.example.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &mid, &mid_key)
        .unwrap();
    let upload = |body: String| {
        client()
            .post(format!("{url}/v1/certificates/external"))
            .bearer_auth(&token)
            .header("Content-Type", "text/plain")
            .body(body)
    };
    let resp = upload(format!("{}{}", leaf_key.serialize_pem(), leaf.pem())).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400, "an intermediate CA certificate is required");
    let resp = client()
        .post(format!("{url}/v1/certificates/external"))
        .header("Authorization", format!("Apikey {API_KEY}"))
        .body(format!("{}{}{}", leaf_key.serialize_pem(), leaf.pem(), mid.pem()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "the API key cannot upload");
    let resp = upload(format!("{}{}{}", leaf_key.serialize_pem(), leaf.pem(), mid.pem())).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), "null");

    // The running webapp keeps its certificate until restarted.
    let resp = strict.get(&named).header("Authorization", format!("Apikey {API_KEY}")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    c.procs[first].terminate();
    c.spawn("webapp-2", &env);
    let new_strict = trusting(&root.pem());
    eventually("the restarted webapp serves the uploaded certificate", WAIT, || async {
        let resp = new_strict.get(&named).header("Authorization", format!("Apikey {API_KEY}")).send().await.ok()?;
        (resp.status().as_u16() == 200).then_some(())
    })
    .await;
    assert!(strict.get(&named).send().await.is_err(), "the old CA no longer verifies");
    let resp = new_strict
        .get(format!("https://wa.example.test:{port}/v1/certificates/external/ca"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap().trim(), mid.pem().trim());
}

/// `WA_DB_ENGINE` takes the client's names only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_engine_names() {
    let dir = test_dir("engine");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("engine", Engine::Postgres, &gw, &dir);
    for bad in ["POSTGRESQL", "postgres", "SQLITE"] {
        let i = c.spawn(&format!("engine-{bad}"), &[("WA_DB_ENGINE", bad), ("WA_DB_UPGRADE", "1")]);
        assert!(!c.procs[i].wait_exit(WAIT).await.success());
        let logs = c.logs_of(i);
        assert!(logs.contains(&format!("WA_DB_ENGINE={bad} is not supported")) && logs.contains("ERROR"), "{logs}");
    }
    assert!(c.upgrade("2.53.2").await.success(), "PGSQL");
}

/// Distinct `WA_DB_NAME_PREFIX` values on one server are independent
/// deployments; the same prefix is one shared set of databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_name_prefix() {
    let dir = test_dir("prefix");
    let (_gw, gw) = start_gateway(&dir);
    let mut a = Cluster::new("prefA", Engine::Mysql, &gw, &dir);
    let mut b = Cluster::new("prefB", Engine::Mysql, &gw, &dir);
    b.unset("WA_EMULATOR_REGISTERED_NUMBER");
    assert!(a.upgrade("2.53.2").await.success());
    assert!(b.upgrade("2.53.2").await.success());
    a.master("pa-m1");
    a.coreapp("pa-c1");
    b.master("pb-m1");
    let url_a = a.webapp(&[]);
    let url_b = b.webapp(&[]);
    eventually("A is registered and connected, B is not registered", WAIT, || async {
        let ta = tally(&health(&url_a).await?);
        let hb = health(&url_b).await?;
        (count(&ta, "connected", "coreapp") == 1
            && hb.len() == 1
            && hb.values().all(|e| e["gateway_status"] == json!("unregistered")))
        .then_some(())
    })
    .await;
    // A webapp with A's prefix (and B's JWT key) sees A's nodes and users.
    let mut shared = Cluster::new("prefA2", Engine::Mysql, &gw, &dir);
    shared.set("WA_DB_NAME_PREFIX", &a.db.clone());
    let url_s = shared.webapp(&[]);
    eventually("the same prefix shares the databases", WAIT, || async {
        let h = health(&url_s).await?;
        (h.contains_key(&node_key("pa-m1")) && h.contains_key(&node_key("pa-c1")) && h.len() == 2).then_some(())
    })
    .await;
    assert!(!shared.logs_of(0).contains("creating database"), "{}", shared.logs_of(0));
    let token_a = admin_token(&url_a).await.unwrap();
    let (status, _) = login(&url_s, "admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, 200, "the admin password set through A is the shared one");
    let (status, _) = login(&url_b, "admin", ADMIN_PASSWORD, None).await;
    assert_eq!(status, 401, "B has its own users");
    assert!(!token_a.is_empty());
}

/// `WA_TCP_LISTEN_ADDRESS=any` binds every address; otherwise the node binds
/// `COREAPP_HOSTNAME` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listen_address() {
    let dir = test_dir("listen");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("listen", Engine::Postgres, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let (_, any_ip) = c.coreapp_with("any", &[("WA_TCP_LISTEN_ADDRESS", "any"), ("COREAPP_EXTERNAL_PORTS", &list)]);
    let control = ports[2];
    for host in ["127.0.0.1", any_ip.as_str()] {
        eventually("the node answers on every address", WAIT, || async {
            reqwest::get(format!("http://{host}:{control}/control/status")).await.ok().map(|_| ())
        })
        .await;
    }
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let (_, own_ip) = c.coreapp_with("own", &[("COREAPP_EXTERNAL_PORTS", &list)]);
    let control = ports[2];
    eventually("the node answers on COREAPP_HOSTNAME", WAIT, || async {
        reqwest::get(format!("http://{own_ip}:{control}/control/status")).await.ok().map(|_| ())
    })
    .await;
    assert!(reqwest::get(format!("http://127.0.0.1:{control}/control/status")).await.is_err());
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
