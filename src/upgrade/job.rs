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
        return JobState::Failed { why: why.trim().to_string(), ran };
    }
    if pods.iter().any(started) {
        return JobState::Running;
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
        assert_eq!(state(Some(&j), &[pod("Running", None, true)]), JobState::Running);
        // An earlier attempt that ran counts even when the next one cannot pull.
        let mut retried = pod("Pending", Some("ErrImagePull"), false);
        retried.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].restart_count = 1;
        assert_eq!(state(Some(&j), &[retried]), JobState::Running);
        // An earlier attempt whose container ran and failed; one deleted
        // while it waited (its container never started) is no such attempt.
        assert_eq!(state(Some(&j), &[ended(true), pod("Pending", None, false)]), JobState::Running);
        assert!(matches!(state(Some(&j), &[ended(false), pod("Pending", None, false)]), JobState::Pending(_)));
    }
}
