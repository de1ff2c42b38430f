//! The error type of batchd's services. The HTTP layer turns each kind into
//! OpenAI's envelope through one table (`api::error`); nothing else decides a
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
    Unavailable { message: String },
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

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(e.into())
    }
}
