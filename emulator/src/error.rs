//! Process-level errors (API errors live in `api`).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Fatal(String),
}

impl Error {
    pub fn db(context: &'static str) -> impl Fn(sqlx::Error) -> Error {
        move |source| Error::Db { context, source }
    }
}
