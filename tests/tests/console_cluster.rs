//! The web console of a cluster worker: its cluster page lists the
//! partitions it owns (as `GET /cluster` says), every partition's owner
//! and its rebalances, and its pipeline pages work
//! for the partitions' pipelines. Real servers: a 3-node NATS JetStream
//! cluster, Redis, one `plumber worker` process.

use plumber_tests as harness;

use std::time::Duration;

use harness::cluster::*;

const PATIENCE: Duration = Duration::from_secs(120);

async fn text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_console_shows_its_partitions_and_their_pipelines() {
    let setup = oracle_setup(4).await;
    let worker = WorkerProcess::start_with_admin(&setup.path, "c1", setup.dir.path());
    let base = worker.admin_url();
    // The only worker: it owns every partition once it has settled.
    let owned = harness::wait_until_async(PATIENCE, || async {
        worker.cluster_view_once_joined().await.is_some_and(|view| {
            view["partitions"]
                .as_array()
                .is_some_and(|partitions| partitions.len() == 4)
        })
    })
    .await;
    assert!(
        owned,
        "c1 did not take the 4 partitions:\n{}",
        worker.log_text()
    );

    let view = worker.cluster_view().await;
    let (status, page) = text(&format!("{base}/console/cluster")).await;
    assert_eq!(status, 200);
    assert!(page.contains("<dt>worker</dt><dd>c1</dd>"), "{page}");
    assert!(page.contains("<h2>partitions</h2>"), "{page}");
    for partition in view["partitions"].as_array().unwrap() {
        // Each row starts with the partition and its task, as the worker
        // reports them.
        let row = format!(
            "<tr><td>{}</td><td>{}</td>",
            partition["partition"],
            partition["task"].as_str().unwrap()
        );
        assert!(page.contains(&row), "no {row} in {page}");
    }

    // Who holds each partition's lease, from the lease bucket: c1, all
    // four; and the rounds in which it took them.
    let owners = view["owners"].as_array().unwrap();
    assert_eq!(owners.len(), 4, "{view}");
    assert!(owners.iter().all(|o| o["owner"] == "c1"), "{view}");
    assert!(view["rebalances"].as_u64().unwrap() >= 1, "{view}");
    assert_eq!(view["partitions_taken"], 4, "{view}");
    assert!(page.contains("<h2>owners</h2>"), "{page}");
    assert!(page.contains("<dt>rebalances</dt>"), "{page}");
    for owner in owners {
        let row = format!(
            "<tr><td>{}</td><td>{}</td><td>c1</td>",
            owner["partition"],
            owner["task"].as_str().unwrap()
        );
        assert!(page.contains(&row), "no {row} in {page}");
    }

    // Every pipeline of the overview has its page and its JSON.
    let overview: serde_json::Value = reqwest::get(format!("{base}/console/api/overview"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pipelines = overview["pipelines"].as_array().unwrap();
    assert!(!pipelines.is_empty(), "{overview}");
    for pipeline in pipelines {
        let name = pipeline["name"].as_str().unwrap();
        // A partition's pipeline is `<pipeline>#p<N>`: `#` goes encoded in
        // a path, as the overview's own links have it.
        let segment = name.replace('#', "%23");
        let overview_page = text(&format!("{base}/console")).await.1;
        assert!(
            overview_page.contains(&format!("href=\"/console/pipelines/{segment}\"")),
            "{overview_page}"
        );
        let (status, page) = text(&format!("{base}/console/pipelines/{segment}")).await;
        assert_eq!(status, 200, "{name}: {page}");
        assert!(page.contains("id=\"graph\""), "{name}: {page}");
        let (status, json) = text(&format!("{base}/console/api/pipelines/{segment}")).await;
        assert_eq!(status, 200, "{name}: {json}");
        let detail: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(detail["name"], name);
        assert!(!detail["stages"].as_array().unwrap().is_empty(), "{detail}");
    }
}
