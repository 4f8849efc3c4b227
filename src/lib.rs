//! whatsapp-operator: runs the WhatsApp Business API on-premises client in
//! high-availability multiconnect mode from one `WhatsAppNumber` resource.
//!
//! - [`api`]: the custom resource types (the CRD is generated from them).
//! - [`resources`]: pure builders from a WhatsAppNumber to Kubernetes objects.
//! - [`controller`]: the reconcile pipeline (fetch, validate, build, apply, status).
//! - [`probes`]: the health probe scheduler, off the reconcile path.
//! - [`telemetry`]: logs, metrics and the probe endpoints.
//! - [`leader`]: leader election between operator replicas.
//! - [`heap`]: gives the heap's freed memory back to the system.
//! - [`render`]: the objects of a WhatsAppNumber as YAML, without a cluster.

pub mod api;
pub mod backups;
pub mod controller;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod health;
pub mod heap;
pub mod interned;
pub mod leader;
pub mod lifecycle;
pub mod probes;
pub mod render;
pub mod resources;
pub mod sharding;
pub mod telemetry;
pub mod text;
pub mod upgrade;
pub mod webapp;
