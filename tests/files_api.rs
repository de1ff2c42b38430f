//! The Files API over HTTP: upload, list and page, download, delete, limits.

mod common;

use common::{Harness, chat_line};
use serde_json::Value;

#[tokio::test]
async fn upload_retrieve_download_and_delete() {
    let h = Harness::start().await;
    let content = "{\"a\":1}\n{\"b\":2}\n";
    let response = h
        .upload(content.as_bytes().to_vec(), "../secret/in.jsonl", "batch")
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let file: Value = response.json().await.unwrap();
    let id = file["id"].as_str().unwrap();
    assert!(id.starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], content.len());
    assert_eq!(file["filename"], "in.jsonl");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["status"], "processed");
    assert!(file["status_details"].is_null());
    assert_eq!(
        file["expires_at"].as_i64().unwrap(),
        file["created_at"].as_i64().unwrap() + 30 * 86400
    );

    let (status, fetched) = h.get(&format!("/files/{id}")).await;
    assert_eq!((status, &fetched), (200, &file));
    let downloaded = h
        .http
        .get(h.url(&format!("/files/{id}/content")))
        .header("accept", "application/binary")
        .send()
        .await
        .unwrap();
    assert_eq!(downloaded.status(), 200);
    assert_eq!(downloaded.text().await.unwrap(), content);

    let deleted: Value = h
        .http
        .delete(h.url(&format!("/files/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        deleted,
        serde_json::json!({"id": id, "object": "file", "deleted": true})
    );
    assert_eq!(h.get(&format!("/files/{id}")).await.0, 404);
    assert_eq!(h.get(&format!("/files/{id}/content")).await.0, 404);
}

#[tokio::test]
async fn expires_after_and_purposes() {
    let h = Harness::start().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("a.txt"),
        )
        .text("purpose", "user_data")
        .text("expires_after[anchor]", "created_at")
        .text("expires_after[seconds]", "3600");
    let file: Value = h
        .http
        .post(h.url("/files"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        file["expires_at"].as_i64().unwrap(),
        file["created_at"].as_i64().unwrap() + 3600
    );

    let response = h.upload(b"x".to_vec(), "a.txt", "assistants").await;
    let file: Value = response.json().await.unwrap();
    assert!(file["expires_at"].is_null(), "only batch files expire by default");

    let response = h.upload(b"x".to_vec(), "a.txt", "sideways").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "purpose");

    let form = reqwest::multipart::Form::new().text("purpose", "batch");
    let response = h.http.post(h.url("/files")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "file");

    let response = h.http.post(h.url("/files")).body("plain").send().await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn oversized_uploads_get_413_and_leave_nothing_behind() {
    let h = Harness::start_with(|c| c.limits.max_upload_bytes = 1000).await;
    let response = h.upload(vec![b'x'; 5000], "big.jsonl", "batch").await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("1000"));
    let (_, list) = h.get("/files").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let uploads = h.dir.path().join("data/blobs/uploads");
    let leftover = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftover, 0, "staged bytes of a refused upload must be removed");
    // The server keeps serving.
    assert_eq!(h.upload(b"ok".to_vec(), "small.jsonl", "batch").await.status(), 200);
}

#[tokio::test]
async fn file_lists_page_in_both_orders_and_filter_by_purpose() {
    let h = Harness::start().await;
    let mut ids = vec![];
    for i in 0..5 {
        let purpose = if i % 2 == 0 { "batch" } else { "user_data" };
        let r: Value = h
            .upload(format!("{i}").into_bytes(), "f.jsonl", purpose)
            .await
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_owned());
    }
    let collect = |order: &'static str| {
        let h = &h;
        async move {
            let mut seen = vec![];
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/files?limit=2&order={order}");
                if let Some(a) = &after {
                    path.push_str(&format!("&after={a}"));
                }
                let (status, page) = h.get(&path).await;
                assert_eq!(status, 200);
                assert_eq!(page["object"], "list");
                let data = page["data"].as_array().unwrap();
                seen.extend(data.iter().map(|f| f["id"].as_str().unwrap().to_owned()));
                if !page["has_more"].as_bool().unwrap() {
                    return seen;
                }
                assert_eq!(page["last_id"], data.last().unwrap()["id"]);
                after = Some(data.last().unwrap()["id"].as_str().unwrap().to_owned());
            }
        }
    };
    assert_eq!(collect("asc").await, ids);
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(collect("desc").await, reversed);
    let (_, batch_only) = h.get("/files?purpose=batch").await;
    assert_eq!(batch_only["data"].as_array().unwrap().len(), 3);
    let (_, empty) = h.get("/files?purpose=vision").await;
    assert_eq!(empty["data"].as_array().unwrap().len(), 0);
    assert!(empty["first_id"].is_null() && empty["last_id"].is_null());
    assert_eq!(empty["has_more"], false);
}

#[tokio::test]
async fn batch_lists_are_newest_first_across_pages() {
    let h = Harness::start().await;
    let file_id = h.upload_lines(&[chat_line("a", "fake-model", "hi")]).await;
    let mut created = vec![];
    for _ in 0..5 {
        created.push(
            h.create_batch(&file_id, "/v1/chat/completions").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    created.reverse();
    let mut seen = vec![];
    let mut path = "/batches?limit=2".to_owned();
    loop {
        let (_, page) = h.get(&path).await;
        let data = page["data"].as_array().unwrap();
        seen.extend(data.iter().map(|b| b["id"].as_str().unwrap().to_owned()));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        path = format!(
            "/batches?limit=2&after={}",
            data.last().unwrap()["id"].as_str().unwrap()
        );
    }
    assert_eq!(seen, created);
}
