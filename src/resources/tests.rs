//! Unit tests of the builders: no cluster, just objects in and objects out.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::config::{API_KEY, JWT_KEY};
use super::names::*;
use super::*;
use crate::api::*;
use crate::fixtures::sample;

fn inputs() -> BuildInputs {
    BuildInputs { credentials_digest: "creds-v1".into(), ..Default::default() }
}

fn container(sts: &StatefulSet) -> &Container {
    &sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

#[test]
fn defaults_follow_meta_templates() {
    let wan = sample();
    assert_eq!(
        wan.spec.multiconnect,
        MulticonnectSpec { shards: 1, standby_coreapps: 1, masters: 2, confirm_shard_change: None }
    );
    assert_eq!(wan.spec.webapp.replicas, 2);
    assert_eq!(wan.spec.images.coreapp, "docker.whatsapp.biz/coreapp");
    assert_eq!(wan.spec.images.webapp, "docker.whatsapp.biz/web");
    assert_eq!(wan.spec.media.size, Quantity("50Gi".into()));
    assert_eq!(wan.spec.media.reclaim_policy, ReclaimPolicy::Retain);
    assert_eq!(wan.spec.database.connection_idle_timeout_ms, 180_000);
    assert_eq!(wan.spec.database.effective_port(), 3306);
    let creds = &wan.spec.database.credentials_secret_ref;
    assert_eq!((creds.username_key.as_str(), creds.password_key.as_str()), ("username", "password"));
}

#[test]
fn node_pods_follow_the_statefulsets_and_their_containers() {
    let mut wan = sample();
    let pods = workloads::node_pods(&wan);
    let built = build(&wan, &inputs());
    let container_of = |sts: &StatefulSet| container(sts).name.clone();
    let name = |sts: &StatefulSet, i: usize| format!("{}-{i}", sts.metadata.name.as_deref().unwrap());
    assert_eq!(
        pods,
        vec![
            (name(&built.coreapps, 0), container_of(&built.coreapps)),
            (name(&built.coreapps, 1), container_of(&built.coreapps)),
            (name(&built.masters, 0), container_of(&built.masters)),
            (name(&built.masters, 1), container_of(&built.masters)),
        ]
    );
    wan.spec.multiconnect = MulticonnectSpec { shards: 4, standby_coreapps: 2, masters: 3, confirm_shard_change: None };
    let pods = workloads::node_pods(&wan);
    assert_eq!(pods.len(), 3 + 6);
    assert_eq!(pods[5].0, format!("{}-5", Names::new(&wan).tier(Tier::Coreapp)));
    assert_eq!(pods.last().unwrap().0, format!("{}-2", Names::new(&wan).tier(Tier::Master)));
}

#[test]
fn the_credentials_read_are_recorded_on_the_config_map_without_rolling_pods() {
    let wan = sample();
    let unrecorded = build(&wan, &inputs());
    assert!(unrecorded.config.annotations().get(ANNOTATION_CREDENTIALS_READ).is_none());
    let recorded = build(&wan, &BuildInputs { credentials_version: Some("4711".into()), ..inputs() });
    let value = recorded.config.annotations()[ANNOTATION_CREDENTIALS_READ].clone();
    let record = config::CredentialsRecord::parse(&value).expect("the record reads back");
    assert_eq!(record, config::CredentialsRecord::new(&wan, "4711", "creds-v1"));
    let hash = |c: &Children| container_hash(&c.masters);
    assert_eq!(hash(&unrecorded), hash(&recorded), "the record alone rolls no pod");

    // It stands for the Secret only at that version and for the same keys.
    assert_eq!(record.clone().current(&wan, Some("4711")), Some(record.clone()));
    assert_eq!(record.clone().current(&wan, Some("4712")), None, "the Secret changed since");
    assert_eq!(record.clone().current(&wan, None), None, "the Secret is gone");
    let mut other_keys = wan.clone();
    other_keys.spec.database.credentials_secret_ref.password_key = "pass".into();
    assert_eq!(record.current(&other_keys, Some("4711")), None, "the spec reads other keys now");
    for bad in ["", "4711", "4711 keys", "4711 keys digest more", "4711  digest"] {
        assert_eq!(config::CredentialsRecord::parse(bad), None, "{bad:?}");
    }
}

fn container_hash(sts: &StatefulSet) -> String {
    sts.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[ANNOTATION_CONFIG_HASH]
        .clone()
}

#[test]
fn config_map_carries_the_multiconnect_environment() {
    let mut wan = sample();
    wan.spec.database.engine = DatabaseEngine::PostgreSQL;
    wan.spec.database.port = None;
    wan.spec.database.tls =
        Some(Box::new(DatabaseTls { ca_secret_ref: SecretKeyRef { name: "db-ca".into(), key: "root.pem".into() } }));
    let cm = config::config_map(&wan, None);
    let data = cm.data.unwrap();
    let expect = [
        ("WA_APP_MULTICONNECT", "1"),
        ("COREAPP_EXTERNAL_PORTS", "6250,6251,6252,6253"),
        ("WA_DB_ENGINE", "PGSQL"),
        ("WA_DB_HOSTNAME", "mysql.db.svc"),
        ("WA_DB_PORT", "5432"),
        ("WA_DB_PERSISTENT", "1"),
        ("WA_CONFIG_ON_DB", "1"),
        ("WA_DB_NAME_PREFIX", "wa15550001111"),
        ("WA_DB_SSL_CA", "/etc/whatsapp/db-ca/root.pem"),
    ];
    for (k, v) in expect {
        assert_eq!(data.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(!data.contains_key("WA_DB_CONNECTION_IDLE_TIMEOUT"), "the client reads it for MySQL only");
    assert_eq!(cm.metadata.name.as_deref(), Some("acme-config"));
    assert!(!data.contains_key("WA_DB_PASSWORD"), "credentials never go into a ConfigMap");
}

#[test]
fn config_map_without_tls_has_no_ca_path() {
    let data = config::config_map(&sample(), None).data.unwrap();
    assert!(!data.contains_key("WA_DB_SSL_CA"));
    assert_eq!(data["WA_DB_ENGINE"], "MYSQL");
    assert_eq!(data["WA_DB_CONNECTION_IDLE_TIMEOUT"], "180000");
}

#[test]
fn every_number_gets_its_own_database_prefix() {
    let mut wan = sample();
    assert_eq!(config::config_map(&wan, None).data.unwrap()["WA_DB_NAME_PREFIX"], "wa15550001111");
    wan.spec.database.name_prefix = Some("acme_prod".into());
    assert_eq!(config::config_map(&wan, None).data.unwrap()["WA_DB_NAME_PREFIX"], "acme_prod");
}

#[test]
fn every_container_has_the_explicit_command_of_metas_templates() {
    let mut wan = sample();
    for (engine, script) in
        [(DatabaseEngine::MySQL, "wait_on_mysql.sh"), (DatabaseEngine::PostgreSQL, "wait_on_postgres.sh")]
    {
        wan.spec.database.engine = engine;
        let c = build(&wan, &inputs());
        let job = schema_job::schema_job(&wan, "2.55.1");
        let containers = [
            container(&c.masters).clone(),
            container(&c.coreapps).clone(),
            c.webapps.spec.unwrap().template.spec.unwrap().containers[0].clone(),
            job.spec.unwrap().template.spec.unwrap().containers[0].clone(),
        ];
        for container in containers {
            assert_eq!(
                container.command,
                Some(vec![format!("/opt/whatsapp/bin/{script}"), "/opt/whatsapp/bin/launch_within_docker.sh".into()]),
                "{}",
                container.name
            );
            let caps = container.security_context.unwrap().capabilities.unwrap();
            assert_eq!(caps.drop, Some(vec!["MKNOD".to_string()]), "{}", container.name);
        }
    }
}

#[test]
fn nodes_listen_on_every_address_and_webapps_carry_their_server_name() {
    let mut wan = sample();
    let c = build(&wan, &inputs());
    for sts in [&c.masters, &c.coreapps] {
        assert_eq!(env(container(sts), "WA_TCP_LISTEN_ADDRESS").and_then(|e| e.value.as_deref()), Some("any"));
    }
    wan.spec.webapp.server_name = Some("wa.example.com".into());
    let web = build(&wan, &inputs()).webapps.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let server = web.env.unwrap().into_iter().find(|e| e.name == "WA_WEB_SERVERNAME").unwrap();
    assert_eq!(server.value.as_deref(), Some("wa.example.com"));
}

#[test]
fn key_secret_is_generated_once_and_never_rotated() {
    let wan = sample();
    let created = config::keys_secret(&wan, None).expect("created when missing");
    let data = created.data.clone().unwrap();
    let api_key = String::from_utf8(data[API_KEY].0.clone()).unwrap();
    assert!((12..=128).contains(&api_key.len()), "API key length within the client's 12-128 rule");
    assert_ne!(data[JWT_KEY], data[API_KEY]);

    // Complete: nothing to write.
    let mut live = created.clone();
    live.metadata.resource_version = Some("7".into());
    assert!(config::keys_secret(&wan, Some(&live)).is_none());

    // One key lost: only that key is filled in, the other keeps its value.
    let mut partial = live.clone();
    partial.data.as_mut().unwrap().remove(JWT_KEY);
    let repaired = config::keys_secret(&wan, Some(&partial)).expect("missing key is filled in");
    let repaired_data = repaired.data.unwrap();
    assert_eq!(repaired_data[API_KEY], data[API_KEY]);
    assert!(!repaired_data[JWT_KEY].0.is_empty());
    assert_eq!(repaired.metadata.resource_version.as_deref(), Some("7"), "optimistic concurrency on update");

    // Two generations give different keys.
    let other = config::keys_secret(&wan, None).unwrap().data.unwrap();
    assert_ne!(other[API_KEY], data[API_KEY]);
}

#[test]
fn replica_counts_per_tier() {
    let mut wan = sample();
    wan.spec.multiconnect = MulticonnectSpec { shards: 4, standby_coreapps: 2, masters: 3, confirm_shard_change: None };
    wan.spec.webapp.replicas = 5;
    let children = build(&wan, &inputs());
    assert_eq!(children.masters.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(children.coreapps.spec.as_ref().unwrap().replicas, Some(6), "shards + standbys");
    assert_eq!(children.webapps.spec.as_ref().unwrap().replicas, Some(5));
}

#[test]
fn masters_and_coreapps_run_the_coreapp_image_with_their_roles() {
    let wan = sample();
    let children = build(&wan, &inputs());
    let master = container(&children.masters);
    let coreapp = container(&children.coreapps);
    for c in [master, coreapp] {
        assert_eq!(c.image.as_deref(), Some("docker.whatsapp.biz/coreapp:v2.53.2"));
        let host = env(c, "COREAPP_HOSTNAME").unwrap();
        assert_eq!(host.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "status.podIP");
        let pw = env(c, "WA_DB_PASSWORD").unwrap().value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((pw.name.as_str(), pw.key.as_str()), ("acme-db", "password"));
        let user = env(c, "WA_DB_USERNAME").unwrap().value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!(user.key, "username");
        assert_eq!(c.env_from.as_ref().unwrap()[0].config_map_ref.as_ref().unwrap().name, "acme-config");
        let ports: Vec<i32> = c.ports.as_ref().unwrap().iter().map(|p| p.container_port).collect();
        assert_eq!(ports, vec![6250, 6251, 6252, 6253]);
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some() && c.startup_probe.is_some());
    }
    assert_eq!(env(master, "WA_MASTER_NODE").and_then(|e| e.value.as_deref()), Some("1"));
    assert!(env(coreapp, "WA_MASTER_NODE").is_none(), "coreapps are not masters");
    assert!(env(coreapp, "WA_API_KEY").is_none(), "only webapps get the API key");
}

#[test]
fn media_and_data_mounts_use_meta_subpaths() {
    let wan = sample();
    let children = build(&wan, &inputs());
    let mounts = container(&children.coreapps).volume_mounts.clone().unwrap();
    let find = |path: &str| mounts.iter().find(|m| m.mount_path == path).unwrap().clone();
    assert_eq!(find("/usr/local/wamedia").sub_path.as_deref(), Some("waent/media"));
    assert_eq!(find("/usr/local/waent/data").sub_path.as_deref(), Some("waent/data"));
    assert_eq!(find("/usr/local/waent/log").name, "log");
    let volumes = children.coreapps.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    let media = volumes.iter().find(|v| v.name == "media").unwrap();
    assert_eq!(media.persistent_volume_claim.as_ref().unwrap().claim_name, "acme-media");

    let web = children.webapps.spec.unwrap().template.spec.unwrap();
    let web_mounts = web.containers[0].volume_mounts.clone().unwrap();
    assert!(
        web_mounts.iter().any(|m| m.mount_path == "/usr/local/wamedia" && m.sub_path.as_deref() == Some("waent/media"))
    );
    // Meta's GCP and AWS templates mount waent/data on webapps too.
    assert!(
        web_mounts
            .iter()
            .any(|m| m.mount_path == "/usr/local/waent/data" && m.sub_path.as_deref() == Some("waent/data"))
    );
    assert!(!web_mounts.iter().any(|m| m.mount_path == "/usr/local/waent/log"));
}

#[test]
fn existing_claim_is_mounted_and_no_claim_is_built() {
    let mut wan = sample();
    wan.spec.media.existing_claim = Some("shared-nfs".into());
    let children = build(&wan, &inputs());
    assert!(children.media.is_none());
    let volumes = children.masters.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "shared-nfs");
}

#[test]
fn retained_media_claim_has_no_owner_and_deleted_one_has() {
    let mut wan = sample();
    let retained = media::media_claim(&wan, None, media::Records::default()).unwrap();
    assert!(retained.metadata.owner_references.is_none(), "Retain survives the WhatsAppNumber");
    let spec = retained.spec.unwrap();
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
    assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"], Quantity("50Gi".into()));

    wan.spec.media.reclaim_policy = ReclaimPolicy::Delete;
    let deleted = media::media_claim(&wan, None, media::Records::default()).unwrap();
    let owners = deleted.metadata.owner_references.unwrap();
    assert_eq!(owners[0].uid, "1234-5678");
    assert_eq!(owners[0].controller, Some(true));
}

#[test]
fn media_claim_keeps_immutable_fields_and_never_shrinks() {
    let mut wan = sample();
    wan.spec.media.storage_class_name = Some("fast".into());
    wan.spec.media.size = Quantity("20Gi".into());
    let live = PersistentVolumeClaim {
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: Some("nfs".into()),
            volume_mode: Some("Filesystem".into()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity("50Gi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = media::media_claim(&wan, Some(&live), media::Records::default()).unwrap().spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"), "class is fixed once the claim exists");
    assert_eq!(spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"], Quantity("50Gi".into()));

    wan.spec.media.size = Quantity("100Gi".into());
    let grown = media::media_claim(&wan, Some(&live), media::Records::default()).unwrap().spec.unwrap();
    assert_eq!(grown.resources.unwrap().requests.unwrap()["storage"], Quantity("100Gi".into()));
}

#[test]
fn a_class_the_cluster_filled_in_is_kept_without_a_new_desired_form() {
    let mut wan = sample();
    wan.spec.media.storage_class_name = None;
    let created = media::media_claim(&wan, None, media::Records::default()).unwrap();
    let mut live = created.clone();
    live.spec.as_mut().unwrap().storage_class_name = Some("standard".into());
    let again = media::media_claim(&wan, Some(&live), media::Records::default()).unwrap();
    assert_eq!(again.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("standard"), "never unset");
    let hash = |c: &PersistentVolumeClaim| c.metadata.annotations.as_ref().unwrap()[ANNOTATION_APPLIED_HASH].clone();
    assert_eq!(hash(&again), hash(&created), "the default class is no change of the desired form");
}

#[test]
fn the_media_claim_records_the_newest_schema_and_never_an_older_one() {
    let mut wan = sample();
    let databases = crate::api::database_identity(&wan.spec);
    let recorded = |c: &PersistentVolumeClaim| media::schema_version_of(c, &databases);
    let first = media::media_claim(&wan, None, media::Records::default()).unwrap();
    assert_eq!(recorded(&first), None, "no schema yet");
    let created =
        media::media_claim(&wan, None, media::Records { schema_version: Some("2.53.2"), ..Default::default() })
            .unwrap();
    assert_eq!(recorded(&created).as_deref(), Some("2.53.2"));
    assert_ne!(
        created.metadata.annotations.as_ref().unwrap()[ANNOTATION_APPLIED_HASH],
        first.metadata.annotations.as_ref().unwrap()[ANNOTATION_APPLIED_HASH],
        "a new record is a write"
    );
    let upgraded = media::media_claim(
        &wan,
        Some(&created),
        media::Records { schema_version: Some("2.55.1"), ..Default::default() },
    )
    .unwrap();
    assert_eq!(recorded(&upgraded).as_deref(), Some("2.55.1"));
    // A re-created object that knows nothing yet, or an older version: the record stands.
    assert_eq!(
        recorded(&media::media_claim(&wan, Some(&upgraded), media::Records::default()).unwrap()).as_deref(),
        Some("2.55.1")
    );
    assert_eq!(
        recorded(
            &media::media_claim(
                &wan,
                Some(&upgraded),
                media::Records { schema_version: Some("2.53.2"), ..Default::default() }
            )
            .unwrap()
        )
        .as_deref(),
        Some("2.55.1")
    );
    // The same claim name for other databases: their record replaces the old one.
    wan.spec.database.host = "other-db".into();
    let moved = media::media_claim(
        &wan,
        Some(&upgraded),
        media::Records { schema_version: Some("2.53.2"), ..Default::default() },
    )
    .unwrap();
    let other = crate::api::database_identity(&wan.spec);
    assert_eq!(media::schema_version_of(&moved, &other).as_deref(), Some("2.53.2"));
    assert_eq!(recorded(&moved), None);
}

#[test]
fn the_media_claim_records_an_upgrades_schema_job_until_the_schema_reaches_it() {
    let mut wan = sample();
    let databases = crate::api::database_identity(&wan.spec);
    let begun = |c: &PersistentVolumeClaim| media::schema_upgrade_of(c, &databases);
    let record = |version: &str, began: &str| {
        Some(media::SchemaUpgradeRecord { version: version.into(), began: Some(began.into()) })
    };
    let claim = |live: Option<&PersistentVolumeClaim>, schema: &str, upgrade: media::SchemaUpgrade| {
        let records =
            media::Records { schema_version: Some(schema), schema_upgrade: Some(&upgrade), ..Default::default() };
        media::media_claim(&wan, live, records).unwrap()
    };
    let start = |to: &str, began: &str| media::SchemaUpgrade::Begun { to: to.into(), began: began.into() };
    let (first, second) = ("2024-05-01T00:05:00Z", "2024-06-01T00:05:00Z");
    let steady = claim(None, "2.53.2", media::SchemaUpgrade::Keep);
    assert_eq!(begun(&steady), None);
    // The Job of an upgrade is about to be made: recorded in the same write
    // as anything else the claim changes, before the Job.
    let upgrading = claim(Some(&steady), "2.53.2", start("2.55.1", first));
    assert_eq!(begun(&upgrading), record("2.55.1", first));
    assert_eq!(media::schema_version_of(&upgrading, &databases).as_deref(), Some("2.53.2"), "not yet the schema");
    // Status lost, or a reconcile that does not touch it: it stays.
    let untouched = media::media_claim(&wan, Some(&upgrading), media::Records::default()).unwrap();
    assert_eq!(begun(&untouched), record("2.55.1", first));
    assert_eq!(begun(&claim(Some(&upgrading), "2.53.2", media::SchemaUpgrade::Keep)), record("2.55.1", first));
    // Another upgrade (a re-created object's): the newer version, and the
    // upgrade that wrote the record first.
    assert_eq!(begun(&claim(Some(&upgrading), "2.53.2", start("2.54.1", second))), record("2.55.1", first));
    assert_eq!(begun(&claim(Some(&upgrading), "2.53.2", start("2.57.2", second))), record("2.57.2", first));
    // A first deployment's record: written when the claim is made, and gone
    // in the write of the schema version its Job made.
    let created = media::media_claim(
        &wan,
        None,
        media::Records { schema_upgrade: Some(&start("2.53.2", first)), ..Default::default() },
    )
    .unwrap();
    assert_eq!((begun(&created), media::schema_version_of(&created, &databases)), (record("2.53.2", first), None));
    let deployed = claim(Some(&created), "2.53.2", media::SchemaUpgrade::Keep);
    assert_eq!((begun(&deployed), media::schema_version_of(&deployed, &databases).as_deref()), (None, Some("2.53.2")));
    // A record left beside the schema version that reached it (written by
    // hand, or by an operator before this one) names no writer of a later one.
    let mut leftover = deployed.clone();
    leftover.annotations_mut().insert(ANNOTATION_SCHEMA_UPGRADE.into(), "2.53.2".into());
    leftover.annotations_mut().insert(ANNOTATION_SCHEMA_UPGRADE_BEGAN.into(), first.into());
    assert_eq!(begun(&claim(Some(&leftover), "2.53.2", start("2.55.1", second))), record("2.55.1", second));
    assert_eq!(begun(&claim(Some(&leftover), "2.53.2", media::SchemaUpgrade::Keep)), None);
    // The schema reaches it: the record goes in the write of the new schema version.
    let upgraded = claim(Some(&upgrading), "2.55.1", start("2.55.1", first));
    assert_eq!((begun(&upgraded), media::schema_version_of(&upgraded, &databases).as_deref()), (None, Some("2.55.1")));
    assert!(!upgraded.annotations().contains_key(ANNOTATION_SCHEMA_UPGRADE));
    assert!(!upgraded.annotations().contains_key(ANNOTATION_SCHEMA_UPGRADE_BEGAN));
    // Called off before its Job started: the upgrade that wrote it takes it
    // away; another one's call-off leaves it.
    let kept = claim(Some(&upgrading), "2.53.2", media::SchemaUpgrade::CalledOff { began: second.into() });
    assert_eq!(begun(&kept), record("2.55.1", first));
    let called_off = claim(Some(&upgrading), "2.53.2", media::SchemaUpgrade::CalledOff { began: first.into() });
    assert_eq!(begun(&called_off), None);
    assert!(!called_off.annotations().contains_key(ANNOTATION_SCHEMA_UPGRADE_BEGAN));
    assert_ne!(
        called_off.annotations()[ANNOTATION_APPLIED_HASH],
        upgrading.annotations()[ANNOTATION_APPLIED_HASH],
        "removing the record is a write"
    );
    // Other databases: it says nothing about them, and goes when they are recorded.
    wan.spec.database.host = "other-db".into();
    let other = crate::api::database_identity(&wan.spec);
    assert_eq!(media::schema_upgrade_of(&upgrading, &other), None);
    let records = media::Records { schema_version: Some("2.53.2"), ..Default::default() };
    let moved = media::media_claim(&wan, Some(&upgrading), records).unwrap();
    assert_eq!(media::schema_version_of(&moved, &other).as_deref(), Some("2.53.2"));
    assert!(!moved.annotations().contains_key(ANNOTATION_SCHEMA_UPGRADE), "{:?}", moved.annotations());
}

#[test]
fn the_media_claim_records_the_last_shard_change_carried_out() {
    use crate::api::{ShardRequestOutcome, ShardRequestStatus};
    let mut wan = sample();
    let databases = crate::api::database_identity(&wan.spec);
    let request = |outcome, at: i64, annotation: Option<&str>| ShardRequestStatus {
        shards: 2,
        generation: 3,
        at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_second(at).unwrap()),
        outcome,
        message: "the client's words".into(),
        request_digest: Some("r1".into()),
        retry_annotation: annotation.map(str::to_string),
    };
    let recorded = |c: &PersistentVolumeClaim| media::shard_change_of(c, &databases);
    let refused = media::media_claim(
        &wan,
        None,
        media::Records {
            schema_version: Some("2.53.2"),
            shard_change: Some(&request(ShardRequestOutcome::Refused, 10, Some(""))),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(recorded(&refused), None, "a refused change changed nothing");
    let accepted = request(ShardRequestOutcome::Accepted, 20, Some(""));
    let claim = media::media_claim(
        &wan,
        Some(&refused),
        media::Records { schema_version: Some("2.53.2"), shard_change: Some(&accepted), ..Default::default() },
    )
    .unwrap();
    assert_eq!(recorded(&claim), Some(ShardRequestStatus { message: String::new(), ..accepted.clone() }));
    // Status lost: the record stands; an older request does not replace it, a later one does.
    assert_eq!(
        recorded(&media::media_claim(&wan, Some(&claim), media::Records::default()).unwrap()).map(|r| r.at),
        Some(accepted.at.clone())
    );
    let older = request(ShardRequestOutcome::Unanswered, 15, Some("again"));
    assert_eq!(
        recorded(
            &media::media_claim(
                &wan,
                Some(&claim),
                media::Records { shard_change: Some(&older), ..Default::default() }
            )
            .unwrap()
        )
        .map(|r| r.at),
        Some(accepted.at.clone())
    );
    let later = request(ShardRequestOutcome::Unanswered, 30, Some("again"));
    let replaced =
        media::media_claim(&wan, Some(&claim), media::Records { shard_change: Some(&later), ..Default::default() })
            .unwrap();
    assert_eq!(recorded(&replaced).and_then(|r| r.retry_annotation).as_deref(), Some("again"));
    assert_eq!(media::schema_version_of(&replaced, &databases).as_deref(), Some("2.53.2"), "the schema record stays");
    // A record from an operator that did not keep the annotation: status alone has it.
    let unrecorded = media::media_claim(
        &wan,
        None,
        media::Records { shard_change: Some(&request(ShardRequestOutcome::Accepted, 40, None)), ..Default::default() },
    )
    .unwrap();
    assert_eq!(recorded(&unrecorded), None);
    // Other databases: the record says nothing about them.
    wan.spec.database.host = "other-db".into();
    let other = crate::api::database_identity(&wan.spec);
    assert_eq!(media::shard_change_of(&replaced, &other), None);
}

#[test]
fn quantities_compare_by_bytes() {
    assert_eq!(media::quantity_bytes(&Quantity("1Gi".into())), 1 << 30);
    assert!(media::quantity_bytes(&Quantity("100G".into())) > media::quantity_bytes(&Quantity("50Gi".into())));
    assert_eq!(media::quantity_bytes(&Quantity("1.5Ki".into())), 1536);
    assert_eq!(media::quantity_bytes(&Quantity("weird".into())), 0);
}

#[test]
fn every_child_is_owned_labelled_and_namespaced() {
    let mut wan = sample();
    wan.spec.media.reclaim_policy = ReclaimPolicy::Delete;
    let c = build(&wan, &inputs());
    let metas = [
        &c.config.metadata,
        &c.media.as_ref().unwrap().metadata,
        &c.master_service.metadata,
        &c.coreapp_service.metadata,
        &c.webapp_service.metadata,
        &c.masters.metadata,
        &c.coreapps.metadata,
        &c.webapps.metadata,
    ];
    for meta in metas.into_iter().chain(c.disruption_budgets.iter().map(|b| &b.metadata)) {
        let name = meta.name.clone().unwrap();
        assert_eq!(meta.namespace.as_deref(), Some("team"), "{name}");
        let owner = &meta.owner_references.as_ref().unwrap_or_else(|| panic!("{name} has an owner"))[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("WhatsAppNumber", "acme"), "{name}");
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_INSTANCE], "acme", "{name}");
        assert_eq!(labels[LABEL_MANAGED_BY], "whatsapp-operator", "{name}");
        assert_eq!(labels[LABEL_NAME], "whatsapp-business-api", "{name}");
        assert_eq!(labels[LABEL_NUMBER], "15550001111", "{name}");
        assert!(meta.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_APPLIED_HASH)), "{name}");
    }
}

#[test]
fn user_pod_labels_cannot_break_selectors() {
    let mut wan = sample();
    wan.spec.coreapp.pod_labels =
        BTreeMap::from([(LABEL_COMPONENT.to_string(), "hijack".to_string()), ("team".to_string(), "a".to_string())]);
    let sts = build(&wan, &inputs()).coreapps;
    let spec = sts.spec.unwrap();
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels[LABEL_COMPONENT], "coreapp");
    assert_eq!(labels["team"], "a");
    for (k, v) in spec.selector.match_labels.unwrap() {
        assert_eq!(labels.get(&k), Some(&v), "selector label {k} on the template");
    }
}

