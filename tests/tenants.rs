//! API keys and tenant isolation: another project's ids are 404 on every
//! route and never appear in lists; missing, wrong and revoked keys get 401
//! in OpenAI's envelope; the admin API needs an admin key; without keys,
//! batchd refuses to listen beyond loopback.

mod common;

use std::process::Command;

use batchd::app::Server;
use common::{Harness, chat_line, create_key, test_config};
use serde_json::{Value, json};

async fn call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = h.http.request(method, h.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn upload_as(h: &Harness, key: &str, text: &str) -> String {
    common::upload_at(&h.http, &h.base, Some(key), text.to_owned()).await
}

fn envelope_401(status: u16, body: &Value, code: Option<&str>) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], json!(code));
}

#[tokio::test]
async fn every_route_hides_other_projects_and_keys_are_enforced() {
    use reqwest::Method;
    let h = Harness::start().await;
    let p1 = create_key(&h, "p1", false)["secret"].as_str().unwrap().to_owned();
    let p2 = create_key(&h, "p2", false)["secret"].as_str().unwrap().to_owned();
    assert!(p1.starts_with("sk-batchd-") && p1.len() > 70);

    let text = format!(
        "{}\n{}\n",
        chat_line("a", "fake-model", "hi"),
        chat_line("b", "fake-model", "[status=400] no")
    );
    let file = upload_as(&h, &p1, &text).await;
    let (_, batch) = call(
        &h,
        Method::POST,
        "/batches",
        Some(&p1),
        Some(json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"})),
    )
    .await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let done = loop {
        let (_, b) = call(&h, Method::GET, &format!("/batches/{batch_id}"), Some(&p1), None).await;
        if b["status"] == "completed" {
            break b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let output = done["output_file_id"].as_str().unwrap();
    let error = done["error_file_id"].as_str().unwrap();

    // p2 sees none of it, on every route.
    for (method, path) in [
        (Method::GET, format!("/files/{file}")),
        (Method::GET, format!("/files/{file}/content")),
        (Method::DELETE, format!("/files/{file}")),
        (Method::GET, format!("/files/{output}")),
        (Method::GET, format!("/files/{output}/content")),
        (Method::GET, format!("/files/{error}/content")),
        (Method::GET, format!("/batches/{batch_id}")),
        (Method::POST, format!("/batches/{batch_id}/cancel")),
        (Method::GET, format!("/batches/{batch_id}/stats")),
    ] {
        let (status, body) = call(&h, method.clone(), &path, Some(&p2), None).await;
        assert_eq!(status, 404, "{method} {path} as p2: {body}");
        assert!(!body.to_string().contains("p1"), "{body}");
    }
    for path in ["/files", "/files?purpose=batch_output", "/batches"] {
        let (status, list) = call(&h, Method::GET, path, Some(&p2), None).await;
        assert_eq!(status, 200);
        assert_eq!(list["data"], json!([]), "{path} as p2 shows foreign objects: {list}");
    }
    // A batch on another project's file is created (as on OpenAI) but fails:
    // the file cannot be found.
    let (status, foreign) = call(
        &h,
        Method::POST,
        "/batches",
        Some(&p2),
        Some(json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"})),
    )
    .await;
    assert_eq!(status, 200);
    let foreign_id = foreign["id"].as_str().unwrap();
    let failed = loop {
        let (_, b) = call(&h, Method::GET, &format!("/batches/{foreign_id}"), Some(&p2), None).await;
        if b["status"] == "failed" {
            break b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(failed["errors"]["data"][0]["code"], "invalid_request");
    // p1 still has everything, and sees nothing of p2's.
    let (status, _) = call(&h, Method::GET, &format!("/files/{file}/content"), Some(&p1), None).await;
    assert_eq!(status, 200);
    let (_, list) = call(&h, Method::GET, "/batches", Some(&p1), None).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![batch_id.as_str()]);

    // Uploads are per project too.
    let (_, upload) = call(
        &h,
        Method::POST,
        "/uploads",
        Some(&p1),
        Some(json!({"bytes": 3, "filename": "u.jsonl", "mime_type": "txt", "purpose": "batch"})),
    )
    .await;
    let upload_id = upload["id"].as_str().unwrap();
    for path in [
        format!("/uploads/{upload_id}/cancel"),
        format!("/uploads/{upload_id}/complete"),
    ] {
        let (status, body) = call(&h, Method::POST, &path, Some(&p2), Some(json!({"part_ids": []}))).await;
        assert_eq!(status, 404, "{path} as p2: {body}");
    }
    let form = reqwest::multipart::Form::new().part(
        "data",
        reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("upload"),
    );
    let r = h
        .http
        .post(h.url(&format!("/uploads/{upload_id}/parts")))
        .bearer_auth(&p2)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "adding a part to another project's upload");
    let (status, _) = call(&h, Method::GET, &format!("/batches/{batch_id}/stats"), Some(&p1), None).await;
    assert_eq!(status, 200);

    // No key, a wrong key, a revoked key: 401 with OpenAI's envelope.
    let (status, body) = call(&h, Method::GET, "/files", None, None).await;
    envelope_401(status, &body, None);
    let (status, body) = call(
        &h,
        Method::GET,
        "/batches",
        Some("sk-batchd-not-a-real-key-0000000000"),
        None,
    )
    .await;
    envelope_401(status, &body, Some("invalid_api_key"));
    assert!(
        !body.to_string().contains("not-a-real-key-0000000000"),
        "the key is echoed redacted only: {body}"
    );
    let p2_id = {
        let out = Command::new(env!("CARGO_BIN_EXE_batchd"))
            .args(["keys", "--data-dir"])
            .arg(&h.config.server.data_dir)
            .args(["list", "--project", "p2"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains(&p2), "lists never show secrets");
        serde_json::from_str::<Value>(text.lines().next().unwrap()).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .args(["keys", "--data-dir"])
        .arg(&h.config.server.data_dir)
        .args(["revoke", &p2_id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (status, body) = call(&h, Method::GET, "/files", Some(&p2), None).await;
    envelope_401(status, &body, Some("invalid_api_key"));
}

#[tokio::test]
async fn the_admin_api_needs_an_admin_key() {
    use reqwest::Method;
    let h = Harness::start().await;
    let user = create_key(&h, "p1", false)["secret"].as_str().unwrap().to_owned();
    let admin = create_key(&h, "ops", true)["secret"].as_str().unwrap().to_owned();
    let admin_url = |p: &str| format!("{}{p}", h.base.trim_end_matches("/v1"));
    let r = h
        .http
        .get(admin_url("/admin/keys"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = h.http.get(admin_url("/admin/keys")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let created: Value = h
        .http
        .post(admin_url("/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"project_id": "p3", "name": "from the api"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap();
    let (status, _) = call(&h, Method::GET, "/files", Some(secret), None).await;
    assert_eq!(status, 200);
    let list: Value = h
        .http
        .get(admin_url("/admin/keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert!(!list.to_string().contains(secret) && !list.to_string().contains("\"secret\""));
    let revoked: Value = h
        .http
        .delete(admin_url(&format!("/admin/keys/{}", created["id"].as_str().unwrap())))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(revoked["revoked_at"].is_i64());
    let (status, _) = call(&h, Method::GET, "/files", Some(secret), None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_keys_batchd_listens_on_loopback_only_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), "http://127.0.0.1:9/v1");
    config.server.listen = "0.0.0.0:0".parse().unwrap();
    let refused = Server::start(config.clone()).await.err().expect("must refuse");
    assert!(refused.to_string().contains("without API keys"), "{refused}");
    config.server.allow_unauthenticated = true;
    let server = Server::start(config).await.unwrap();
    server.shutdown().await.unwrap();
}

/// Every `/v1` route, with real ids where it takes one.
fn every_route(file: &str, batch: &str, upload: &str) -> Vec<(reqwest::Method, String)> {
    use reqwest::Method;
    vec![
        (Method::GET, "/files".into()),
        (Method::POST, "/files".into()),
        (Method::GET, format!("/files/{file}")),
        (Method::DELETE, format!("/files/{file}")),
        (Method::GET, format!("/files/{file}/content")),
        (Method::POST, "/uploads".into()),
        (Method::POST, format!("/uploads/{upload}/parts")),
        (Method::POST, format!("/uploads/{upload}/complete")),
        (Method::POST, format!("/uploads/{upload}/cancel")),
        (Method::GET, "/batches".into()),
        (Method::POST, "/batches".into()),
        (Method::GET, format!("/batches/{batch}")),
        (Method::POST, format!("/batches/{batch}/cancel")),
        (Method::GET, format!("/batches/{batch}/stats")),
        (Method::GET, "/models".into()),
        (Method::GET, "/no-such-route".into()),
    ]
}

async fn assert_all_closed(h: &Harness, routes: &[(reqwest::Method, String)], keys: &[Option<&str>]) {
    for key in keys {
        for (method, path) in routes {
            let (status, body) = call(h, method.clone(), path, *key, None).await;
            assert_eq!(status, 401, "{method} {path} with key {key:?}: {body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        }
    }
    let admin = format!("{}/admin/keys", h.base.trim_end_matches("/v1"));
    for key in keys {
        let mut request = h.http.get(&admin);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "/admin/keys with {key:?}");
    }
}

#[tokio::test]
async fn revoking_every_key_keeps_every_route_closed() {
    let mut h = Harness::start().await;
    let user = create_key(&h, "p1", false);
    let admin = create_key(&h, "ops", true);
    let user_secret = user["secret"].as_str().unwrap().to_owned();
    let admin_secret = admin["secret"].as_str().unwrap().to_owned();
    let file = upload_as(&h, &user_secret, &format!("{}\n", chat_line("a", "fake-model", "hi"))).await;
    let batch = common::create_batch_at(
        &h.http,
        &h.base,
        Some(&user_secret),
        format!("{}\n", chat_line("b", "fake-model", "hi")),
    )
    .await;
    let (_, upload) = call(
        &h,
        reqwest::Method::POST,
        "/uploads",
        Some(&user_secret),
        Some(json!({"bytes": 3, "filename": "u.jsonl", "mime_type": "text/jsonl", "purpose": "batch"})),
    )
    .await;
    let upload = upload["id"].as_str().unwrap().to_owned();
    let routes = every_route(&file, &batch, &upload);

    // The admin revokes the user's key, then its own, over the admin API:
    // no active key remains.
    let admin_url = |p: &str| format!("{}{p}", h.base.trim_end_matches("/v1"));
    for id in [&user["id"], &admin["id"]] {
        let r = h
            .http
            .delete(admin_url(&format!("/admin/keys/{}", id.as_str().unwrap())))
            .bearer_auth(&admin_secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let keys = [None, Some(user_secret.as_str()), Some(admin_secret.as_str())];
    assert_all_closed(&h, &routes, &keys).await;
    // Still closed after a restart, on every route.
    h.restart().await;
    assert_all_closed(&h, &routes, &keys).await;
    // A new key opens its own project again, and nothing else.
    let fresh = create_key(&h, "p1", false)["secret"].as_str().unwrap().to_owned();
    let (status, _) = call(&h, reqwest::Method::GET, &format!("/files/{file}"), Some(&fresh), None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&h, reqwest::Method::GET, "/files", None, None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn require_keys_closes_the_api_before_the_first_key() {
    let h = Harness::start_with(|c| c.server.require_keys = true).await;
    let routes = every_route("file-abc", "batch_abc", "upload_abc");
    assert_all_closed(&h, &routes, &[None, Some("sk-batchd-wrong")]).await;
    let key = create_key(&h, "p1", false)["secret"].as_str().unwrap().to_owned();
    let (status, _) = call(&h, reqwest::Method::GET, "/files", Some(&key), None).await;
    assert_eq!(status, 200);
    // A server that requires keys may listen beyond loopback before any exists.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), "http://127.0.0.1:9/v1");
    config.server.listen = "0.0.0.0:0".parse().unwrap();
    config.server.require_keys = true;
    Server::start(config).await.unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let h = Harness::start().await;
    let key = create_key(&h, "p1", false)["secret"].as_str().unwrap().to_owned();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = h
            .http
            .get(h.url("/files"))
            .header("authorization", format!("{scheme} {key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "scheme {scheme}");
    }
}

#[tokio::test]
async fn metrics_need_an_admin_key_once_keys_exist_unless_public() {
    let h = Harness::start().await;
    let metrics = format!("{}/metrics", h.base.trim_end_matches("/v1"));
    let health = format!("{}/health", h.base.trim_end_matches("/v1"));
    assert_eq!(
        h.http.get(&metrics).send().await.unwrap().status(),
        200,
        "open before keys"
    );
    let user = create_key(&h, "p1", false)["secret"].as_str().unwrap().to_owned();
    let admin = create_key(&h, "ops", true)["secret"].as_str().unwrap().to_owned();
    assert_eq!(h.http.get(&metrics).send().await.unwrap().status(), 401);
    let r = h.http.get(&metrics).bearer_auth(&user).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = h.http.get(&metrics).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("batchd_"));
    assert_eq!(
        h.http.get(&health).send().await.unwrap().status(),
        200,
        "/health stays public"
    );

    let public = Harness::start_with(|c| c.server.metrics_public = true).await;
    create_key(&public, "p1", false);
    let url = format!("{}/metrics", public.base.trim_end_matches("/v1"));
    assert_eq!(public.http.get(&url).send().await.unwrap().status(), 200);
}
