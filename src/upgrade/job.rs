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
        let why = match last_failure(status.failed, pods) {
            Some(attempts) => format!("{}; {attempts}", why.trim()),
            None => why.trim().to_string(),
        };
        return JobState::Failed { why, ran };
    }
    if pods.iter().any(started) {
        return JobState::Running { last_failure: last_failure(status.failed, pods) };
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
fn last_failure(failed: Option<i32>, pods: &[Pod]) -> Option<String> {
    let terminated = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .flat_map(|c| [c.state.as_ref(), c.last_state.as_ref()])
        .filter_map(|s| s?.terminated.as_ref())
        .filter(|t| t.exit_code != 0 && t.started_at.is_some())
        .max_by_key(|t| t.finished_at.as_ref().map(|f| f.0))?;
    let attempts = match failed.unwrap_or(1).max(1) {
        1 => "1 attempt failed".to_string(),
        n => format!("{n} attempts failed, the last"),
    };
    let line = terminated.message.as_deref().and_then(last_line);
    let reason = terminated.reason.as_deref().filter(|r| !r.is_empty() && *r != "Error");
    Some(match (line, reason) {
        (Some(line), _) => format!("{attempts} with exit code {}: {line}", terminated.exit_code),
        (None, Some(reason)) => format!("{attempts} with exit code {} ({reason})", terminated.exit_code),
        (None, None) => format!("{attempts} with exit code {}", terminated.exit_code),
    })
}

/// The last line of a log that says something, without control characters
/// (colour codes), at most [`MAX_SHOWN`] bytes.
fn last_line(log: &str) -> Option<String> {
    let line = log.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let mut shown: String = strip_escapes(line).chars().filter(|c| !c.is_control()).collect();
    if shown.len() > MAX_SHOWN {
        let mut end = MAX_SHOWN;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    Some(shown.trim().to_string()).filter(|s| !s.is_empty())
}

/// The text without ANSI escape sequences (`ESC [ ... letter`).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
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
        let at_work = JobStatus { failed: Some(2), ..Default::default() };
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
        let one = JobStatus { failed: Some(1), ..Default::default() };
        let s = state(Some(&job(one)), &[failed_attempt(Some(unreachable), 10)]);
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
        // A long line is cut, on a character boundary.
        let long = format!("é{}", "x".repeat(400));
        let s = state(Some(&job(at_work.clone())), &[failed_attempt(Some(&long), 10)]);
        let JobState::Running { last_failure: Some(m) } = s else { panic!("{s:?}") };
        assert!(m.ends_with('…') && m.len() < 400, "{m}");
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
        // Nothing failed yet: nothing to say.
        assert_eq!(state(Some(&job(JobStatus::default())), &[pod("Running", None, true)]), JobState::running());
    }
}