#[test]
fn webapps_keep_apart_within_their_replica_set_so_a_rollout_needs_no_spare_node() {
    let mut wan = sample();
    let pod = |wan: &WhatsAppNumber| build(wan, &inputs()).webapps.spec.unwrap().template.spec.unwrap();
    let term = |wan: &WhatsAppNumber| {
        let anti = pod(wan).affinity.unwrap().pod_anti_affinity.unwrap();
        anti.required_during_scheduling_ignored_during_execution.unwrap().remove(0)
    };
    assert_eq!(term(&wan).match_label_keys, Some(vec!["pod-template-hash".to_string()]));
    assert_eq!(term(&wan).topology_key, "kubernetes.io/hostname");
    wan.spec.webapp.replicas = 1;
    let single = pod(&wan);
    wan.spec.webapp.replicas = 3;
    assert_eq!(single, pod(&wan), "scaling the webapps changes no pod template");
    let strategy = webapp::rollout(1).rolling_update.unwrap();
    assert_eq!(strategy.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)));
    assert_eq!(strategy.max_surge, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));

    // Masters and coreapps are StatefulSets: no surge pod, no ReplicaSet.
    let sts = build(&wan, &inputs()).coreapps.spec.unwrap().template.spec.unwrap();
    let anti = sts.affinity.unwrap().pod_anti_affinity.unwrap();
    assert_eq!(anti.required_during_scheduling_ignored_during_execution.unwrap()[0].match_label_keys, None);
}

