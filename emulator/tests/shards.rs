//! Set-shards is dangerous: the certificate is checked by WhatsApp's
//! servers (expired: banned; wrong: logged off), and a call more than 7 days
//! after registration disconnects the number.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn body(cert: &str, shards: u64) -> Value {
    json!({"cc": "1", "phone_number": "5550001111", "shards": shards, "cert": cert})
}

fn errors_mention(entry: &Value, what: &str) -> bool {
    entry["errors"].as_array().is_some_and(|e| e.iter().any(|i| i["details"].as_str().unwrap_or("").contains(what)))
}

/// Posts set-shards until it is not refused as "retry" (a reshard under way).
async fn set_shards(url: &str, body: Value) -> (u16, Value) {
    eventually("set-shards is not busy", WAIT, || async {
        let (status, v) = post(&format!("{url}/v1/account/shards"), body.clone()).await.ok()?;
        let busy = status == 403 && v["errors"][0]["code"] == json!(1011);
        (!busy).then_some((status, v))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_decide_the_outcome() {
    let dir = test_dir("shardcert");
    let (gw_proc, gw) = start_gateway(&dir);
    let mut c = Cluster::new("shcert", Engine::Mysql, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    c.master("m1");
    c.coreapp("c1");
    c.coreapp("c2");
    let url = c.webapp(&[]);
    eventually("HA is up", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 1).then_some(())
    })
    .await;

    // A valid certificate within 7 days of registration: the change is made.
    let valid = cert_for(&gw, NUMBER, 30).await;
    let (status, v) = set_shards(&url, body(&valid, 2)).await;
    assert_eq!(status, 201, "{v}");
    eventually("2 shards: 2 coreapps and the primary master connected", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 2 && count(&t, "connected", "primary_master") == 1).then_some(())
    })
    .await;

    // A wrong certificate (another number's) logs the client off.
    let wrong = cert_for(&gw, "+15550009999", 30).await;
    let (status, v) = set_shards(&url, body(&wrong, 1)).await;
    assert_eq!((status, v["errors"][0]["code"].clone()), (400, json!(1009)), "{v}");
    eventually("every node is logged off", WAIT, || async {
        let h = health(&url).await?;
        (h.len() == 3
            && h.values().all(|e| e["gateway_status"] == json!("unregistered") && errors_mention(e, "Logged off")))
        .then_some(())
    })
    .await;
    assert!(gateway_connections(&gw).await.is_empty());
    let (_, v) = get(&format!("{url}/v1/account/shards")).await.unwrap();
    assert_eq!(v["account"]["shards"], json!(2), "a refused change changes nothing");
    register(&url, &gw).await;
    eventually("registered again, the nodes reconnect", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 2).then_some(())
    })
    .await;

    // An expired certificate gets the number banned.
    let expired = cert_for(&gw, NUMBER, -1).await;
    let (status, v) = set_shards(&url, body(&expired, 1)).await;
    assert_eq!((status, v["errors"][0]["code"].clone()), (403, json!(1005)), "{v}");
    eventually("every node is disconnected with the ban", WAIT, || async {
        let h = health(&url).await?;
        (h.len() == 3
            && h.values().all(|e| e["gateway_status"] == json!("disconnected") && errors_mention(e, "banned")))
        .then_some(())
    })
    .await;
    assert!(gateway_connections(&gw).await.is_empty());
    assert!(gw_proc.logs().contains("Account banned"));
    for path in ["/v1/account/shards", "/v1/settings/application"] {
        let (status, v) = get(&format!("{url}{path}")).await.unwrap();
        assert_eq!((status, v["errors"][0]["code"].clone()), (403, json!(1005)), "{path}: {v}");
    }
    let (status, _) = post(&format!("{url}/v1/account/shards"), body(&valid, 1)).await.unwrap();
    assert_eq!(status, 403);

    // Until WhatsApp lifts the ban.
    let resp = client().delete(format!("http://{gw}/admin/bans/15550001111")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    eventually("the ban is lifted and the nodes reconnect", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 2 && count(&t, "connected", "primary_master") == 1).then_some(())
    })
    .await;
    let (status, _) = get(&format!("{url}/v1/account/shards")).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_7_days_after_registration() {
    let dir = test_dir("shard7d");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("sh7d", Engine::Postgres, &gw, &dir);
    c.set("WA_EMULATOR_REGISTERED_AT", "8d");
    assert!(c.upgrade("2.53.2").await.success());
    c.master("m1");
    c.coreapp("c1");
    c.coreapp("c2");
    let url = c.webapp(&[]);
    eventually("HA is up", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 1).then_some(())
    })
    .await;
    // The certificate is valid, but the number was registered 8 days ago:
    // the change is recorded and the number is disconnected.
    let valid = cert_for(&gw, NUMBER, 30).await;
    let (status, v) = set_shards(&url, body(&valid, 2)).await;
    assert_eq!(status, 201, "{v}");
    eventually("every node is disconnected from the number", WAIT, || async {
        let h = health(&url).await?;
        (h.len() == 3
            && h.values().all(|e| e["gateway_status"] == json!("unregistered") && errors_mention(e, "7 days")))
        .then_some(())
    })
    .await;
    let (_, v) = get(&format!("{url}/v1/account/shards")).await.unwrap();
    assert_eq!(v["account"]["shards"], json!(2));

    // Registered again, the new count is in force and a change is safe again.
    register(&url, &gw).await;
    eventually("2 coreapps and the primary master connected", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 2 && count(&t, "connected", "primary_master") == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, v) = set_shards(&url, body(&valid, 1)).await;
    assert_eq!(status, 201, "{v}");
    eventually("HA again, still registered", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 1 && count(&t, "disconnected", "primary_master") == 1).then_some(())
    })
    .await;
}
