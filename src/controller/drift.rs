//! Drift detection without the live spec in memory.
//!
//! When a watch delivers a child, its cache keeps a digest of the fields the
//! operator's field manager owns, with their live values (read through the
//! object's managed fields), and drops the spec itself (see
//! [`super::outline`]). The apply step
//! compares that digest with the same digest of the desired object.
//!
//! The API server moves a field's ownership to whoever changes it, so a field
//! the operator sets and someone else changed drops out of the operator's
//! owned set: the two digests differ and the child is applied again (with
//! force, which takes the field back).

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// Logged when a child the operator just applied does not show the applied
/// values in the fields it owns: it would be written again at every
/// reconcile. The usual cause is a server default inside a field the operator
/// sets as one value (an atomic struct or list); the builder must spell it out.
pub const READ_BACK_DIFFERS: &str = "an applied child does not read back as applied";

/// The digest of the fields `manager` owns by server-side apply in `live`,
/// with their live values, but those at the JSON pointers `left_out`;
/// `None` when `manager` has applied none.
pub fn owned_digest(live: &Value, manager: &str, left_out: &[&str]) -> Option<String> {
    let entries = live.pointer("/metadata/managedFields")?.as_array()?;
    let mut owned = Map::new();
    let mut found = false;
    for entry in entries {
        let applied = entry["manager"] == manager
            && entry["operation"] == "Apply"
            && entry.get("subresource").and_then(Value::as_str).unwrap_or_default().is_empty();
        if let (true, Some(fields)) = (applied, entry.get("fieldsV1").and_then(Value::as_object)) {
            merge(&mut owned, fields);
            found = true;
        }
    }
    found.then(|| {
        let mut projected = project(live, &owned);
        leave_out(&mut projected, left_out);
        digest(&projected)
    })
}

/// The digest of a desired object, comparable with [`owned_digest`] of the
/// live object it was applied to with the same `left_out`: a managed field
/// set never holds the object's kind, API version, name or namespace.
pub fn desired_digest(desired: &Value, left_out: &[&str]) -> String {
    let mut desired = desired.clone();
    leave_out(&mut desired, left_out);
    if let Some(obj) = desired.as_object_mut() {
        obj.remove("apiVersion");
        obj.remove("kind");
        obj.remove("status");
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
        }
    }
    digest(&desired)
}

/// Removes the members at the JSON pointers `paths`.
fn leave_out(value: &mut Value, paths: &[&str]) {
    for path in paths {
        if let Some((parent, member)) = path.rsplit_once('/')
            && let Some(Value::Object(obj)) = value.pointer_mut(parent)
        {
            obj.remove(member);
        }
    }
}

/// Two managed field sets as one.
fn merge(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (key, sub) in from {
        match (into.get_mut(key), sub.as_object()) {
            (Some(Value::Object(have)), Some(more)) => merge(have, more),
            _ => {
                into.insert(key.clone(), sub.clone());
            }
        }
    }
}

/// The part of `value` that a managed field set names: `f:` a member of an
/// object, `k:` an element of a list by its keys, `v:` an element by its
/// value. A field named without members is kept whole: the manager set it
/// as one value (an atomic list or struct).
fn project(value: &Value, fields: &Map<String, Value>) -> Value {
    let member = |v: &Value, sub: &Value| match sub.as_object() {
        Some(sub) if !sub.is_empty() => project(v, sub),
        _ => v.clone(),
    };
    match value {
        Value::Object(obj) => Value::Object(
            fields
                .iter()
                .filter_map(|(key, sub)| {
                    let name = key.strip_prefix("f:")?;
                    Some((name.to_string(), member(obj.get(name)?, sub)))
                })
                .collect(),
        ),
        Value::Array(items) => {
            let mut kept: Vec<(usize, Value)> = fields
                .iter()
                .filter_map(|(key, sub)| {
                    if let Some(keys) = key.strip_prefix("k:") {
                        let keys: Map<String, Value> = serde_json::from_str(keys).ok()?;
                        let at = items.iter().position(|item| keys.iter().all(|(k, v)| item.get(k) == Some(v)))?;
                        Some((at, member(&items[at], sub)))
                    } else if let Some(item) = key.strip_prefix("v:") {
                        let item: Value = serde_json::from_str(item).ok()?;
                        let at = items.iter().position(|i| *i == item)?;
                        Some((at, item))
                    } else {
                        None
                    }
                })
                .collect();
            kept.sort_by_key(|(at, _)| *at);
            Value::Array(kept.into_iter().map(|(_, v)| v).collect())
        }
        other => other.clone(),
    }
}