#[test]
fn default_anti_affinity_is_required_per_tier_and_override_replaces_it() {
    let mut wan = sample();
    let sts = build(&wan, &inputs()).masters;
    let affinity = sts.spec.unwrap().template.spec.unwrap().affinity.unwrap();
    let terms = affinity.pod_anti_affinity.unwrap().required_during_scheduling_ignored_during_execution.unwrap();
    assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(terms[0].label_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[LABEL_COMPONENT], "master");

    wan.spec.master.affinity = Some(Box::default());
    let sts = build(&wan, &inputs()).masters;
    assert_eq!(sts.spec.unwrap().template.spec.unwrap().affinity, Some(Default::default()));
}

#[test]
fn default_resources_follow_production_guidance_and_overrides_apply() {
    let mut wan = sample();
    let c = container(&build(&wan, &inputs()).coreapps).clone();
    let requests = c.resources.unwrap().requests.unwrap();
    assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("2", "4Gi"));

    wan.spec.coreapp.resources = Some(Box::new(k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), Quantity("500m".into()))])),
        ..Default::default()
    }));
    wan.spec.coreapp.node_selector = BTreeMap::from([("disk".into(), "ssd".into())]);
    let sts = build(&wan, &inputs()).coreapps;
    let pod = sts.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"],
        Quantity("500m".into())
    );
    assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
}

