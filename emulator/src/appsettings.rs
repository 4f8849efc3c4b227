//! Application settings (`/v1/settings/application`), as Meta's reference
//! lists them. The two intervals live in `wa_settings`, where every node
//! reads them on each heartbeat; the rest is one JSON document in `wa_blobs`,
//! shared by every webapp of the deployment.

use serde_json::{Map, Value, json};

use crate::Error;
use crate::config::Config;
use crate::db::Db;

/// Name of the document in `wa_blobs`.
const BLOB: &str = "application_settings";

/// What `media.auto_download` may list (Meta's reference).
pub const MEDIA_TYPES: [&str; 6] = ["audio", "document", "voice", "video", "image", "sticker"];
/// What `webhooks.max_concurrent_requests` may be (Meta's reference).
pub const CONCURRENT_REQUESTS: [u64; 4] = [6, 12, 18, 24];

/// Defaults of every setting but the two intervals. Meta documents
/// `callback_persist` true, 3000 and 900000 ms, `sent_status` false and 6
/// concurrent requests; the others are the emulator's reading (see the docs).
pub fn defaults() -> Value {
    json!({
        "callback_persist": true,
        "callback_backoff_delay_ms": 3000,
        "max_callback_backoff_delay_ms": 900000,
        "media": {"auto_download": []},
        "pass_through": true,
        "sent_status": false,
        "webhooks": {
            "url": "",
            "max_concurrent_requests": 6,
            "message": {"sent": false, "delivered": true, "read": true},
        },
    })
}

/// The intervals' defaults: the knobs that seed a new schema, else Meta's 5 and 30.
pub fn default_intervals(cfg: &Config) -> (u64, u64) {
    (cfg.initial_heartbeat_interval.unwrap_or(5), cfg.initial_unhealthy_interval.unwrap_or(30))
}

/// A validated PATCH: the document part and the intervals apart.
#[derive(Debug, Default, PartialEq)]
pub struct Patch {
    pub doc: Map<String, Value>,
    pub heartbeat_interval: Option<u64>,
    pub unhealthy_interval: Option<u64>,
}

fn bad(key: &str, what: &str) -> String {
    format!("{key}: {what}")
}

fn boolean(key: &str, v: &Value) -> Result<Value, String> {
    v.as_bool().map(Value::Bool).ok_or_else(|| bad(key, "must be true or false"))
}

/// Milliseconds, as a number or a numeric string (Meta's examples use both).
fn millis(key: &str, v: &Value) -> Result<Value, String> {
    let n = v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
    n.filter(|n| (1..=86_400_000).contains(n))
        .map(|n| json!(n))
        .ok_or_else(|| bad(key, "must be a positive number of milliseconds (at most 86400000)"))
}

fn object<'a>(key: &str, v: &'a Value) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| bad(key, "must be an object"))
}

