//! The Uploads API's records: an upload, its parts, and where it stands.
//! The parts' bytes are in blobs; these rows say which bytes belong where.

#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: String,
    pub project_id: String,
    pub filename: String,
    pub purpose: String,
    pub mime_type: String,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub status: UploadStatus,
    pub file_expires_after: Option<i64>,
    pub file_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UploadPart {
    pub id: String,
    pub upload_id: String,
    pub bytes: i64,
    pub created_at: i64,
    pub storage_key: String,
}

/// Where an upload stands. `completing` is batchd's own: the upload's parts
/// are being assembled, so neither a second complete nor a cancel may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStatus {
    Pending,
    Completing,
    Completed,
    Cancelled,
    Expired,
}

impl UploadStatus {
    pub const ALL: [UploadStatus; 5] = [
        UploadStatus::Pending,
        UploadStatus::Completing,
        UploadStatus::Completed,
        UploadStatus::Cancelled,
        UploadStatus::Expired,
    ];

    /// The name stored in the database and shown in the Upload object.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadStatus::Pending => "pending",
            UploadStatus::Completing => "completing",
            UploadStatus::Completed => "completed",
            UploadStatus::Cancelled => "cancelled",
            UploadStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<UploadStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::UploadStatus;

    #[test]
    fn names_round_trip() {
        for status in UploadStatus::ALL {
            assert_eq!(UploadStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(UploadStatus::parse("PENDING"), None);
    }
}