#[test]
fn headless_services_publish_every_coreapp_port() {
    let c = build(&sample(), &inputs());
    for svc in [&c.master_service, &c.coreapp_service] {
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = spec.ports.as_ref().unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, vec![6250, 6251, 6252, 6253]);
    }
    assert_eq!(c.masters.spec.as_ref().unwrap().service_name.as_deref(), Some("acme-master"));
    assert_eq!(c.coreapps.spec.as_ref().unwrap().service_name.as_deref(), Some("acme-coreapp"));
}

#[test]
fn webapp_gets_keys_https_service_and_a_rollout_that_always_finishes() {
    let mut wan = sample();
    wan.spec.webapp.service.type_ = ServiceType::LoadBalancer;
    wan.spec.webapp.service.annotations = BTreeMap::from([("lb".into(), "internal".into())]);
    wan.spec.webapp.tls = Some(WebappTls { secret_name: "acme-tls".into() });
    let c = build(&wan, &BuildInputs { webapp_certificate_digest: Some("t1".into()), ..inputs() });

    let svc = c.webapp_service;
    assert_eq!(svc.metadata.annotations.as_ref().unwrap()["lb"], "internal");
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.ports.unwrap()[0].port, 443);

    let deploy = c.webapps.spec.unwrap();
    let rolling = deploy.strategy.unwrap().rolling_update.unwrap();
    // Two webapps: one may go while one comes, so a rollout finishes even
    // when webapps fill every node their anti-affinity allows.
    assert_eq!(rolling.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
    let single = webapp::rollout(1).rolling_update.unwrap();
    assert_eq!(single.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)));
    let pod = deploy.template.spec.unwrap();
    let web = &pod.containers[0];
    assert_eq!(web.image.as_deref(), Some("docker.whatsapp.biz/web:v2.53.2"));
    let from_keys = |name: &str| {
        let r = web.env.as_ref().unwrap().iter().find(|e| e.name == name).unwrap();
        let s = r.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        (s.name.clone(), s.key.clone())
    };
    assert_eq!(from_keys("WA_WEB_JWT_CRYPTO_KEY"), ("acme-keys".into(), "WA_WEB_JWT_CRYPTO_KEY".into()));
    assert_eq!(from_keys("WA_API_KEY"), ("acme-keys".into(), "WA_API_KEY".into()));
    let server = web.env.as_ref().unwrap().iter().find(|e| e.name == "WA_WEB_SERVERNAME").unwrap();
    assert_eq!(server.value.as_deref(), Some("acme-webapp.team.svc"));
    // The certificate goes through the API; no file or variable names it.
    assert!(!pod.volumes.unwrap().iter().any(|v| v.secret.is_some()));
    assert!(!web.env.as_ref().unwrap().iter().any(|e| e.name.starts_with("WA_WEB_TLS")));
}

