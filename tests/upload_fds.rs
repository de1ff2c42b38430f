//! Completing an upload opens its parts one at a time. With every part opened
//! up front, an upload of many small parts (parts have no minimum size) ran
//! the whole process out of file descriptors (audit M9). Its own test binary:
//! it lowers the process's open-file limit.

mod common;

use common::Harness;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::{Value, json};

const PARTS: usize = 300;

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test]
async fn completing_an_upload_of_many_parts_needs_few_file_descriptors() {
    let h = Harness::start().await;
    let (status, upload) = h
        .post(
            "/uploads",
            json!({"bytes": PARTS, "filename": "many.txt", "mime_type": "txt", "purpose": "user_data"}),
        )
        .await;
    assert_eq!(status, 200, "{upload}");
    let id = upload["id"].as_str().unwrap();
    let mut part_ids = vec![];
    for _ in 0..PARTS {
        let form = reqwest::multipart::Form::new()
            .part("data", reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("part"));
        let part: Value = h
            .http
            .post(h.url(&format!("/uploads/{id}/parts")))
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        part_ids.push(part["id"].clone());
    }
    // Room for the server's ordinary work, far less than one per part.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, open_fds() + 64, hard).unwrap();
    let (status, done) = h
        .post(&format!("/uploads/{id}/complete"), json!({"part_ids": part_ids}))
        .await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert_eq!(status, 200, "{done}");
    assert_eq!(h.content(done["file"]["id"].as_str().unwrap()).await, "x".repeat(PARTS));
}
