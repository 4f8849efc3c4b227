//! A number's life through the API: registration and what makes it fail,
//! application settings and the webhook CA, backup and restore into a new
//! deployment.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const OTHER: &str = "+15550003333";
const OTHER_DIGITS: &str = "15550003333";

fn account_body(cert: &str, pin: Option<&str>) -> Value {
    let mut v = json!({"cc": "1", "phone_number": "5550003333", "method": "sms", "cert": cert});
    if let Some(p) = pin {
        v["pin"] = json!(p);
    }
    v
}

async fn all_unregistered(url: &str, nodes: usize) -> bool {
    health(url)
        .await
        .is_some_and(|h| h.len() == nodes && h.values().all(|e| e["gateway_status"] == json!("unregistered")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refusals() {
    let dir = test_dir("regfail");
    let (_gw_proc, gw) = start_gateway_with(&dir, &[("WA_EMULATOR_CODE_RETRY_SECONDS", "3")]);
    let mut c = Cluster::new("regfail", Engine::Mysql, &gw, &dir);
    c.unset("WA_EMULATOR_REGISTERED_NUMBER");
    assert!(c.upgrade("2.53.2").await.success());
    let (_, master_ip) = c.master("m1");
    c.coreapp("c1");
    let url = c.webapp(&[]);
    eventually("every node is unregistered", WAIT, || async { all_unregistered(&url, 2).await.then_some(()) }).await;
    let account = format!("{url}/v1/account");
    let verify = format!("{url}/v1/account/verify");

    // Certificates: an expired one and another number's are refused, and no code is sent.
    let expired = cert_for(&gw, OTHER, -1).await;
    let (status, v) = post(&account, account_body(&expired, None)).await.unwrap();
    let (s, code, details) = error_of(status, &v);
    assert_eq!((s, code), (400, 1009), "{v}");
    assert!(details.starts_with("Certificate expired"), "{details}");
    let wrong = cert_for(&gw, NUMBER, 30).await;
    let (status, v) = post(&account, account_body(&wrong, None)).await.unwrap();
    let (s, code, details) = error_of(status, &v);
    assert_eq!((s, code), (400, 1009), "{v}");
    assert!(details.starts_with("Invalid certificate"), "{details}");
    assert_eq!(code_sent(&gw, OTHER_DIGITS).await, None);

    // Two-step verification: the PIN is required and must match.
    let resp = client()
        .post(format!("http://{gw}/admin/pins/{OTHER_DIGITS}"))
        .json(&json!({"pin": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let valid = cert_for(&gw, OTHER, 30).await;
    let (status, v) = post(&account, account_body(&valid, None)).await.unwrap();
    assert_eq!(error_of(status, &v).0, 400, "{v}");
    assert_eq!(error_of(status, &v).1, 1008, "{v}");
    let (status, v) = post(&account, account_body(&valid, Some("654321"))).await.unwrap();
    let (s, code, details) = error_of(status, &v);
    assert_eq!((s, code), (400, 1009), "{v}");
    assert!(details.contains("PIN mismatch"), "{details}");
    let (status, v) = post(&account, account_body(&valid, Some("12345"))).await.unwrap();
    assert_eq!(error_of(status, &v).1, 1009, "a PIN has 6 digits: {v}");

    // The right PIN: a code is sent; a second request right away must wait.
    let (status, v) = post(&account, account_body(&valid, Some("123456"))).await.unwrap();
    assert_eq!(status, 202, "{v}");
    let first_code = code_sent(&gw, OTHER_DIGITS).await.expect("a code was sent");
    let (status, v) = post(&account, account_body(&valid, Some("123456"))).await.unwrap();
    let (s, code, details) = error_of(status, &v);
    assert_eq!((s, code), (429, 1015), "{v}");
    assert!(details.contains("wait"), "{details}");

    // Wrong codes: the number stays unregistered, the code survives two.
    let wrong_code = if first_code == "000000" { "111111" } else { "000000" };
    for left in [2, 1] {
        let (status, v) = post(&verify, json!({"code": wrong_code})).await.unwrap();
        let (s, code, details) = error_of(status, &v);
        assert_eq!((s, code), (400, 1009), "{v}");
        assert!(details.contains(&format!("{left} tries left")), "{details}");
    }
    assert!(all_unregistered(&url, 2).await);
    assert_eq!(account_of(&master_ip).await.unwrap()["number"], Value::Null);
    // The third voids it: even the right code needs a new request now.
    let (status, v) = post(&verify, json!({"code": wrong_code})).await.unwrap();
    assert!(error_of(status, &v).2.contains("request a new code"), "{v}");
    let (status, v) = post(&verify, json!({"code": first_code})).await.unwrap();
    assert_eq!(error_of(status, &v).0, 400, "{v}");
    assert_eq!(code_sent(&gw, OTHER_DIGITS).await, None);

    // Once the wait is over a new code registers the number, and its time is recorded.
    let new_code = eventually("the rate limit lets a new request through", WAIT, || async {
        let (status, _) = post(&account, account_body(&valid, Some("123456"))).await.ok()?;
        if status != 202 {
            return None;
        }
        code_sent(&gw, OTHER_DIGITS).await
    })
    .await;
    let before = jiff::Timestamp::now().as_millisecond();
    let (status, v) = post(&verify, json!({"code": new_code})).await.unwrap();
    assert_eq!(status, 201, "{v}");
    let acc = account_of(&master_ip).await.unwrap();
    assert_eq!(acc["number"], json!(OTHER_DIGITS));
    let at = acc["registered_at_ms"].as_i64().unwrap();
    assert!((before - 5_000..=jiff::Timestamp::now().as_millisecond()).contains(&at), "{acc}");
    eventually("the registered number connects", WAIT, || async {
        let t = tally(&health(&url).await?);
        (count(&t, "connected", "coreapp") == 1).then_some(())
    })
    .await;
    let (status, _) = post(&account, account_body(&valid, Some("123456"))).await.unwrap();
    assert_eq!(status, 201, "already registered: no code, no rate limit");
}

async fn settings_of(url: &str) -> Value {
    let (status, v) = get(&format!("{url}/v1/settings/application")).await.unwrap();
    assert_eq!(status, 200, "{v}");
    v["settings"]["application"].clone()
}

async fn patch(url: &str, body: Value) -> (u16, Value) {
    api(Method::PATCH, &format!("{url}/v1/settings/application"), Some(body)).await.unwrap()
}

async fn application_settings(engine: Engine) {
    let dir = test_dir("appsettings");
    let (_gw, gw) = start_gateway(&dir);
    let mut c = Cluster::new("appset", engine, &gw, &dir);
    assert!(c.upgrade("2.53.2").await.success());
    let w1 = c.webapp(&[]);
    let w2 = c.webapp(&[]);
    for w in [&w1, &w2] {
        eventually("the webapp answers", WAIT, || async { admin_token(w).await.ok() }).await;
    }

    // Meta's defaults (the intervals from the schema's knobs).
    let defaults = settings_of(&w1).await;
    assert_eq!(defaults["callback_persist"], json!(true));
    assert_eq!(defaults["callback_backoff_delay_ms"], json!(3000));
    assert_eq!(defaults["max_callback_backoff_delay_ms"], json!(900000));
    assert_eq!(defaults["sent_status"], json!(false));
    assert_eq!(defaults["webhooks"]["max_concurrent_requests"], json!(6));
    assert_eq!(defaults["webhooks"]["url"], json!(""));
    assert_eq!(defaults["heartbeat_interval"], json!(1));

    // Set on one webapp, read back as set on the other.
    let (status, v) = patch(
        &w1,
        json!({
            "webhooks": {"url": "https://hooks.example.com/wa?x=1", "max_concurrent_requests": 12,
                         "message": {"sent": true, "delivered": true, "read": false}},
            "callback_persist": false,
            "callback_backoff_delay_ms": "2000",
            "max_callback_backoff_delay_ms": 600000,
            "media": {"auto_download": ["image", "document"]},
            "sent_status": true,
            "pass_through": false,
            "unhealthy_interval": 4,
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let set = settings_of(&w2).await;
    assert_eq!(set["webhooks"]["url"], json!("https://hooks.example.com/wa?x=1"));
    assert_eq!(set["webhooks"]["max_concurrent_requests"], json!(12));
    assert_eq!(set["webhooks"]["message"], json!({"sent": true, "delivered": true, "read": false}));
    assert_eq!(set["callback_persist"], json!(false));
    assert_eq!(set["callback_backoff_delay_ms"], json!(2000));
    assert_eq!(set["max_callback_backoff_delay_ms"], json!(600000));
    assert_eq!(set["media"]["auto_download"], json!(["image", "document"]));
    assert_eq!((set["sent_status"].clone(), set["pass_through"].clone()), (json!(true), json!(false)));
    assert_eq!(set["unhealthy_interval"], json!(4));

    // A partial PATCH changes only what it names.
    let (status, _) = patch(&w2, json!({"webhooks": {"url": "https://other.example.com/hook"}})).await;
    assert_eq!(status, 200);
    let after = settings_of(&w1).await;
    assert_eq!(after["webhooks"]["url"], json!("https://other.example.com/hook"));
    assert_eq!(after["webhooks"]["max_concurrent_requests"], json!(12));
    assert_eq!(after["callback_persist"], json!(false));

    // Invalid values are refused and the request changes nothing.
    for bad in [
        json!({"callback_persist": true, "webhooks": {"url": "ftp://hooks.example.com"}}),
        json!({"callback_persist": true, "webhooks": {"max_concurrent_requests": 10}}),
        json!({"callback_persist": true, "media": {"auto_download": ["gif"]}}),
        json!({"callback_persist": true, "sent_status": "yes"}),
        json!({"callback_persist": true, "callback_backoff_delay_ms": -5}),
        json!({"callback_persist": true, "no_such_setting": 1}),
    ] {
        let (status, v) = patch(&w1, bad.clone()).await;
        assert_eq!((status, v["errors"][0]["code"].clone()), (400, json!(1009)), "{bad}: {v}");
    }
    assert_eq!(settings_of(&w2).await, after, "refused requests changed nothing");

    // The API key is refused on every admin endpoint of this issue.
    for (method, path) in [
        (Method::GET, "/v1/settings/application"),
        (Method::PATCH, "/v1/settings/application"),
        (Method::DELETE, "/v1/settings/application"),
        (Method::POST, "/v1/settings/backup"),
        (Method::POST, "/v1/settings/restore"),
        (Method::GET, "/v1/certificates/webhooks/ca"),
        (Method::POST, "/v1/certificates/webhooks/ca"),
        (Method::DELETE, "/v1/certificates/webhooks/ca"),
    ] {
        let (status, v) = with_api_key(method.clone(), &format!("{w1}{path}"), Some(json!({}))).await.unwrap();
        assert_eq!((status, v["errors"][0]["code"].clone()), (401, json!(1005)), "{method} {path}: {v}");
    }

    // Reset: every setting back to its default.
    let (status, v) = api(Method::DELETE, &format!("{w2}/v1/settings/application"), None).await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(settings_of(&w1).await, defaults);

    // The webhook CA: stored in the database, readable from every webapp, removable.
    let token = admin_token(&w1).await.unwrap();
    let ca_url = |w: &str| format!("{w}/v1/certificates/webhooks/ca");
    let resp = client().get(ca_url(&w1)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let resp = client().get(format!("{w1}/v1/certificates/external/ca")).bearer_auth(&token).send().await.unwrap();
    let pem = resp.text().await.unwrap();
    let upload = |w: String, body: String| {
        let token = token.clone();
        async move {
            let resp = client().post(w).bearer_auth(token).header("content-type", "text/plain").body(body).send();
            resp.await.unwrap().status().as_u16()
        }
    };
    assert_eq!(upload(ca_url(&w1), "not a certificate".into()).await, 400);
    assert_eq!(upload(ca_url(&w1), pem.clone()).await, 200);
    let token2 = admin_token(&w2).await.unwrap();
    let resp = client().get(ca_url(&w2)).bearer_auth(&token2).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(resp.text().await.unwrap(), pem);
    let resp = client().delete(ca_url(&w2)).bearer_auth(&token2).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = client().get(ca_url(&w1)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_settings_mariadb() {
    application_settings(Engine::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_settings_postgresql() {
    application_settings(Engine::Postgres).await;
}

/// A backup of a 2-shard deployment on MariaDB restored into a new one on
/// PostgreSQL: refused with the wrong password or another shape, then the
/// number is registered and connected there with its settings and shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_into_a_new_deployment() {
    let dir = test_dir("backup");
    let (_gw_proc, gw) = start_gateway(&dir);
    let mut a = Cluster::new("bka", Engine::Mysql, &gw, &dir);
    a.set("WA_EMULATOR_REGISTERED_AT", "2d");
    assert!(a.upgrade("2.53.2").await.success());
    let (_, a_master) = a.master("m1");
    a.coreapp("c1");
    a.coreapp("c2");
    let url_a = a.webapp(&[]);
    eventually("A is up", WAIT, || async {
        let t = tally(&health(&url_a).await?);
        (count(&t, "connected", "coreapp") == 1).then_some(())
    })
    .await;
    let cert = cert_for(&gw, NUMBER, 30).await;
    let body = json!({"cc": "1", "phone_number": "5550001111", "shards": 2, "cert": cert});
    let (status, v) = post(&format!("{url_a}/v1/account/shards"), body).await.unwrap();
    assert_eq!(status, 201, "{v}");
    let (status, _) =
        patch(&url_a, json!({"webhooks": {"url": "https://hooks.example.com/a"}, "sent_status": true})).await;
    assert_eq!(status, 200);
    let settings_a = settings_of(&url_a).await;
    let registered_at = account_of(&a_master).await.unwrap()["registered_at_ms"].clone();
    assert!(registered_at.is_i64());

    let backup_url = format!("{url_a}/v1/settings/backup");
    let (status, v) = post(&backup_url, json!({})).await.unwrap();
    assert_eq!((status, v["errors"][0]["code"].clone()), (400, json!(1008)), "{v}");
    let (status, v) = post(&backup_url, json!({"password": "Backup-Pass-1"})).await.unwrap();
    assert_eq!(status, 200, "{v}");
    let data = v["settings"]["data"].as_str().unwrap().to_string();

    // The new deployment: fresh database, not registered, a master and one coreapp.
    let mut b = Cluster::new("bkb", Engine::Postgres, &gw, &dir);
    b.unset("WA_EMULATOR_REGISTERED_NUMBER");
    assert!(b.upgrade("2.53.2").await.success());
    let (_, b_master) = b.master("m1");
    b.coreapp("c1");
    let url_b = b.webapp(&[]);
    eventually("B is up, unregistered", WAIT, || async { all_unregistered(&url_b, 2).await.then_some(()) }).await;
    let restore = format!("{url_b}/v1/settings/restore");

    let (status, v) = post(&restore, json!({"password": "wrong-password", "data": data})).await.unwrap();
    let (s, code, details) = error_of(status, &v);
    assert_eq!((s, code), (400, 1009), "{v}");
    assert!(details.contains("wrong password"), "{details}");
    let (status, v) = post(&restore, json!({"password": "Backup-Pass-1", "data": "bm90IGEgYmFja3Vw"})).await.unwrap();
    assert_eq!(error_of(status, &v).1, 1009, "{v}");
    let (status, v) = post(&restore, json!({"password": "Backup-Pass-1"})).await.unwrap();
    assert_eq!(error_of(status, &v).1, 1008, "{v}");
    // Another shape (one coreapp where the backup's setup had two): refused.
    let (status, v) = post(&restore, json!({"password": "Backup-Pass-1", "data": data})).await.unwrap();
    let (s, code, details) = error_of(status, &v);
    assert_eq!((s, code), (400, 1009), "{v}");
    assert!(details.contains("same number of shards"), "{details}");
    assert!(all_unregistered(&url_b, 2).await);
    assert_eq!(account_of(&b_master).await.unwrap()["number"], Value::Null);

    // The old setup goes away (a migration, not a second instance), the new one gets its shape.
    for p in a.procs.iter_mut() {
        if p.exited().is_none() {
            p.terminate();
        }
    }
    b.coreapp("c2");
    let started = Instant::now();
    let (status, v) = eventually("the restore is accepted", WAIT, || async {
        let (status, v) = post(&restore, json!({"password": "Backup-Pass-1", "data": data})).await.ok()?;
        // Refused only while the second coreapp is not up yet.
        (status == 200 || started.elapsed() > Duration::from_secs(20)).then_some((status, v))
    })
    .await;
    assert_eq!(status, 200, "{v}");

    let acc = account_of(&b_master).await.unwrap();
    assert_eq!(acc["number"], json!("15550001111"));
    assert_eq!(acc["registered_at_ms"], registered_at, "the original registration time");
    assert_eq!(acc["shards"], json!(2));
    assert_eq!(settings_of(&url_b).await, settings_a);
    eventually("B connects with 2 shards", WAIT, || async {
        let t = tally(&health(&url_b).await?);
        (count(&t, "connected", "coreapp") == 2 && count(&t, "connected", "primary_master") == 1).then_some(())
    })
    .await;
}
