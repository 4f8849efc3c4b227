//! The schema upgrade Job as its object and its pods report it.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use super::procedure::JobState;

/// The label the Job controller puts on a Job's pods: the Job's name.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Pod phases once a container ran: from then on the phase says all that
/// [`state`] reads of the pod. Not `Failed`: a pending pod deleted before
/// any container started (its Job's deadline passed) ends `Failed` too, and
/// only its containers' states tell the two apart.
pub const STARTED_PHASES: [&str; 2] = ["Running", "Succeeded"];

/// Waiting reasons of a container that will not start without a change:
/// the image cannot be pulled, or the container cannot be created.
const UNSTARTABLE: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The Job's state. Its pods tell a Job whose container never started (so
/// the database is untouched) from one at work, and name an image that
/// cannot be pulled.
pub fn state(job: Option<&Job>, pods: &[Pod]) -> JobState {
    let Some(job) = job else { return JobState::Absent };
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    if status.succeeded.unwrap_or(0) > 0 || conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True") {
        return JobState::Succeeded;
    }
    if let Some(c) = conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True") {
        let reason = c.reason.clone().unwrap_or_default();
        let why = format!("{reason} {}", c.message.clone().unwrap_or_default());
        // Past its deadline the Job's pods are deleted: one that ran was seen
        // at work before (`status.upgrade.schemaStartedAt`), or is still there.
        let ran = reason != "DeadlineExceeded" || pods.iter().any(started);
        let why = match last_failure(pods) {
            Some(attempts) => format!("{}; {attempts}", why.trim()),
            None => why.trim().to_string(),
        };
        return JobState::Failed { why, ran };
    }
    if pods.iter().any(started) {
        return JobState::Running { last_failure: last_failure(pods) };
    }
    for pod in pods {
        let statuses = pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten());
        for c in statuses {
            let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
            let reason = waiting.reason.clone().unwrap_or_default();
            if UNSTARTABLE.contains(&reason.as_str()) {
                let message = waiting.message.clone().unwrap_or_default();
                return JobState::Unstartable(format!("image {}: {reason} {message}", c.image).trim().to_string());
            }
        }
    }
    let why = pods
        .iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.conditions.iter().flatten()))
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| format!("its pod is not scheduled: {}", c.message.clone().unwrap_or_default()))
        .unwrap_or_else(|| "its pod has not started yet".into());
    JobState::Pending(why)
}

/// At most this much of a failed attempt's log line goes into status.
const MAX_SHOWN: usize = 300;

/// The failed attempts so far and why the last one failed: its container's
/// exit code and the last line of its termination message, which is the
/// tail of its log (`terminationMessagePolicy: FallbackToLogsOnError`), such
/// as the database refusing the credentials. `None` while no attempt failed.
/// Attempts are the Job's failed pods whose container ran (each attempt is
/// a pod of its own, `restartPolicy: Never`): a pod deleted before it
/// started is none, and the Job's own count lags behind its pods.
fn last_failure(pods: &[Pod]) -> Option<String> {
    let failed: Vec<&k8s_openapi::api::core::v1::ContainerStateTerminated> = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .filter_map(|p| {
            let statuses = p.status.iter().flat_map(|s| s.container_statuses.iter().flatten());
            statuses
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
                .find(|t| t.exit_code != 0 && t.started_at.is_some())
        })
        .collect();
    let terminated = failed.iter().max_by_key(|t| t.finished_at.as_ref().map(|f| f.0))?;
    let attempts = match failed.len() {
        1 => "1 attempt failed".to_string(),
        n => format!("{n} attempts failed, the last"),
    };
    Some(match terminated.message.as_deref().and_then(last_line) {
        Some(line) => format!("{attempts} with exit code {}: {line}", terminated.exit_code),
        None => format!("{attempts} with {}", crate::text::exit(terminated.exit_code, terminated.reason.as_deref())),
    })
}

/// The last line of a log that says something, without colour codes, with
/// passwords in connection strings masked, at most [`MAX_SHOWN`] bytes.
fn last_line(log: &str) -> Option<String> {
    let line = log.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let plain: String = strip_escapes(line).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let shown = crate::text::clip(&mask_passwords(&plain), MAX_SHOWN);
    Some(shown.trim().to_string()).filter(|s| !s.is_empty())
}

