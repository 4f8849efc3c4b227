//! The coreapp: holds a shard's session with WhatsApp's servers when the
//! primary master assigns it one (or always, outside multiconnect), and is a
//! standby otherwise.

use crate::Error;
use crate::config::Config;
use crate::node::{self, Kind};

pub async fn run(cfg: Config) -> Result<(), Error> {
    node::run(cfg, Kind::Coreapp).await
}