#[test]
fn disruption_budgets_only_for_tiers_with_several_pods() {
    let mut wan = sample();
    let names: Vec<String> =
        build(&wan, &inputs()).disruption_budgets.iter().map(|b| b.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, vec!["acme-master", "acme-coreapp", "acme-webapp"]);

    wan.spec.multiconnect = MulticonnectSpec { shards: 1, standby_coreapps: 0, masters: 1, confirm_shard_change: None };
    wan.spec.webapp.replicas = 1;
    assert!(build(&wan, &inputs()).disruption_budgets.is_empty());

    wan.spec.multiconnect = MulticonnectSpec { shards: 4, standby_coreapps: 2, masters: 2, confirm_shard_change: None };
    let coreapp_budget = build(&wan, &inputs())
        .disruption_budgets
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some("acme-coreapp"))
        .unwrap();
    assert_eq!(
        coreapp_budget.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2)),
        "as many as there are standbys"
    );
}

#[test]
fn config_hash_rolls_pods_only_when_their_inputs_change() {
    let wan = sample();
    let hash = |inputs: &BuildInputs, tier: &str| {
        let c = build(&wan, inputs);
        let meta = match tier {
            "coreapp" => c.coreapps.spec.unwrap().template.metadata.unwrap(),
            _ => c.webapps.spec.unwrap().template.metadata.unwrap(),
        };
        meta.annotations.unwrap()[ANNOTATION_CONFIG_HASH].clone()
    };
    let base = inputs();
    assert_eq!(hash(&base, "coreapp"), hash(&base, "coreapp"), "stable");
    let rotated = BuildInputs { credentials_digest: "creds-v2".into(), ..inputs() };
    assert_ne!(hash(&base, "coreapp"), hash(&rotated, "coreapp"), "password rotation restarts pods");
    let new_cert = BuildInputs { webapp_certificate_digest: Some("cert-2".into()), ..inputs() };
    assert_eq!(hash(&base, "coreapp"), hash(&new_cert, "coreapp"), "a webapp certificate does not restart coreapps");
    assert_ne!(hash(&base, "webapp"), hash(&new_cert, "webapp"));
}