/// The text without ANSI escape sequences (`ESC [`, parameters, a final
/// character from `@` to `~`).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The line with what may be a password masked, as status and events are
/// read more widely than pod logs: the secret of a `user:SECRET@` (URLs and
/// Go-style DSNs such as `user:SECRET@tcp(host)`) and the value given to a
/// `password`, `passwd` or `pwd` key (`password=x`, `"password": "x"`, any
/// case). What a log says in other forms is shown as it is.
fn mask_passwords(line: &str) -> String {
    mask_keyed(&mask_user_info(line))
}

/// `user:SECRET@`: the part between a word's first colon and the `@`.
fn mask_user_info(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find('@') {
        let head = &rest[..at];
        let word = head.rfind([' ', '(', '/', '"', '\'', ',', '=', '[']).map_or(0, |i| i + 1);
        match head[word..].find(':') {
            Some(colon) if word + colon + 1 < head.len() => {
                out.push_str(&head[..=word + colon]);
                out.push_str("***");
            }
            _ => out.push_str(head),
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

/// The value after `password`, `passwd` or `pwd`, an optional closing
/// quote, and `=` or `:`: quoted up to its closing quote, else up to a
/// separator. MySQL's `(using password: YES)` says only whether one was sent.
fn mask_keyed(line: &str) -> String {
    // ASCII lower-casing keeps every byte offset.
    let lower = line.to_ascii_lowercase();
    let mut out = String::with_capacity(line.len());
    let mut from = 0;
    let mut search = 0;
    while let Some((at, key)) = ["password", "passwd", "pwd"]
        .iter()
        .filter_map(|k| lower[search..].find(k).map(|i| (search + i, k.len())))
        .min()
    {
        search = at + key;
        let mut i = search;
        let bytes = line.as_bytes();
        if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i >= bytes.len() || (bytes[i] != b'=' && bytes[i] != b':') {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let quote = bytes.get(i).copied().filter(|b| *b == b'"' || *b == b'\'');
        if quote.is_some() {
            i += 1;
        }
        let end = match quote {
            Some(q) => line[i..].find(q as char),
            None => line[i..].find([' ', ',', ';', '&', ')', '\'', '"', '}']),
        }
        .map_or(line.len(), |e| i + e);
        if end > i && !matches!(&line[i..end], "YES" | "NO") {
            out.push_str(&line[from..i]);
            out.push_str("***");
            from = end;
            search = end;
        }
    }
    out.push_str(&line[from..]);
    out
}

/// Whether any container of the pod ever started: from then on the schema
/// may have changed.
fn started(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    if status.phase.as_deref().is_some_and(|phase| STARTED_PHASES.contains(&phase)) {
        return true;
    }
    // A container that never ran gets a terminated state too (deleted while
    // waiting), but no start time.
    let ran = |s: &k8s_openapi::api::core::v1::ContainerState| {
        s.running.is_some() || s.terminated.as_ref().is_some_and(|t| t.started_at.is_some())
    };
    status
        .container_statuses
        .iter()
        .flatten()
        .any(|c| c.restart_count > 0 || c.last_state.as_ref().is_some_and(ran) || c.state.as_ref().is_some_and(ran))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    fn job(status: JobStatus) -> Job {
        Job { status: Some(status), ..Default::default() }
    }

    fn pod(phase: &str, waiting: Option<&str>, running: bool) -> Pod {
        let state = ContainerState {
            waiting: waiting
                .map(|r| ContainerStateWaiting { reason: Some(r.into()), message: Some("not found".into()) }),
            running: running.then(ContainerStateRunning::default),
            ..Default::default()
        };
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "schema-upgrade".into(),
                    image: "docker.whatsapp.biz/coreapp:v2.55.9".into(),
                    state: Some(state),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod ended `Failed`, its container terminated, with a start time
    /// when it ran.
    fn ended(started: bool) -> Pod {
        let mut p = pod("Failed", None, false);
        let c = &mut p.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0];
        c.state = Some(ContainerState {
            terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                exit_code: 137,
                started_at: started.then_some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                )),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn finished_jobs_are_read_from_the_job() {
        assert_eq!(state(None, &[]), JobState::Absent);
        assert_eq!(state(Some(&job(JobStatus { succeeded: Some(1), ..Default::default() })), &[]), JobState::Succeeded);
        let failed = JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("BackoffLimitExceeded".into()),
                message: Some("Job has reached the specified backoff limit".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(
            matches!(state(Some(&job(failed)), &[]), JobState::Failed { why, ran: true } if why.starts_with("BackoffLimitExceeded"))
        );
        // Past its deadline: its pods are gone, and whether one ran is what
        // the pods left say (the procedure remembers one seen at work).
        let expired = JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("DeadlineExceeded".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(matches!(state(Some(&job(expired.clone())), &[]), JobState::Failed { ran: false, .. }));
        let left = [pod("Running", None, true)];
        assert!(matches!(state(Some(&job(expired.clone())), &left), JobState::Failed { ran: true, .. }));
        // A pending pod deleted at the deadline ends Failed, its container
        // terminated without ever starting; one that ran has a start time.
        assert!(matches!(state(Some(&job(expired.clone())), &[ended(false)]), JobState::Failed { ran: false, .. }));
        assert!(matches!(state(Some(&job(expired)), &[ended(true)]), JobState::Failed { ran: true, .. }));
    }

    #[test]
    fn an_image_that_cannot_be_pulled_is_named() {
        let j = job(JobStatus::default());
        let s = state(Some(&j), &[pod("Pending", Some("ImagePullBackOff"), false)]);
        assert!(
            matches!(&s, JobState::Unstartable(m) if m.contains("coreapp:v2.55.9") && m.contains("ImagePullBackOff")),
            "{s:?}"
        );
    }

    #[test]
    fn a_pod_that_never_started_leaves_the_database_untouched() {
        let j = job(JobStatus::default());
        assert!(matches!(state(Some(&j), &[]), JobState::Pending(_)));
        let mut unscheduled = pod("Pending", None, false);
        unscheduled.status.as_mut().unwrap().container_statuses = None;
        unscheduled.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            message: Some("0/3 nodes are available".into()),
            ..Default::default()
        }]);
        assert!(matches!(state(Some(&j), &[unscheduled]), JobState::Pending(m) if m.contains("0/3 nodes")));
        assert!(matches!(state(Some(&j), &[pod("Pending", Some("ContainerCreating"), false)]), JobState::Pending(_)));
    }

    #[test]
    fn a_started_container_means_the_upgrade_is_at_work() {
        let j = job(JobStatus::default());
        assert_eq!(state(Some(&j), &[pod("Running", None, true)]), JobState::running());
        // An earlier attempt that ran counts even when the next one cannot pull.
        let mut retried = pod("Pending", Some("ErrImagePull"), false);
        retried.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].restart_count = 1;
        assert_eq!(state(Some(&j), &[retried]), JobState::running());
        // An earlier attempt whose container ran and failed; one deleted
        // while it waited (its container never started) is no such attempt.
        assert!(matches!(
            state(Some(&j), &[ended(true), pod("Pending", None, false)]),
            JobState::Running { last_failure: Some(m) } if m == "1 attempt failed with exit code 137"
        ));
        assert!(matches!(state(Some(&j), &[ended(false), pod("Pending", None, false)]), JobState::Pending(_)));
    }

    /// A pod that ran and failed, its container's termination message `log`,
    /// finished at `second`.
    fn failed_attempt(log: Option<&str>, second: i64) -> Pod {
        let mut p = ended(true);
        let c = &mut p.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0];
        let t = c.state.as_mut().unwrap().terminated.as_mut().unwrap();
        t.exit_code = 1;
        t.reason = Some("Error".into());
        t.message = log.map(String::from);
        t.finished_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
        ));
        p
    }

    #[test]
    fn a_failed_attempt_says_why_from_its_log_tail() {
        let refused = "2026-12-07T06:00:00Z  INFO starting\n\u{1b}[31mERROR\u{1b}[0m connect to the database server: Access denied for user 'wa'@'10.0.0.5'\n\n";
        let unreachable = "waiting for the database at db:3306\ndatabase at db:3306 is not reachable\n";
        // The Job's count may include a pod deleted before it ran: the pods tell.
        let at_work = JobStatus { failed: Some(3), ..Default::default() };
        // The last attempt to end is the one named, with the attempts so far.
        let pods =
            [failed_attempt(Some(unreachable), 10), failed_attempt(Some(refused), 20), pod("Pending", None, false)];
        let s = state(Some(&job(at_work.clone())), &pods);
        assert_eq!(
            s,
            JobState::Running {
                last_failure: Some(
                    "2 attempts failed, the last with exit code 1: ERROR connect to the database server: Access denied for user 'wa'@'10.0.0.5'"
                        .into()
                )
            }
        );
        let lagging = JobStatus::default();
        let s = state(Some(&job(lagging)), &[failed_attempt(Some(unreachable), 10)]);
        assert!(
            matches!(&s, JobState::Running { last_failure: Some(m) } if m == "1 attempt failed with exit code 1: database at db:3306 is not reachable"),
            "{s:?}"
        );
        // No log: the exit code alone; killed: its reason.
        let quiet = state(Some(&job(at_work.clone())), &[failed_attempt(None, 10)]);
        assert!(
            matches!(&quiet, JobState::Running { last_failure: Some(m) } if m.ends_with("exit code 1")),
            "{quiet:?}"
        );
        let mut killed = failed_attempt(None, 10);
        let t = killed.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].state.as_mut().unwrap();
        t.terminated.as_mut().unwrap().reason = Some("OOMKilled".into());
        t.terminated.as_mut().unwrap().exit_code = 137;
        let s = state(Some(&job(at_work.clone())), &[killed]);
        assert!(
            matches!(&s, JobState::Running { last_failure: Some(m) } if m.ends_with("exit code 137 (OOMKilled)")),
            "{s:?}"
        );
        // A long line is cut, on a character boundary (`é` spans bytes 299 and 300).
        let long = format!("{}é{}", "x".repeat(299), "x".repeat(100));
        let s = state(Some(&job(at_work.clone())), &[failed_attempt(Some(&long), 10)]);
        let JobState::Running { last_failure: Some(m) } = s else { panic!("{s:?}") };
        assert!(m.ends_with(&format!("{}…", "x".repeat(299))), "{m}");
        // Failed for good: the Job's reason, then the last attempt's.
        let mut done = at_work;
        done.conditions = Some(vec![JobCondition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: Some("BackoffLimitExceeded".into()),
            message: Some("Job has reached the specified backoff limit".into()),
            ..Default::default()
        }]);
        let s = state(Some(&job(done)), &pods);
        assert!(
            matches!(&s, JobState::Failed { why, ran: true } if why.starts_with("BackoffLimitExceeded Job has reached the specified backoff limit; 2 attempts failed") && why.contains("Access denied")),
            "{s:?}"
        );
        // Colour codes go, tabs read as spaces, passwords are masked.
        let shown = |log: &str| last_line(log).unwrap();
        assert_eq!(shown("\u{1b}[1;31mERROR\u{1b}[0m\tdone\u{1b}[2~ here"), "ERROR done here");
        assert_eq!(
            shown("cannot open mysql://wa:s3cret@db:3306/waent (timeout)"),
            "cannot open mysql://wa:***@db:3306/waent (timeout)"
        );
        assert_eq!(shown("dsn host=db user=wa Password=s3cret dbname=x"), "dsn host=db user=wa Password=*** dbname=x");
        assert_eq!(shown("auth failed, password: 'hunter 2', retrying"), "auth failed, password: '***', retrying");
        assert_eq!(
            shown("Access denied for user 'wa'@'10.0.0.5' (using password: YES)"),
            "Access denied for user 'wa'@'10.0.0.5' (using password: YES)",
            "MySQL's own words say only whether one was sent"
        );
        assert_eq!(shown("see http://example.com/docs"), "see http://example.com/docs");
        assert_eq!(shown("open wa:s3cret@tcp(db:3306)/waent failed"), "open wa:***@tcp(db:3306)/waent failed");
        assert_eq!(shown(r#"config {"user":"wa","password": "s3 cret"}"#), r#"config {"user":"wa","password": "***"}"#);
        assert_eq!(shown("PWD = s3cret; passwd:x"), "PWD = ***; passwd:***");
        assert_eq!(shown("ends with password="), "ends with password=");
        assert_eq!(shown("unclosed password='s3cret"), "unclosed password='***");
        assert_eq!(shown("café password=été, ok"), "café password=***, ok", "not ASCII");
        assert_eq!(
            shown("password authentication failed for user \"wa\""),
            "password authentication failed for user \"wa\""
        );
        // Nothing failed yet: nothing to say.
        assert_eq!(state(Some(&job(JobStatus::default())), &[pod("Running", None, true)]), JobState::running());
    }
}
