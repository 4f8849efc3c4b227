//! Multiconnect behaviour against real databases: HA, sharding, failover of
//! masters and coreapps, the single-instance conflict and registration.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn shards_body(gateway: &str, n: serde_json::Value) -> serde_json::Value {
    json!({"cc": "1", "phone_number": "5550001111", "shards": n, "cert": cert_for(gateway, NUMBER, 30).await})
}

async fn ha(engine: Engine) {
    let dir = test_dir("ha");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("ha", engine, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    c.master("m1");
    c.master("m2");
    c.coreapp("c1");
    c.coreapp("c2");
    let url = c.webapp(&[]);
    // High availability: only the coreapp holding the shard is connected;
    // the primary master too reports disconnected.
    eventually("one coreapp connected, every other node disconnected", WAIT, || async {
        let h = health(&url).await?;
        let t = tally(&h);
        (h.len() == 4
            && count(&t, "disconnected", "primary_master") == 1
            && count(&t, "disconnected", "secondary_master") == 1
            && count(&t, "connected", "coreapp") == 1
            && count(&t, "disconnected", "coreapp") == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = tally(&health(&url).await.unwrap());
    assert_eq!(count(&t, "connected", "primary_master"), 0, "{t:?}");
    assert_eq!(gateway_connections(&gw).await.len(), 1);
    let (status, body) = get(&format!("{url}/v1/account/shards")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["account"]["shards"], json!(1));
    assert_eq!(body["meta"]["version"], json!("2.53.2"));

    // Application settings are in the database and settable through the API.
    let settings = format!("{url}/v1/settings/application");
    let (status, body) = get(&settings).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["settings"]["application"]["heartbeat_interval"], json!(1));
    assert_eq!(body["settings"]["application"]["unhealthy_interval"], json!(3));
    let (status, _) = api(reqwest::Method::PATCH, &settings, Some(json!({"unhealthy_interval": 4}))).await.unwrap();
    assert_eq!(status, 200);
    let (_, body) = get(&settings).await.unwrap();
    assert_eq!(body["settings"]["application"]["unhealthy_interval"], json!(4));
    let (status, body) = api(reqwest::Method::PATCH, &settings, Some(json!({"heartbeat_interval": -1}))).await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["code"], json!(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_mariadb() {
    ha(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_postgresql() {
    ha(Engine::Postgres).await;
}

async fn multiconnect(engine: Engine) {
    let dir = test_dir("multi");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("multi", engine, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    c.master("m1");
    for i in 1..=5 {
        c.coreapp(&format!("c{i}"));
    }
    let url = c.webapp(&[]);
    eventually("the cluster is up with one shard", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 1
            && count(&t, "disconnected", "coreapp") == 4
            && count(&t, "disconnected", "primary_master") == 1)
            .then_some(())
    })
    .await;
    let shards = format!("{url}/v1/account/shards");
    let (status, body) = post(&shards, shards_body(&gw, json!(4)).await).await.unwrap();
    assert_eq!(status, 201, "{body}");
    // Right after a reshard, another one is refused: retry later.
    let (status, body) = post(&shards, shards_body(&gw, json!(8)).await).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body["errors"][0]["details"].as_str().unwrap().contains("retry"), "{body}");
    eventually("4 coreapps connected, 1 standby", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 4
            && count(&t, "disconnected", "coreapp") == 1
            && count(&t, "connected", "primary_master") == 1)
            .then_some(())
    })
    .await;
    assert_eq!(gateway_connections(&gw).await.len(), 5);
    let (_, body) = get(&shards).await.unwrap();
    assert_eq!(body["account"]["shards"], json!(4));

    let (status, body) = post(&shards, shards_body(&gw, json!(3)).await).await.unwrap();
    assert_eq!((status, body["errors"][0]["code"].clone()), (400, json!(1009)));
    let (status, body) =
        post(&shards, json!({"cc": "1", "phone_number": "5550009999", "shards": 2, "cert": "x"})).await.unwrap();
    assert_eq!((status, body["errors"][0]["code"].clone()), (400, json!(1009)));
    let (status, body) = post(&shards, json!({"cc": "1", "phone_number": "5550001111", "shards": 2})).await.unwrap();
    assert_eq!((status, body["errors"][0]["code"].clone()), (400, json!(1008)));

    // Per-node samples carry a node label.
    let resp = client()
        .get(format!("{url}/v1/stats/app?format=prometheus"))
        .header("Authorization", format!("Apikey {API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    // Each node has its own sample; 4 coreapps and the primary master are connected.
    for node in ["m1", "c1", "c2", "c3", "c4", "c5"] {
        let sample = format!("wa_app_gateway_connected{{node=\"{}\"}} ", node_key(node));
        assert!(text.contains(&sample), "no sample of {node}: {text}");
    }
    let connected = text.lines().filter(|l| l.starts_with("wa_app_gateway_connected{node=") && l.ends_with(" 1"));
    assert_eq!(connected.count(), 5, "{text}");

    // Back to two shards (once the previous reshard settled): the extra
    // coreapps become standbys.
    let body = shards_body(&gw, json!("2")).await;
    eventually("the reshard to 2 is accepted", WAIT, || async {
        let (status, _) = post(&shards, body.clone()).await.ok()?;
        (status == 201).then_some(())
    })
    .await;
    eventually("2 coreapps connected, 3 standby", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 2
            && count(&t, "disconnected", "coreapp") == 3
            && count(&t, "connected", "primary_master") == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiconnect_mariadb() {
    multiconnect(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiconnect_postgresql() {
    multiconnect(Engine::Postgres).await;
}

async fn master_failover(engine: Engine) {
    let dir = test_dir("masterfo");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("mfo", engine, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    let (m1, _) = c.master("m1");
    c.coreapp("c1");
    let url = c.webapp(&[]);
    let (k1, k2) = (node_key("m1"), node_key("m2"));
    eventually("m1 is the primary master", WAIT, || async {
        let h = health(&url).await?;
        (status_of(&h, &k1)? == ("disconnected".into(), "primary_master".into())).then_some(())
    })
    .await;
    let (_, m2_ip) = c.master("m2");
    eventually("m2 is a secondary master and c1 connected", WAIT, || async {
        let h = health(&url).await?;
        let t = tally(&h);
        (status_of(&h, &k2)? == ("disconnected".into(), "secondary_master".into())
            && count(&t, "connected", "coreapp") == 1)
            .then_some(())
    })
    .await;

    // A secondary master answers master-only requests with 1017.
    let resp = client().get(format!("http://{m2_ip}:6252/control/shards")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], json!(1017));
    assert_eq!(body["errors"][0]["title"], json!("Not Primary Master"));

    c.procs[m1].kill();
    eventually("m2 takes over and m1 is unreachable", WAIT, || async {
        let h = health(&url).await?;
        let m1_err = h.get(&k1)?.get("errors")?.get(0)?.get("code")?.as_i64()?;
        (status_of(&h, &k2)? == ("disconnected".into(), "primary_master".into()) && m1_err == 1011).then_some(())
    })
    .await;
    let (status, body) = get(&format!("{url}/v1/account/shards")).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // With no master left, master-only requests fail with 1011 once the lease lapses.
    let m2 = c.procs.iter().position(|p| p.name.ends_with("/m2")).unwrap();
    c.procs[m2].kill();
    eventually("no primary master: 1011", WAIT, || async {
        let (status, body) = get(&format!("{url}/v1/account/shards")).await.ok()?;
        (status == 503 && body["errors"][0]["code"] == json!(1011)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failover_mariadb() {
    master_failover(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failover_postgresql() {
    master_failover(Engine::Postgres).await;
}

async fn coreapp_failover(engine: Engine) {
    let dir = test_dir("corefo");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("cfo", engine, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    c.master("m1");
    let (c1, _) = c.coreapp("c1");
    let url = c.webapp(&[]);
    let (k1, k2) = (node_key("c1"), node_key("c2"));
    eventually("c1 holds the shard", WAIT, || async {
        (status_of(&health(&url).await?, &k1)?.0 == "connected").then_some(())
    })
    .await;
    c.coreapp("c2");
    eventually("c2 is a standby", WAIT, || async {
        (status_of(&health(&url).await?, &k2)?.0 == "disconnected").then_some(())
    })
    .await;
    let killed = Instant::now();
    c.procs[c1].kill();
    eventually("c2 takes over the shard; c1 is unreachable", WAIT, || async {
        let h = health(&url).await?;
        (status_of(&h, &k2)?.0 == "connected" && h.get(&k1)?.get("errors").is_some()).then_some(())
    })
    .await;
    // unhealthy_interval is 3 s after the last heartbeat (at most 1 s before
    // the kill): the takeover waits for it (how soon after is `WAIT`'s bound,
    // not a goal of this test).
    let took = killed.elapsed();
    assert!(took >= Duration::from_millis(1500), "takeover after {took:?}, before the unhealthy interval");
    // One session: the coreapp holding the shard (in HA the master has none).
    let conns = gateway_connections(&gw).await;
    assert_eq!(conns.len(), 1, "{conns:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coreapp_failover_mariadb() {
    coreapp_failover(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coreapp_failover_postgresql() {
    coreapp_failover(Engine::Postgres).await;
}

/// Health says nothing of a conflict: only the coreapp's log names it.
fn silent(entry: &serde_json::Value) -> bool {
    entry.get("errors").is_none() && !entry.to_string().contains("multiple instances")
}

/// Two deployments (two databases, one on each engine) with the same number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_instance_conflict() {
    let dir = test_dir("conflict");
    let (gw_proc, gw) = start_gateway(&dir);
    let mut a = Cluster::new("conflA", Engine::Mysql, &gw, &dir);
    let mut b = Cluster::new("conflB", Engine::Postgres, &gw, &dir);
    assert!(a.upgrade("2.53.2").await.success());
    assert!(b.upgrade("2.53.2").await.success());
    a.master("a-m1");
    a.coreapp("a-c1");
    let url_a = a.webapp(&[]);
    eventually("deployment A is connected", WAIT, || async {
        let t = tally(&health(&url_a).await?);
        (count(&t, "connected", "coreapp") == 1 && count(&t, "disconnected", "primary_master") == 1).then_some(())
    })
    .await;

    b.master("b-m1");
    b.coreapp("b-c1");
    let url_b = b.webapp(&[]);
    eventually("deployment B connects", WAIT, || async {
        let h = health(&url_b).await?;
        let t = tally(&h);
        (count(&t, "connected", "coreapp") == 1 && h.values().all(silent)).then_some(())
    })
    .await;
    eventually("deployment A is kicked off", WAIT, || async {
        let h = health(&url_a).await?;
        (h.len() == 2 && h.values().all(|e| e["gateway_status"] == json!("disconnected") && silent(e))).then_some(())
    })
    .await;
    for (cluster, side) in [(&a, "A"), (&b, "B")] {
        assert!(
            cluster.procs.iter().any(|p| p.name.ends_with("-c1") && p.logs().contains(CONFLICT)),
            "the coreapp of deployment {side} did not log the conflict"
        );
    }
    assert!(gw_proc.logs().contains(CONFLICT));
    let conns = gateway_connections(&gw).await;
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert!(conns.iter().all(|c| c["node"].as_str().unwrap().contains(":b-")), "{conns:?}");

    // A stays off even when it retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = tally(&health(&url_a).await.unwrap());
    assert_eq!(count(&t, "connected", "coreapp") + count(&t, "connected", "primary_master"), 0);

    // Registering the number again on A moves it back: B is kicked.
    register(&url_a, &gw).await;
    eventually("A is back and B is kicked", WAIT, || async {
        let ta = tally(&health(&url_a).await?);
        let tb = tally(&health(&url_b).await?);
        (count(&ta, "connected", "coreapp") == 1 && count(&tb, "connected", "coreapp") == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration() {
    let dir = test_dir("register");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("reg", Engine::Postgres, &gw, &dir);
    c.unset("WA_EMULATOR_REGISTERED_NUMBER");
    assert!(c.upgrade("2.53.2").await.success());
    c.master("m1");
    c.coreapp("c1");
    let url = c.webapp(&[]);
    eventually("every node is unregistered", WAIT, || async {
        let h = health(&url).await?;
        (h.len() == 2 && h.values().all(|e| e["gateway_status"] == json!("unregistered"))).then_some(())
    })
    .await;
    let account = format!("{url}/v1/account");
    let (status, body) =
        post(&account, json!({"cc": "1", "phone_number": "5550002222", "method": "fax", "cert": "x"})).await.unwrap();
    assert_eq!((status, body["errors"][0]["code"].clone()), (400, json!(1009)));
    let (status, body) =
        post(&account, json!({"cc": "1", "phone_number": "5550002222", "method": "sms"})).await.unwrap();
    assert_eq!((status, body["errors"][0]["code"].clone()), (400, json!(1008)));
    let cert = cert_for(&gw, "+15550002222", 30).await;
    let req = json!({"cc": "1", "phone_number": "5550002222", "method": "voice", "cert": cert});
    let (status, body) = post(&account, req.clone()).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let (status, _) = post(&format!("{account}/verify"), json!({"code": "not-the-code"})).await.unwrap();
    assert_eq!(status, 400);
    let code: serde_json::Value =
        reqwest::get(format!("http://{gw}/admin/codes/15550002222")).await.unwrap().json().await.unwrap();
    let (status, body) = post(&format!("{account}/verify"), json!({"code": code["code"]})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    eventually("registered nodes connect", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 1 && count(&t, "disconnected", "primary_master") == 1).then_some(())
    })
    .await;
    let (status, _) = post(&account, req).await.unwrap();
    assert_eq!(status, 201, "already registered");
}