fn webhook_url(v: &Value) -> Result<Value, String> {
    let s = v.as_str().ok_or_else(|| bad("webhooks.url", "must be a string"))?.trim();
    if s.is_empty() {
        return Ok(json!(""));
    }
    if s.len() > 2048 {
        return Err(bad("webhooks.url", "is longer than 2048 characters"));
    }
    let url = reqwest::Url::parse(s).map_err(|e| bad("webhooks.url", &format!("is not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("webhooks.url", "must be an absolute https:// (or http://) URL"));
    }
    Ok(json!(s))
}

/// Checks every field of a PATCH body before anything is applied, so that a
/// request with one bad value changes nothing.
pub fn validate(body: &Value) -> Result<Patch, String> {
    let m = body.as_object().ok_or("expected a JSON object")?;
    let mut p = Patch::default();
    for (key, v) in m {
        let value = match key.as_str() {
            "callback_persist" | "pass_through" | "sent_status" => boolean(key, v)?,
            "callback_backoff_delay_ms" | "max_callback_backoff_delay_ms" => millis(key, v)?,
            "on_call_pager" => json!(v.as_str().ok_or_else(|| bad(key, "must be a string"))?),
            "heartbeat_interval" | "unhealthy_interval" => {
                let n = v
                    .as_u64()
                    .filter(|n| (1..=86_400).contains(n))
                    .ok_or_else(|| bad(key, "must be a positive number of seconds"))?;
                if key == "heartbeat_interval" {
                    p.heartbeat_interval = Some(n);
                } else {
                    p.unhealthy_interval = Some(n);
                }
                continue;
            }
            "media" => {
                let mut out = Map::new();
                for (k, v) in object(key, v)? {
                    if k != "auto_download" {
                        return Err(bad(&format!("media.{k}"), "is not a known setting"));
                    }
                    let list = v.as_array().ok_or_else(|| bad("media.auto_download", "must be a list"))?;
                    let mut types: Vec<Value> = vec![];
                    for t in list {
                        let t = t.as_str().filter(|t| MEDIA_TYPES.contains(t)).ok_or_else(|| {
                            bad("media.auto_download", &format!("entries must be among {}", MEDIA_TYPES.join(", ")))
                        })?;
                        if !types.contains(&json!(t)) {
                            types.push(json!(t));
                        }
                    }
                    out.insert(k.clone(), Value::Array(types));
                }
                Value::Object(out)
            }
            "webhooks" => {
                let mut out = Map::new();
                for (k, v) in object(key, v)? {
                    let value = match k.as_str() {
                        "url" => webhook_url(v)?,
                        "max_concurrent_requests" => {
                            let n = v.as_u64().filter(|n| CONCURRENT_REQUESTS.contains(n)).ok_or_else(|| {
                                bad("webhooks.max_concurrent_requests", "must be one of 6, 12, 18, 24")
                            })?;
                            json!(n)
                        }
                        "message" => {
                            let mut msg = Map::new();
                            for (mk, mv) in object("webhooks.message", v)? {
                                if !matches!(mk.as_str(), "sent" | "delivered" | "read") {
                                    return Err(bad(&format!("webhooks.message.{mk}"), "is not a known setting"));
                                }
                                msg.insert(mk.clone(), boolean(&format!("webhooks.message.{mk}"), mv)?);
                            }
                            Value::Object(msg)
                        }
                        _ => return Err(bad(&format!("webhooks.{k}"), "is not a known setting")),
                    };
                    out.insert(k.clone(), value);
                }
                Value::Object(out)
            }
            _ => return Err(bad(key, "is not a known application setting")),
        };
        p.doc.insert(key.clone(), value);
    }
    Ok(p)
}

/// Merges `patch` into `into`: objects field by field (a PATCH of
/// `webhooks.url` keeps `webhooks.max_concurrent_requests`), anything else replaced.
pub fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// The stored document over the defaults.
pub async fn load(db: &Db) -> Result<Value, Error> {
    let mut doc = defaults();
    if let Some(raw) = db.get_blob(BLOB).await?
        && let Ok(stored) = serde_json::from_str::<Value>(&raw)
    {
        merge(&mut doc, &stored);
    }
    Ok(doc)
}

pub async fn store(db: &Db, doc: &Value) -> Result<(), Error> {
    db.put_blob(BLOB, &doc.to_string()).await
}

/// Every setting, as `GET /v1/settings/application` answers it.
pub async fn current(db: &Db) -> Result<Value, Error> {
    let mut doc = load(db).await?;
    let s = db.settings().await?;
    if let Value::Object(m) = &mut doc {
        m.insert("heartbeat_interval".into(), json!(s.heartbeat_interval));
        m.insert("unhealthy_interval".into(), json!(s.unhealthy_interval));
    }
    Ok(doc)
}

/// Applies a validated patch.
pub async fn apply(db: &Db, p: &Patch) -> Result<(), Error> {
    if !p.doc.is_empty() {
        let mut doc = load(db).await?;
        merge(&mut doc, &Value::Object(p.doc.clone()));
        store(db, &doc).await?;
    }
    if let Some(n) = p.heartbeat_interval {
        db.set_setting("heartbeat_interval", &n.to_string()).await?;
    }
    if let Some(n) = p.unhealthy_interval {
        db.set_setting("unhealthy_interval", &n.to_string()).await?;
    }
    Ok(())
}

/// `DELETE /v1/settings/application`: every setting back to its default.
pub async fn reset(db: &Db, cfg: &Config) -> Result<(), Error> {
    db.delete_blob(BLOB).await?;
    let (hb, uh) = default_intervals(cfg);
    db.set_setting("heartbeat_interval", &hb.to_string()).await?;
    db.set_setting("unhealthy_interval", &uh.to_string()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_every_field_before_applying() {
        let p = validate(&json!({
            "callback_persist": false,
            "callback_backoff_delay_ms": "2000",
            "media": {"auto_download": ["image", "image", "audio"]},
            "webhooks": {"url": "https://hooks.example.com/wa", "max_concurrent_requests": 12},
            "heartbeat_interval": 3,
        }))
        .unwrap();
        assert_eq!(p.heartbeat_interval, Some(3));
        assert_eq!(p.doc["callback_backoff_delay_ms"], json!(2000));
        assert_eq!(p.doc["media"]["auto_download"], json!(["image", "audio"]));
        for bad in [
            json!({"webhooks": {"url": "ftp://x"}}),
            json!({"webhooks": {"url": "not a url"}}),
            json!({"webhooks": {"max_concurrent_requests": 7}}),
            json!({"webhooks": {"message": {"sent": "yes"}}}),
            json!({"media": {"auto_download": ["gif"]}}),
            json!({"sent_status": 1}),
            json!({"callback_backoff_delay_ms": 0}),
            json!({"unknown_setting": true}),
            json!({"unhealthy_interval": -1}),
            json!([1]),
        ] {
            assert!(validate(&bad).is_err(), "{bad}");
        }
        assert_eq!(validate(&json!({"webhooks": {"url": ""}})).unwrap().doc["webhooks"]["url"], json!(""));
    }

    #[test]
    fn merges_objects_field_by_field() {
        let mut doc = defaults();
        merge(&mut doc, &json!({"webhooks": {"url": "https://a.example"}, "media": {"auto_download": ["image"]}}));
        assert_eq!(doc["webhooks"]["url"], json!("https://a.example"));
        assert_eq!(doc["webhooks"]["max_concurrent_requests"], json!(6));
        merge(&mut doc, &json!({"media": {"auto_download": []}}));
        assert_eq!(doc["media"]["auto_download"], json!([]));
    }
}
