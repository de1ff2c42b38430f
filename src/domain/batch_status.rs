//! The batch status machine, in one place: which statuses exist, which are
//! terminal, and which timestamp each one sets when entered.
//!
//! ```text
//! validating ──ok──> in_progress ──> finalizing ──> completed
//! validating ──invalid──> failed
//! validating|in_progress|finalizing ──cancel──> cancelling ──> cancelled
//! ```

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    /// Statuses a worker still has to move forward.
    pub const ACTIVE: [BatchStatus; 4] = [
        BatchStatus::Validating,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Cancelling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BatchStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled
        )
    }

    /// The column of the timestamp set on entering this status.
    pub fn timestamp_column(self) -> Option<&'static str> {
        match self {
            BatchStatus::Validating => None, // created_at
            BatchStatus::Failed => Some("failed_at"),
            BatchStatus::InProgress => Some("in_progress_at"),
            BatchStatus::Finalizing => Some("finalizing_at"),
            BatchStatus::Completed => Some("completed_at"),
            BatchStatus::Expired => Some("expired_at"),
            BatchStatus::Cancelling => Some("cancelling_at"),
            BatchStatus::Cancelled => Some("cancelled_at"),
        }
    }

    /// The statuses a batch may be in when it moves to `self`.
    pub fn allowed_from(self) -> &'static [BatchStatus] {
        use BatchStatus::*;
        match self {
            Validating => &[],
            // From in_progress when the batch's model server cannot be started.
            Failed => &[Validating, InProgress],
            InProgress => &[Validating],
            Finalizing => &[InProgress],
            Completed => &[Finalizing],
            Expired => &[InProgress, Finalizing],
            Cancelling => &[Validating, InProgress, Finalizing],
            Cancelled => &[Cancelling],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_terminal_statuses_have_no_exit() {
        for status in BatchStatus::ALL {
            assert_eq!(BatchStatus::parse(status.as_str()), Some(status));
            if status.is_terminal() {
                for next in BatchStatus::ALL {
                    assert!(!next.allowed_from().contains(&status), "{status:?} -> {next:?}");
                }
            }
        }
    }
}
