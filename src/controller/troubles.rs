//! Why a master or coreapp pod does not run, from its containers' states as
//! the kubelet reports them: a crash loop (with the last exit code), an image
//! that cannot be pulled, a container that cannot be made (a Secret key
//! missing). Only what lasts until someone acts or the pod changes: a pod
//! starting, waiting for its readiness probe or for a node is no trouble
//! (the progress deadline covers those).

use serde::Deserialize;

/// What the node pods' watch decodes of a pod's container states; the rest
/// of its status is never decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerBrief {
    #[serde(default)]
    pub image: String,
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

/// Waiting reasons of an image that cannot be pulled: one trouble, whichever
/// of them the kubelet shows between its retries.
const PULL: [&str; 4] = ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"];

/// Waiting reasons of a container that cannot be made; their message says
/// why (a Secret or one of its keys missing, a bad command).
const CREATE: [&str; 2] = ["CreateContainerConfigError", "CreateContainerError"];

/// At most this much of the kubelet's message goes into status.
const MAX_SHOWN: usize = 200;

/// The first container's trouble, if one has any (masters and coreapps run
/// one): `CrashLoopBackOff, last exit code 1`, `cannot pull image REF
/// (ErrImagePull)` (the two pull
/// reasons the kubelet alternates between read the same, so a status does
/// not change with each retry), `CreateContainerConfigError: MESSAGE`.
pub fn trouble(containers: &[ContainerBrief]) -> Option<Box<str>> {
    containers.iter().find_map(container_trouble).map(String::into_boxed_str)
}

fn container_trouble(c: &ContainerBrief) -> Option<String> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    if reason == "CrashLoopBackOff" {
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        return Some(match last {
            Some(t) => match t.reason.as_deref().filter(|r| !r.is_empty() && *r != "Error") {
                Some(why) => format!("CrashLoopBackOff, last exit code {} ({why})", t.exit_code),
                None => format!("CrashLoopBackOff, last exit code {}", t.exit_code),
            },
            None => "CrashLoopBackOff".to_string(),
        });
    }
    if PULL.contains(&reason) {
        let kind = if reason == "ImagePullBackOff" { "ErrImagePull" } else { reason };
        return Some(format!("cannot pull image {} ({kind})", c.image));
    }
    if CREATE.contains(&reason) {
        let message = waiting.message.as_deref().map(shown).unwrap_or_default();
        return Some(format!("{reason}: {message}").trim_end_matches([' ', ':']).to_string());
    }
    None
}

/// A message on one line, cut at [`MAX_SHOWN`] bytes on a character boundary.
fn shown(message: &str) -> String {
    let mut line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > MAX_SHOWN {
        let mut end = MAX_SHOWN;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// The troubles of a tier's pods for a status message: each pod by name,
/// at most three and how many more.
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
    fn a_crash_loop_names_the_last_exit_code() {
        let looping = containers(serde_json::json!([{
            "name": "coreapp", "image": "coreapp:v2.53.2", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T00:00:00Z"}}
        }]));
        assert_eq!(trouble(&looping).as_deref(), Some("CrashLoopBackOff, last exit code 1"));
        let killed = containers(serde_json::json!([{
            "name": "coreapp",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
        }]));
        assert_eq!(trouble(&killed).as_deref(), Some("CrashLoopBackOff, last exit code 137 (OOMKilled)"));
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
        let long = containers(serde_json::json!([{
            "name": "c", "state": {"waiting": {"reason": "CreateContainerError", "message": format!("é{}", "x".repeat(300))}}
        }]));
        let t = trouble(&long).unwrap();
        assert!(t.ends_with('…') && t.len() < 240, "{t}");
        let silent =
            containers(serde_json::json!([{"name": "c", "state": {"waiting": {"reason": "CreateContainerError"}}}]));
        assert_eq!(trouble(&silent).as_deref(), Some("CreateContainerError"));
    }

    #[test]
    fn starting_running_or_waiting_for_readiness_is_no_trouble() {
        for state in [
            serde_json::json!({"waiting": {"reason": "ContainerCreating"}}),
            serde_json::json!({"waiting": {"reason": "PodInitializing"}}),
            serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
            serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        ] {
            let c = containers(serde_json::json!([{"name": "c", "ready": false, "state": state,
                "lastState": {"terminated": {"exitCode": 1}}}]));
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
