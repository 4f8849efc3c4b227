//! Why a master, coreapp or webapp pod does not run, from its containers' states as
//! the kubelet reports them: a crash loop (with the last exit code), an image
//! that cannot be pulled, a container that cannot be made (a Secret key
//! missing). Only what lasts until someone acts or the pod changes: a pod
//! starting, waiting for its readiness probe or for a node is no trouble
//! (the progress deadline covers those).

use serde::Deserialize;

/// What the pod watch decodes of a pod's container states; the rest
/// of its status is never decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerBrief {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default)]
    pub state: Option<StateBrief>,
    #[serde(default)]
    pub last_state: Option<StateBrief>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StateBrief {
    #[serde(default)]
    pub waiting: Option<WaitingBrief>,
    #[serde(default)]
    pub terminated: Option<TerminatedBrief>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct WaitingBrief {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminatedBrief {
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Waiting reasons of an image that cannot be pulled or used: one trouble,
/// whichever of the first two the kubelet shows between its retries.
const PULL: [&str; 5] =
    ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "ImageInspectError"];

/// Waiting reasons of a container that cannot be made or run. Their
/// messages may name the runtime's container IDs and times, which change
/// at each retry: the reason alone is shown.
const CREATE: [&str; 2] = ["CreateContainerError", "RunContainerError"];

/// A container whose configuration cannot be met: its message says what
/// (a Secret or one of its keys missing) and stays the same between retries.
const CONFIG: &str = "CreateContainerConfigError";

/// At most this much of the kubelet's message goes into status.
const MAX_SHOWN: usize = 200;

/// The first container's trouble, if one has any (masters and coreapps run
/// one), worded to stay the same between the kubelet's retries so that a
/// status does not change with each: `restarting, last exit code 1` for a
/// container not ready that has ended with an error before (waiting in
/// `CrashLoopBackOff`, running again or just ended alike), `cannot pull
/// image REF (ErrImagePull)` (also while the kubelet shows
/// `ImagePullBackOff`), `CreateContainerConfigError: MESSAGE`,
/// `CreateContainerError`.
pub fn trouble(containers: &[ContainerBrief]) -> Option<Box<str>> {
    containers.iter().find_map(container_trouble).map(String::into_boxed_str)
}

fn container_trouble(c: &ContainerBrief) -> Option<String> {
    if c.ready {
        return None;
    }
    let state = c.state.as_ref();
    let waiting = state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
    if let Some(reason) = waiting {
        if PULL.contains(&reason) {
            let kind = if reason == "ImagePullBackOff" { "ErrImagePull" } else { reason };
            return Some(format!("cannot pull image {} ({kind})", c.image));
        }
        if CREATE.contains(&reason) {
            return Some(reason.to_string());
        }
        if reason == CONFIG {
            let message = state.and_then(|s| s.waiting.as_ref()?.message.as_deref()).map(shown).unwrap_or_default();
            return Some(format!("{reason}: {message}").trim_end_matches([' ', ':']).to_string());
        }
    }
    // Ended with an error and not ready since: the one it just ended with,
    // else the one before (waiting to restart, or running again).
    fn failed(s: Option<&StateBrief>) -> Option<&TerminatedBrief> {
        s?.terminated.as_ref().filter(|t| t.exit_code != 0)
    }
    let looping = waiting == Some("CrashLoopBackOff");
    let before = failed(c.last_state.as_ref()).filter(|_| c.restart_count > 0 || looping);
    let Some(ended) = failed(state).or(before) else {
        return looping.then(|| "restarting".to_string());
    };
    Some(format!("restarting, last {}", crate::text::exit(ended.exit_code, ended.reason.as_deref())))
}

/// A message on one line, cut at [`MAX_SHOWN`] bytes on a character boundary.
fn shown(message: &str) -> String {
    crate::text::clip(&message.split_whitespace().collect::<Vec<_>>().join(" "), MAX_SHOWN)
}

/// The troubles of a number's pods for a status message:
/// each pod by name, at most three and how many more.
pub fn listed<'a>(troubles: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    let mut all: Vec<(&str, &str)> = troubles.into_iter().collect();
    all.sort_unstable();
    let shown: Vec<String> = all.iter().take(3).map(|(pod, trouble)| format!("{pod} ({trouble})")).collect();
    match all.len() {
        0 => None,
        n if n > 3 => Some(format!("{} and {} more", shown.join(", "), n - 3)),
        _ => Some(shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn containers(status: serde_json::Value) -> Vec<ContainerBrief> {
        serde_json::from_value(status).unwrap()
    }

    #[test]
    fn a_crash_loop_reads_the_same_all_through_its_cycle() {
        let at = |state: serde_json::Value, restarts: i32, last: serde_json::Value| {
            trouble(&containers(serde_json::json!([{
                "name": "coreapp", "image": "coreapp:v2.53.2", "ready": false, "restartCount": restarts,
                "state": state, "lastState": last
            }])))
        };
        let failed = serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}});
        let expected = Some("restarting, last exit code 1".into());
        // It ends, waits to restart, runs again (not ready yet), ends again.
        assert_eq!(at(failed.clone(), 0, serde_json::json!({})), expected, "the first end");
        let backoff =
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}});
        assert_eq!(at(backoff.clone(), 1, failed.clone()), expected, "waiting to restart");
        let running = serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}});
        assert_eq!(at(running.clone(), 1, failed.clone()), expected, "running again, not ready");
        assert_eq!(at(failed.clone(), 1, failed.clone()), expected, "ended again");
        let killed = serde_json::json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        assert_eq!(at(backoff.clone(), 3, killed).as_deref(), Some("restarting, last exit code 137 (OOMKilled)"));
        assert_eq!(at(backoff, 0, serde_json::json!({})).as_deref(), Some("restarting"));
        // Ready again: no trouble, whatever ended before.
        let ready =
            containers(serde_json::json!([{"ready": true, "restartCount": 2, "state": running, "lastState": failed}]));
        assert_eq!(trouble(&ready), None);
    }

    #[test]
    fn an_image_that_cannot_be_pulled_reads_the_same_between_retries() {
        let pull = |reason: &str| {
            trouble(&containers(serde_json::json!([{
                "name": "master", "image": "docker.whatsapp.biz/coreapp:v2.57.2",
                "state": {"waiting": {"reason": reason, "message": format!("{reason}: rpc error: not found")}}
            }])))
        };
        assert_eq!(
            pull("ErrImagePull").as_deref(),
            Some("cannot pull image docker.whatsapp.biz/coreapp:v2.57.2 (ErrImagePull)")
        );
        assert_eq!(pull("ImagePullBackOff"), pull("ErrImagePull"), "the kubelet alternates between the two");
        assert!(pull("ErrImageNeverPull").unwrap().ends_with("(ErrImageNeverPull)"));
        assert!(pull("ImageInspectError").unwrap().ends_with("(ImageInspectError)"));
    }

    #[test]
    fn a_container_that_cannot_be_made_says_why() {
        let missing = containers(serde_json::json!([{
            "name": "coreapp",
            "state": {"waiting": {"reason": "CreateContainerConfigError",
                "message": "couldn't find key password in Secret team/db"}}
        }]));
        assert_eq!(
            trouble(&missing).as_deref(),
            Some("CreateContainerConfigError: couldn't find key password in Secret team/db")
        );
        // Cut on a character boundary: `é` spans bytes 199 and 200 of the message.
        let long = containers(serde_json::json!([{
            "name": "c", "state": {"waiting": {"reason": "CreateContainerConfigError",
                "message": format!("{}é{}", "x".repeat(199), "x".repeat(100))}}
        }]));
        let t = trouble(&long).unwrap();
        assert_eq!(&*t, format!("CreateContainerConfigError: {}…", "x".repeat(199)));
        // The runtime's message names container IDs and times that change
        // at each retry: the reason alone.
        for reason in ["CreateContainerError", "RunContainerError"] {
            let c = containers(serde_json::json!([{"name": "c", "state": {"waiting": {"reason": reason,
                "message": "failed to reserve container name \"x_1\": name is reserved for \"4f9c0a1b2c3d4e5f\""}}}]));
            assert_eq!(trouble(&c).as_deref(), Some(reason));
        }
    }

    #[test]
    fn starting_running_or_waiting_for_readiness_is_no_trouble() {
        for state in [
            serde_json::json!({"waiting": {"reason": "ContainerCreating"}}),
            serde_json::json!({"waiting": {"reason": "PodInitializing"}}),
            serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
            serde_json::json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
        ] {
            let c = containers(serde_json::json!([{"name": "c", "ready": false, "restartCount": 0, "state": state}]));
            assert_eq!(trouble(&c), None, "{state}");
        }
        assert_eq!(trouble(&[]), None, "a pod not yet scheduled has no container");
    }

    #[test]
    fn troubles_are_listed_by_pod_at_most_three() {
        assert_eq!(listed([]), None);
        let one = listed([("acme-coreapp-1", "CrashLoopBackOff, last exit code 1")]);
        assert_eq!(one.as_deref(), Some("acme-coreapp-1 (CrashLoopBackOff, last exit code 1)"));
        let many = listed([("p4", "t"), ("p2", "t"), ("p3", "t"), ("p1", "t"), ("p5", "t")]).unwrap();
        assert_eq!(many, "p1 (t), p2 (t), p3 (t) and 2 more");
    }
}
