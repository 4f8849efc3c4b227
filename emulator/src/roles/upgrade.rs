//! `WA_DB_UPGRADE=1`: migrate the schema to this build's version and exit 0.

use crate::Error;
use crate::config::Config;

pub async fn run(cfg: Config) -> Result<(), Error> {
    crate::schema::upgrade(&cfg).await
}
