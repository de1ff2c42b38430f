//! `POST /v1/files` on arbitrary multipart bodies, through the real router,
//! store and blob storage (SQLite and local disk in a temporary directory).
//!
//! Whatever the body, the answer is 200 with a File object or a 4xx with
//! OpenAI's error envelope: never a 5xx, never a panic. A file that was
//! accepted is deleted again, so the run does not fill the disk.

#![no_main]

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use batchd::app::Core;
use batchd::config::Config;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const BOUNDARY: &str = "fuzzboundary";

struct Target {
    rt: tokio::runtime::Runtime,
    router: Router,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap().keep();
        let mut config = Config::default();
        config.server.data_dir = dir;
        config.limits.max_upload_bytes = 64 * 1024;
        let core = rt.block_on(Core::open(&config)).unwrap();
        Target {
            rt,
            router: batchd::api::router(core.state),
        }
    })
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{status}: body is not JSON: {bytes:?}"));
    (status, json)
}

fuzz_target!(|body: &[u8]| {
    let t = target();
    t.rt.block_on(async {
        let request = Request::post("/v1/files")
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(Body::from(body.to_vec()))
            .unwrap();
        let (status, json) = call(&t.router, request).await;
        match status.as_u16() {
            200 => {
                assert_eq!(json["object"], "file");
                let id = json["id"].as_str().expect("file id");
                let delete = Request::delete(format!("/v1/files/{id}")).body(Body::empty()).unwrap();
                let (status, json) = call(&t.router, delete).await;
                assert_eq!(status, StatusCode::OK, "{json}");
            }
            400 | 413 => {
                let error = &json["error"];
                assert!(
                    error["message"].is_string() && error["type"] == "invalid_request_error",
                    "{json}"
                );
            }
            other => panic!("unexpected status {other}: {json}"),
        }
    });
});