#[test]
fn applied_hash_changes_with_the_spec() {
    let mut wan = sample();
    let before = build(&wan, &inputs()).webapps.metadata.annotations.unwrap()[ANNOTATION_APPLIED_HASH].clone();
    let again = build(&wan, &inputs()).webapps.metadata.annotations.unwrap()[ANNOTATION_APPLIED_HASH].clone();
    assert_eq!(before, again);
    wan.spec.webapp.replicas = 3;
    let after = build(&wan, &inputs()).webapps.metadata.annotations.unwrap()[ANNOTATION_APPLIED_HASH].clone();
    assert_ne!(before, after);
}

#[test]
fn pull_settings_reach_every_pod() {
    let mut wan = sample();
    wan.spec.images.pull_policy = Some(PullPolicy::Always);
    wan.spec.images.pull_secrets =
        vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "meta-registry".into() }];
    wan.spec.images.coreapp = "registry.local/wa-emulator-coreapp".into();
    let c = build(&wan, &inputs());
    for pod in [
        c.masters.spec.unwrap().template.spec.unwrap(),
        c.coreapps.spec.unwrap().template.spec.unwrap(),
        c.webapps.spec.unwrap().template.spec.unwrap(),
    ] {
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "meta-registry");
        assert_eq!(pod.containers[0].image_pull_policy.as_deref(), Some("Always"));
    }
}