/// A digest of `value` in which the spellings the API server may change
/// are one: members in any order, absent and empty values, `1` and `1.0`,
/// and quantities ("500m" is "0.5", "1Gi" is "1073741824").
fn digest(value: &Value) -> String {
    let mut hasher = Sha256::new();
    feed(&mut hasher, value, Role::Plain);
    hasher.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Plain,
    /// A map of resource names to quantities (`requests`, `limits`).
    Quantities,
    Quantity,
}

fn feed(h: &mut Sha256, value: &Value, role: Role) {
    let text = |h: &mut Sha256, tag: u8, s: &str| {
        h.update([tag]);
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    match value {
        Value::Object(obj) => {
            let mut members: Vec<(&String, &Value)> = obj.iter().filter(|(_, v)| !is_empty(v)).collect();
            members.sort_by_key(|(k, _)| *k);
            h.update(b"{");
            h.update((members.len() as u64).to_le_bytes());
            for (key, v) in members {
                text(h, b'k', key);
                let role = match (role, key.as_str()) {
                    (Role::Quantities, _) | (_, "sizeLimit") => Role::Quantity,
                    (_, "requests" | "limits" | "capacity") => Role::Quantities,
                    _ => Role::Plain,
                };
                feed(h, v, role);
            }
        }
        Value::Array(items) => {
            h.update(b"[");
            h.update((items.len() as u64).to_le_bytes());
            for item in items {
                feed(h, item, Role::Plain);
            }
        }
        Value::String(s) if role == Role::Quantity => match quantity(s) {
            Some(q) => text(h, b'q', &q),
            None => text(h, b's', s),
        },
        Value::String(s) => text(h, b's', s),
        Value::Number(n) if role == Role::Quantity => match quantity(&n.to_string()) {
            Some(q) => text(h, b'q', &q),
            None => text(h, b'n', &n.to_string()),
        },
        Value::Number(n) => match n.as_f64() {
            Some(f) => h.update([&[b'f'][..], &f.to_bits().to_le_bytes()].concat()),
            None => text(h, b'n', &n.to_string()),
        },
        Value::Bool(b) => h.update([b'b', u8::from(*b)]),
        Value::Null => h.update([b'0']),
    }
}

/// Absent, null, an empty list, or an object with nothing but empty members:
/// the API server stores none of them.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// A Kubernetes quantity as one exact spelling, `<digits>e<exponent>` with
/// no trailing zero in the digits; `None` for any other string.
fn quantity(s: &str) -> Option<String> {
    const BINARY: [(&str, u32); 6] = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50), ("Ei", 60)];
    const DECIMAL: [(&str, i32); 9] =
        [("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18)];
    let s = s.trim();
    let (number, mut shift, mut exponent) =
        if let Some((n, bits)) = BINARY.iter().find_map(|(suffix, bits)| Some((s.strip_suffix(suffix)?, *bits))) {
            (n, bits, 0)
        } else if let Some((n, exp)) = DECIMAL.iter().find_map(|(suffix, exp)| Some((s.strip_suffix(suffix)?, *exp))) {
            (n, 0, exp)
        } else if let Some((n, exp)) = s.split_once(['e', 'E']) {
            (n, 0, exp.parse::<i32>().ok()?)
        } else {
            (s, 0, 0)
        };
    let (sign, number) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    exponent -= i32::try_from(fraction.len()).ok()?;
    while shift > 0 {
        digits = digits.checked_mul(2)?;
        shift -= 1;
    }
    if digits == 0 {
        return Some("0e0".into());
    }
    while digits % 10 == 0 {
        digits /= 10;
        exponent += 1;
    }
    Some(format!("{sign}{digits}e{exponent}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ME: &str = "whatsapp-operator";

    /// A Deployment as the API server returns it after the operator applied
    /// its form and the server and another writer added to it.
    fn live(replicas: u64, fields: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "acme-webapp", "namespace": "team", "uid": "u1", "resourceVersion": "7", "generation": 3,
                "labels": {"app": "acme", "team": "a"},
                "managedFields": [
                    {"manager": ME, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                     "fieldsV1": fields},
                    {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:replicas": {}}}},
                    {"manager": "kubectl", "operation": "Update",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}
                ]
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "acme"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {"spec": {
                    "containers": [
                        {"name": "sidecar", "image": "other"},
                        {"name": "webapp", "image": "web:1", "imagePullPolicy": "IfNotPresent",
                         "args": ["--a", "--b"],
                         "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                         "terminationMessagePath": "/dev/termination-log"}
                    ],
                    "volumes": [{"name": "media", "emptyDir": {}}],
                    "dnsPolicy": "ClusterFirst"
                }}
            },
            "status": {"replicas": 2}
        })
    }

    fn owned() -> Value {
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {"f:spec": {
                    "f:containers": {"k:{\"name\":\"webapp\"}": {
                        ".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                        "f:resources": {"f:requests": {"f:cpu": {}, "f:memory": {}}},
                        "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}},
                                  "k:{\"name\":\"B\"}": {".": {}, "f:name": {}, "f:value": {}}}
                    }},
                    "f:volumes": {"k:{\"name\":\"media\"}": {".": {}, "f:name": {}, "f:emptyDir": {}}}
                }}
            }
        })
    }

    /// What the operator applied: its own spellings, in its own order.
    fn desired() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "acme-webapp", "namespace": "team", "labels": {"app": "acme"}, "annotations": {}},
            "spec": {
                "selector": {"matchLabels": {"app": "acme"}},
                "replicas": 2.0,
                "template": {"spec": {
                    "containers": [
                        {"image": "web:1", "name": "webapp", "args": ["--a", "--b"], "ports": [],
                         "resources": {"requests": {"memory": "1024Mi", "cpu": "0.5"}},
                         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
                    ],
                    "volumes": [{"name": "media", "emptyDir": {}}]
                }}
            }
        })
    }

    #[test]
    fn the_owned_fields_of_the_live_object_match_what_was_applied() {
        let live = owned_digest(&live(2, owned()), ME, &[]);
        assert_eq!(live, Some(desired_digest(&desired(), &[])));
    }

    #[test]
    fn a_field_changed_by_the_operator_or_taken_by_another_writer_differs() {
        assert_ne!(owned_digest(&live(3, owned()), ME, &[]), Some(desired_digest(&desired(), &[])), "a changed value");
        let mut taken = owned();
        taken["f:spec"].as_object_mut().unwrap().remove("f:replicas");
        assert_ne!(owned_digest(&live(2, taken), ME, &[]), Some(desired_digest(&desired(), &[])), "a field taken over");
        let mut more = desired();
        more["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = json!("3");
        assert_ne!(owned_digest(&live(2, owned()), ME, &[]), Some(desired_digest(&more, &[])), "a new desired value");
    }

    #[test]
    fn other_writers_fields_and_server_defaults_are_left_out() {
        let mut busy = live(2, owned());
        busy["spec"]["template"]["spec"]["containers"][1]["env"].as_array_mut().unwrap().push(json!({"name": "C"}));
        busy["metadata"]["labels"]["extra"] = json!("x");
        busy["spec"]["paused"] = json!(false);
        assert_eq!(owned_digest(&busy, ME, &[]), Some(desired_digest(&desired(), &[])));
    }

    #[test]
    fn an_object_without_the_operators_applied_fields_has_no_digest() {
        let mut other = live(2, owned());
        other["metadata"]["managedFields"][0]["manager"] = json!("someone");
        assert_eq!(owned_digest(&other, ME, &[]), None);
        assert_eq!(owned_digest(&json!({"metadata": {}}), ME, &[]), None);
    }

    #[test]
    fn fields_left_out_count_on_neither_side() {
        let mut copied = desired();
        copied["spec"]["template"]["spec"]["containers"][0]["image"] = json!("copied");
        let at = ["/spec/template/spec/containers/0/image"];
        assert_ne!(owned_digest(&live(2, owned()), ME, &[]), Some(desired_digest(&copied, &[])));
        assert_eq!(owned_digest(&live(2, owned()), ME, &at), Some(desired_digest(&copied, &at)));
    }

    #[test]
    fn list_order_counts() {
        let mut swapped = desired();
        let env = swapped["spec"]["template"]["spec"]["containers"][0]["env"].as_array_mut().unwrap();
        env.swap(0, 1);
        assert_ne!(owned_digest(&live(2, owned()), ME, &[]), Some(desired_digest(&swapped, &[])));
    }

    #[test]
    fn quantities_have_one_spelling() {
        for (a, b) in [("500m", "0.5"), ("1Gi", "1073741824"), ("1024Mi", "1Gi"), ("2k", "2000"), ("1e3", "1k")] {
            assert_eq!(quantity(a), quantity(b), "{a} and {b}");
        }
        assert_ne!(quantity("1Gi"), quantity("1G"));
        assert_eq!(quantity("0m").as_deref(), Some("0e0"));
        assert_eq!(quantity("abc"), None);
        assert_eq!(quantity("1.2.3"), None);
        // Only where a quantity is expected: an environment value stays text.
        let env = |v: &str| json!({"env": [{"name": "A", "value": v}]});
        assert_ne!(digest(&env("1k")), digest(&env("1000")));
    }
}
