//! The error type of batchd's services. The HTTP layer turns each kind into
//! OpenAI's envelope through one table (`openai_error`); nothing else decides a
//! status code.

/// Why an operation asked of a service did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist for this project (other projects' objects included).
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<&'static str>,
    },
    /// The request itself is wrong; the client must change it.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// The request conflicts with the object's state (cancel of a finished batch).
    #[error("{message}")]
    Conflict { message: String },
    /// The body is over a configured size limit.
    #[error("{message}")]
    TooLarge { message: String },
    /// Storage is out of space; retrying later may work.
    #[error("{message}")]
    StorageFull { message: String },
    /// A per-project limit is reached for now (HTTP 429 `rate_limit_exceeded`);
    /// retrying once some of the project's work is done will work.
    #[error("{message}")]
    RateLimited { message: String },
    /// A bug or an infrastructure failure; details go to the log, not the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>, param: Option<&str>, code: Option<&'static str>) -> Self {
        Error::Invalid {
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Error::Internal(e.into())
    }
}

impl Error {
    pub fn storage_full() -> Self {
        Error::StorageFull {
            message: "The server is out of storage space; try again later.".into(),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_storage_full(&e) {
            return Error::storage_full();
        }
        Error::Internal(e.into())
    }
}

/// Whether `e`, or any error it wraps, says the disk (or quota) is full:
/// `ENOSPC`/`EDQUOT` from the OS, SQLite's `SQLITE_FULL`, or PostgreSQL's
/// SQLSTATE 53100 `disk_full` (the codes cannot be confused: SQLite's are
/// numbers below 256).
pub fn is_storage_full(e: &(dyn std::error::Error + 'static)) -> bool {
    const SQLITE_FULL: &str = "13";
    const PG_DISK_FULL: &str = "53100";
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull || io.kind() == std::io::ErrorKind::QuotaExceeded)
        {
            return true;
        }
        if let Some(sqlx::Error::Database(db)) = err.downcast_ref::<sqlx::Error>()
            && matches!(db.code().as_deref(), Some(SQLITE_FULL | PG_DISK_FULL))
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// User input echoed in an error message, cut to 64 characters: echoing it
/// helps the client, but a message must not grow with what was sent. Here,
/// beside the error type, because services and the HTTP edge both write
/// such messages.
pub fn truncate(s: &str) -> String {
    if s.chars().count() > 64 {
        format!("{}...", s.chars().take(64).collect::<String>())
    } else {
        s.to_owned()
    }
}