#[test]
fn schema_job_runs_the_new_image_with_the_upgrade_flag() {
    let mut wan = sample();
    wan.spec.upgrade.schema_upgrade_retries = 2;
    wan.spec.upgrade.schema_upgrade_deadline_seconds = 1800;
    let job = schema_job::schema_job(&wan, "2.55.1");
    assert_eq!(job.metadata.name.as_deref(), Some("acme-schema-2-55-1"));
    assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].name, "acme");
    let spec = job.spec.unwrap();
    assert_eq!((spec.backoff_limit, spec.active_deadline_seconds), (Some(2), Some(1800)));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("docker.whatsapp.biz/coreapp:v2.55.1"));
    assert_eq!(env(c, "WA_DB_UPGRADE").and_then(|e| e.value.as_deref()), Some("1"));
    assert!(env(c, "WA_DB_PASSWORD").is_some() && env(c, "WA_MASTER_NODE").is_none());
    // A failed attempt's log tail is what status shows of it.
    assert_eq!(c.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
}

#[test]
fn a_schema_job_name_gives_its_version_back() {
    let wan = sample();
    assert_eq!(schema_job::version_of(&wan, &schema_job::name(&wan, "2.55.1")).as_deref(), Some("2.55.1"));
    assert_eq!(schema_job::version_of(&wan, "acme-schema-2-53").as_deref(), Some("2.53"));
    // Another object's Job (`acme-eu`'s), and names that hold no version.
    for other in ["acme-eu-schema-2-55-1", "acme-schema-", "acme-schema-2-x-1", "acme-schema-2", "acme-config"] {
        assert_eq!(schema_job::version_of(&wan, other), None, "{other}");
    }
}

