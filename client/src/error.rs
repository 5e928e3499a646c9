//! One error type for the crate: a kind to match on, a message, and the cause.

/// What went wrong, to decide what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The collector refused the batch as a whole (a 4xx other than 408/409/429): sending
    /// it again will not help.
    Refused,
    /// The collector could not be reached or stayed busy through every try.
    Unavailable,
    /// The queue was full and the overflow policy is to drop.
    QueueFull,
    /// The client is shut down.
    Closed,
    /// A setting is wrong, or the spool cannot be used.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    pub kind: ErrorKind,
    /// The HTTP status of a refusal.
    pub status: Option<u16>,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ClientError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ClientError {
            kind,
            status: None,
            message: message.into(),
            source: None,
        }
    }
    pub fn refused(status: u16, reason: impl Into<String>) -> Self {
        let mut e = Self::new(
            ErrorKind::Refused,
            format!(
                "collector refused the batch (HTTP {status}): {}",
                reason.into()
            ),
        );
        e.status = Some(status);
        e
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn queue_full() -> Self {
        Self::new(ErrorKind::QueueFull, "queue full: record dropped")
    }
    pub fn closed() -> Self {
        Self::new(ErrorKind::Closed, "client is shut down")
    }
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
}
