//! The console's routes over a fixed engine view: headers, escaping, no
//! inline script, and that nothing under `/console` changes anything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::header;

use super::model::{PipelineDetail, PipelineLive, StopRequested};
use super::CONTENT_SECURITY_POLICY;
use crate::admin::{
    AdminControl, AdminError, AdminOptions, AdminServer, CheckpointDone, ModuleUpload,
    PipelineStatus, SwapDone,
};

/// One pipeline whose name and error are markup; counts the calls that
/// would change something.
#[derive(Default)]
struct Hostile {
    changes: AtomicUsize,
}

const NAME: &str = "<script>alert(1)</script>";

#[async_trait::async_trait]
impl AdminControl for Hostile {
    fn pipelines(&self) -> Vec<PipelineStatus> {
        vec![PipelineStatus {
            name: NAME.into(),
            tenant: "t\"x".into(),
            state: "running".into(),
            events_in: 7,
            events_out: 5,
            last_checkpoint_epoch: None,
            last_checkpoint_age_ms: None,
            error: Some("<img src=x onerror=alert(2)>".into()),
            pipes: vec![],
        }]
    }

    fn ready(&self) -> bool {
        true
    }

    fn metrics(&self) -> String {
        String::new()
    }

    fn detail(&self, pipeline: &str) -> Option<PipelineDetail> {
        let live = self.overview().into_iter().find(|p| p.name == pipeline)?;
        Some(PipelineDetail {
            live,
            stages: vec![],
            checkpoints: vec![],
            pipes: vec![],
            dead_letters: vec![],
            log: vec![],
        })
    }

    async fn checkpoint(&self, pipeline: &str) -> Result<CheckpointDone, AdminError> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        Ok(CheckpointDone {
            pipeline: pipeline.to_owned(),
            epoch: 1,
        })
    }

    async fn swap_module(&self, _: &str, _: &str, _: ModuleUpload) -> Result<SwapDone, AdminError> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        Err(AdminError::Refused("no".into()))
    }

    async fn stop(&self, pipeline: &str) -> Result<StopRequested, AdminError> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        Ok(StopRequested {
            pipeline: pipeline.to_owned(),
            state: "running".into(),
        })
    }
}

async fn serve(token: Option<&str>) -> (AdminServer, Arc<Hostile>, String) {
    let control = Arc::new(Hostile::default());
    let server = AdminServer::start(
        AdminOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: token.map(str::to_owned),
            module_dir: None,
        },
        control.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.local_addr());
    (server, control, base)
}

#[tokio::test]
async fn pages_escape_what_the_engine_reports_and_carry_no_inline_script() {
    let (server, _, base) = serve(None).await;
    let client = reqwest::Client::new();
    let encoded = "%3Cscript%3Ealert%281%29%3C%2Fscript%3E";
    for path in [
        "/console".to_owned(),
        format!("/console/pipelines/{encoded}"),
        "/console/tenants".to_owned(),
        "/console/cluster".to_owned(),
    ] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = response.text().await.unwrap();
        // The only script element is the console's file; nothing inline.
        assert_eq!(html.matches("<script").count(), 1, "{path}: {html}");
        assert!(
            html.contains("<script src=\"/console/assets/console.js\" defer></script>"),
            "{path}"
        );
        assert!(!html.contains("<img"), "{path}: {html}");
        assert!(!html.contains(" style="), "{path}: {html}");
        if !path.ends_with("tenants") && !path.ends_with("cluster") {
            assert!(
                html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{path}: {html}"
            );
        }
    }
    let overview = client
        .get(format!("{base}/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(overview.contains(&format!("href=\"/console/pipelines/{encoded}\"")));
    assert!(
        overview.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{overview}"
    );
    assert!(overview.contains("t&quot;x"), "{overview}");
    server.stop().await;
}

#[tokio::test]
async fn assets_are_built_in_and_the_api_answers_json() {
    let (server, _, base) = serve(None).await;
    let client = reqwest::Client::new();
    for (path, content_type, start) in [
        (
            "/console/assets/console.js",
            "text/javascript",
            "// plumber console",
        ),
        (
            "/console/assets/console.css",
            "text/css",
            "/* plumber console",
        ),
    ] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with(content_type));
        assert!(response.text().await.unwrap().starts_with(start), "{path}");
    }
    let overview: serde_json::Value = client
        .get(format!("{base}/console/api/overview"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["pipelines"][0]["name"], NAME);
    assert_eq!(overview["pipelines"][0]["events_in"], 7);
    let missing = client
        .get(format!("{base}/console/api/pipelines/ghost"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing_page = client
        .get(format!("{base}/console/pipelines/ghost"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_page.status(), 404);
    server.stop().await;
}

/// A `GET` of an action's URL (what a link or an image could make a
/// browser send) changes nothing; the actions need the token and a
/// same-origin, typed `POST`.
#[tokio::test]
async fn no_state_change_on_get_and_stop_is_guarded_like_every_action() {
    let (server, control, base) = serve(Some("s3cret")).await;
    let client = reqwest::Client::new();
    for path in [
        "/pipelines/p/checkpoint",
        "/pipelines/p/stop",
        "/pipelines/p/pipes/x/module",
    ] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
    }
    assert_eq!(control.changes.load(Ordering::SeqCst), 0);

    let stop = format!("{base}/pipelines/p/stop");
    let no_token = client
        .post(&stop)
        .header(header::CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let cross_origin = client
        .post(&stop)
        .bearer_auth("s3cret")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ORIGIN, "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_origin.status(), 403);
    assert_eq!(control.changes.load(Ordering::SeqCst), 0);

    let stopped = client
        .post(&stop)
        .bearer_auth("s3cret")
        .header(header::CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 200);
    let answer: StopRequested = stopped.json().await.unwrap();
    assert_eq!(answer.pipeline, "p");
    assert_eq!(control.changes.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[test]
fn the_overview_falls_back_to_the_pipeline_status() {
    let live = Hostile::default().overview();
    assert_eq!(
        live,
        vec![PipelineLive {
            name: NAME.into(),
            tenant: "t\"x".into(),
            state: "running".into(),
            uptime_ms: None,
            events_in: 7,
            events_out: 5,
            lag: None,
            last_checkpoint_epoch: None,
            last_checkpoint_age_ms: None,
            last_checkpoint_micros: None,
            errors: 0,
            error: Some("<img src=x onerror=alert(2)>".into()),
            rates_in: Vec::new(),
        }]
    );
}