#[test]
fn upgrade_shape_sets_versions_and_stops_nodes() {
    use crate::upgrade::procedure::Shape;
    let wan = sample();
    let stopped = Shape {
        node_version: "2.53.2".into(),
        masters_running: false,
        coreapps_running: false,
        webapp_version: "2.53.2".into(),
        webapps_running: true,
        schema_job: true,
    };
    let c = build(&wan, &BuildInputs { shape: Some(stopped), coreapp_replicas: Some(3), ..inputs() });
    assert_eq!(c.masters.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(c.coreapps.spec.as_ref().unwrap().replicas, Some(0), "stopped wins over a shard change");
    assert_eq!(c.webapps.spec.as_ref().unwrap().replicas, Some(2), "webapps keep serving");

    let coreapps_at_new = Shape {
        node_version: "2.55.1".into(),
        masters_running: true,
        coreapps_running: true,
        webapp_version: "2.53.2".into(),
        webapps_running: true,
        schema_job: false,
    };
    let c = build(&wan, &BuildInputs { shape: Some(coreapps_at_new), ..inputs() });
    assert_eq!(container(&c.coreapps).image.as_deref(), Some("docker.whatsapp.biz/coreapp:v2.55.1"));
    let labels = c.coreapps.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels[LABEL_VERSION], "2.55.1");
    let web = c.webapps.spec.unwrap().template.spec.unwrap();
    assert_eq!(web.containers[0].image.as_deref(), Some("docker.whatsapp.biz/web:v2.53.2"));
}

#[test]
fn pod_settings_reach_every_tier_with_hardened_defaults() {
    let mut wan = sample();
    let c = build(&wan, &inputs());
    let pod = c.masters.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let seccomp = pod.security_context.unwrap().seccomp_profile.unwrap();
    assert_eq!(seccomp.type_, "RuntimeDefault");
    assert_eq!(pod.service_account_name, None);

    let overrides: PodOverrides = serde_json::from_value(serde_json::json!({
        "podSecurityContext": {"runAsUser": 1000, "fsGroup": 1000},
        "securityContext": {"readOnlyRootFilesystem": true},
        "priorityClassName": "whatsapp-critical",
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}],
        "serviceAccountName": "wa-nodes",
        "env": [{"name": "TZ", "value": "UTC"}, {"name": "WA_DB_HOSTNAME", "value": "elsewhere"}, {"name": "COREAPP_HOSTNAME", "value": "x"}]
    }))
    .unwrap();
    wan.spec.coreapp = Sparse::new(overrides.clone());
    wan.spec.webapp.pod = Sparse::new(overrides);
    let c = build(&wan, &inputs());
    let job = schema_job::schema_job(&wan, "2.55.1");
    let pods = [
        c.coreapps.spec.unwrap().template.spec.unwrap(),
        c.webapps.spec.unwrap().template.spec.unwrap(),
        job.spec.unwrap().template.spec.unwrap(),
    ];
    for pod in pods {
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_user, Some(1000));
        assert_eq!(pod.priority_class_name.as_deref(), Some("whatsapp-critical"));
        assert_eq!(pod.topology_spread_constraints.as_ref().map(Vec::len), Some(1));
        assert_eq!(pod.service_account_name.as_deref(), Some("wa-nodes"));
        let container = &pod.containers[0];
        assert_eq!(container.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
        let env = container.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "TZ"), "extra variables are added");
        assert!(!env.iter().any(|e| e.name == "WA_DB_HOSTNAME"), "the database comes from the ConfigMap only");
        assert_eq!(
            env.iter().filter(|e| e.name == "COREAPP_HOSTNAME").count(),
            usize::from(container.name != "webapp" && container.name != "schema-upgrade"),
            "{}",
            container.name
        );
    }
    // Masters keep their defaults: settings are per tier.
    assert_eq!(c.masters.spec.unwrap().template.spec.unwrap().priority_class_name, None);
}

#[test]
fn the_media_claim_records_where_the_registration_stood() {
    use crate::api::{RegistrationPhase, RegistrationStatus};
    let mut wan = sample();
    let databases = crate::api::database_identity(&wan.spec);
    let status = |phase, digest: &str| RegistrationStatus {
        phase,
        message: "the client's words".into(),
        request_digest: Some(digest.into()),
        code_requested_at: None,
        code_digest: Some("c1".into()),
        request_annotation: None,
        confirmed_at: None,
    };
    let recorded = |c: &PersistentVolumeClaim| media::registration_of(c, &databases);
    let registration = |r| media::Records { registration: Some(r), ..Default::default() };
    let first = media::media_claim(&wan, None, media::Records::default()).unwrap();
    assert_eq!(recorded(&first), None, "nothing to record yet");

    let requested = status(RegistrationPhase::CodeRequested, "i1");
    let claim = media::media_claim(&wan, Some(&first), registration(&requested)).unwrap();
    assert_eq!(recorded(&claim), Some(RegistrationStatus { message: String::new(), ..requested.clone() }));
    let hash = |c: &PersistentVolumeClaim| c.metadata.annotations.as_ref().unwrap()[ANNOTATION_APPLIED_HASH].clone();
    assert_ne!(hash(&claim), hash(&first), "a new record is a write");
    let reworded = RegistrationStatus { message: "other words".into(), ..requested.clone() };
    assert_eq!(
        hash(&media::media_claim(&wan, Some(&claim), registration(&reworded)).unwrap()),
        hash(&claim),
        "a new message alone is no write"
    );

    // Status lost: the record stands; what status says next replaces it.
    let kept = media::media_claim(&wan, Some(&claim), media::Records::default()).unwrap();
    assert_eq!(recorded(&kept).map(|r| r.phase), Some(RegistrationPhase::CodeRequested));
    let registered = status(RegistrationPhase::Registered, "i1");
    let replaced = media::media_claim(&wan, Some(&kept), registration(&registered)).unwrap();
    assert_eq!(recorded(&replaced).map(|r| r.phase), Some(RegistrationPhase::Registered));

    // Other databases: the record says nothing about them.
    wan.spec.database.host = "other-db".into();
    let other = crate::api::database_identity(&wan.spec);
    assert_eq!(media::registration_of(&replaced, &other), None);
}
