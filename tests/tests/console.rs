//! The web console in a real browser: headless Chromium, driven over the
//! WebDriver protocol by Debian's `chromedriver`, against a running
//! `plumber run` with two pipelines of two tenants and an admin token.
//!
//! The WebDriver calls are plain HTTP with JSON (reqwest, already a
//! dependency): no WebDriver crate to pin, and the protocol is the W3C
//! standard one every chromedriver speaks. Without `chromium` and
//! `chromium-driver` installed the tests fail, saying what to install.
//!
//! Screenshots of every page, at 1280×800 and at a phone's 390×844, are
//! saved under `target/tmp/console-screenshots/`.

use plumber_tests as harness;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

const TOKEN: &str = "console-test-token";
/// What the W3C protocol names an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(30);

/// Where the browser and its driver are (Debian's packages).
fn browser_paths() -> (PathBuf, PathBuf) {
    let chromium = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => (chromium, driver),
        _ => panic!(
            "the console's browser tests need headless Chromium and its WebDriver: \
             install Debian's packages with `apt-get install -y chromium chromium-driver` \
             (.ci/run does)"
        ),
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Standard base64 (what WebDriver's screenshots are) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut bits = 0u32;
        for (i, &c) in data.iter().enumerate() {
            bits |= value(c) << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len()]);
    }
    out
}

/// A `chromedriver` on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    base: String,
    client: reqwest::Client,
    chromium: PathBuf,
    profiles: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let (chromium, driver) = browser_paths();
        let port = harness::free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let ready = harness::wait_until_async(WAIT, || async {
            match client.get(format!("{base}/status")).send().await {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|status| status["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        assert!(ready, "chromedriver did not get ready at {base}");
        Driver {
            child,
            base,
            client,
            chromium,
            profiles: tempfile::tempdir().unwrap(),
        }
    }

    /// A new headless browser session: `javascript` off or on, the given
    /// window size, or a phone's screen (`phone`: device metrics, touch).
    async fn session(
        &self,
        name: &str,
        javascript: bool,
        size: (u32, u32),
        phone: bool,
    ) -> Session {
        let profile = self.profiles.path().join(name);
        let mut options = json!({
            "binary": self.chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                format!("--window-size={},{}", size.0, size.1),
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if !javascript {
            options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        if phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": size.0, "height": size.1, "pixelRatio": 2.0, "touch": true}
            });
        }
        let answer: Value = self
            .client
            .post(format!("{}/session", self.base))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        let session = Session {
            url: format!("{}/session/{id}", self.base),
            client: self.client.clone(),
            name: name.to_owned(),
        };
        if !phone {
            session.viewport(size).await;
        }
        session
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser.
struct Session {
    url: String,
    client: reqwest::Client,
    name: String,
}

impl Session {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = answer["value"].get("error") {
            panic!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    /// Sizes the window so that the page's viewport is `size`.
    async fn viewport(&self, size: (u32, u32)) {
        let rect = |width: i64, height: i64| json!({"width": width, "height": height});
        let (width, height) = (i64::from(size.0), i64::from(size.1));
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(rect(width, height)),
        )
        .await;
        let inner = self
            .run("return [window.innerWidth, window.innerHeight];", json!([]))
            .await;
        let (inner_width, inner_height) = (inner[0].as_i64().unwrap(), inner[1].as_i64().unwrap());
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(rect(2 * width - inner_width, 2 * height - inner_height)),
        )
        .await;
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn text(&self, selector: &str) -> String {
        let value = self
            .run(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([selector]),
            )
            .await;
        value
            .as_str()
            .unwrap_or_else(|| panic!("{}: no element {selector}", self.name))
            .to_owned()
    }

    async fn element(&self, selector: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {selector}: {found}", self.name))
            .to_owned()
    }

    async fn click(&self, selector: &str) {
        let element = self.element(selector).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, selector: &str, text: &str) {
        let element = self.element(selector).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        if !text.is_empty() {
            self.call(
                reqwest::Method::POST,
                &format!("/element/{element}/value"),
                Some(json!({"text": text})),
            )
            .await;
        }
    }

    /// Presses keys (WebDriver key codes) on whatever has the focus.
    async fn keys(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for key in keys {
            actions.push(json!({"type": "keyDown", "value": key}));
            actions.push(json!({"type": "keyUp", "value": key}));
        }
        self.call(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    /// Waits until `script` (a function body) returns true.
    async fn wait_for(&self, what: &str, script: &str, args: Value) {
        let held = harness::wait_until_async(WAIT, || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.run(script, args.clone()).await == Value::Bool(true)
        })
        .await;
        let page = self
            .run(
                "return document.body ? document.body.innerText : ''",
                json!([]),
            )
            .await;
        assert!(
            held,
            "{}: {what} did not happen; the page says:\n{page}",
            self.name
        );
    }

    /// Saves a PNG of the viewport as `<name>-<file>.png`.
    async fn screenshot(&self, file: &str) -> PathBuf {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64_decode(png.as_str().unwrap());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let path = screenshot_dir().join(format!("{}-{file}.png", self.name));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Whether the page is no wider than the viewport (nothing to scroll
    /// sideways but the tables' own boxes).
    async fn fits_the_width(&self) -> bool {
        self.run(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            json!([]),
        )
        .await
            == Value::Bool(true)
    }

    async fn quit(self) {
        let _ = self.client.delete(&self.url).send().await;
    }
}

/// A `plumber run` of two pipelines, `orders` (tenant `acme`, checkpoints
/// only when asked) and `clicks` (tenant `beta`, every 300 ms), both
/// counting words of a file they follow; the admin server with a token.
struct Plumber {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    feeding: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Plumber {
    async fn start() -> Plumber {
        let dir = tempfile::tempdir().unwrap();
        let count = json!({"name": "count", "type": "wasm", "module": harness::guest("count")});
        // `clicks` also prints each event (guest log lines) and fails on
        // those starting with `fail` (dead letters).
        let loud = json!({"name": "loud", "type": "wasm", "module": harness::guest("probe"),
                          "config": {"mode": "print"}});
        let picky = json!({"name": "picky", "type": "wasm", "module": harness::guest("faulty"),
                           "on_error": "dead_letter"});
        for (name, tenant, interval, pipeline) in [
            ("orders", "acme", Value::Null, json!([count])),
            ("clicks", "beta", json!(300), json!([loud, picky, count])),
        ] {
            std::fs::write(dir.path().join(format!("{name}.in")), "").unwrap();
            let config = json!({
                "name": name,
                "tenant": tenant,
                "state": {"type": "memory"},
                "checkpoint": {"interval_ms": interval},
                "from": {"type": "file", "path": format!("{name}.in"), "follow_ms": 50},
                "pipeline": pipeline,
                "to": {"type": "file", "path": format!("{name}.out")},
                "dead_letter": {"type": "file", "path": format!("{name}.dead")},
            });
            std::fs::write(
                dir.path().join(format!("{name}.json")),
                serde_json::to_vec_pretty(&config).unwrap(),
            )
            .unwrap();
        }
        let host = json!({
            "pipelines": ["orders.json", "clicks.json"],
            "tenants": {"acme": {"max_pipelines": 4, "max_state_bytes": 10_485_760}},
            "status_interval_ms": 0,
        });
        std::fs::write(dir.path().join("host.json"), host.to_string()).unwrap();
        let port = harness::free_port();
        let child = Command::new(harness::plumber_binary())
            .current_dir(dir.path())
            .arg("--cache-dir")
            .arg(harness::cache_dir())
            .args(["run", "--host", "host.json", "--admin"])
            .arg(format!("127.0.0.1:{port}"))
            .env("PLUMBER_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start plumber run");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let ready = harness::wait_until_async(Duration::from_secs(120), || async {
            client
                .get(format!("{base}/ready"))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        })
        .await;
        assert!(ready, "plumber run did not get ready at {base}");

        // Lines keep coming, so counters move; at most two minutes of them.
        let feeding = Arc::new(AtomicBool::new(true));
        let feeder = {
            let feeding = feeding.clone();
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                let words = ["ada", "bob", "cy"];
                for round in 0..1200 {
                    if !feeding.load(Ordering::Relaxed) {
                        break;
                    }
                    for name in ["orders", "clicks"] {
                        let mut file = std::fs::OpenOptions::new()
                            .append(true)
                            .open(dir.join(format!("{name}.in")))
                            .unwrap();
                        let word = if round % 10 == 5 {
                            "fail-me"
                        } else {
                            words[round % words.len()]
                        };
                        writeln!(file, "{word}").unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Plumber {
            child,
            base,
            dir,
            feeding,
            feeder: Some(feeder),
        }
    }

    /// The pipeline's JSON as the console's API answers it (no browser).
    async fn detail(&self, pipeline: &str) -> Value {
        reqwest::get(format!("{}/console/api/pipelines/{pipeline}", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the pipeline has dead-lettered something and logged a
    /// line, by its API.
    async fn wait_for_dead_letters_and_log(&self, pipeline: &str) {
        let seen = harness::wait_until_async(WAIT, || async {
            let detail = self.detail(pipeline).await;
            !detail["dead_letters"].as_array().unwrap().is_empty()
                && !detail["log"].as_array().unwrap().is_empty()
        })
        .await;
        assert!(seen, "{pipeline}: no dead letter or log line");
    }

    /// The values in the pipeline's dead-letter file (JSON lines).
    fn dead_letter_values(&self, pipeline: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{pipeline}.dead")))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let letter: Value = serde_json::from_str(line).unwrap();
                letter["value"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    fn module_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Plumber {
    fn drop(&mut self) {
        self.feeding.store(false, Ordering::Relaxed);
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn checkpoint_epochs(detail: &Value) -> Vec<u64> {
    detail["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["epoch"].as_u64().unwrap())
        .collect()
}

/// The overview's first paint is the server's: with JavaScript off it
/// lists every pipeline, and says it is not live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_reads_without_javascript() {
    let plumber = Plumber::start().await;
    let driver = Driver::start().await;
    let browser = driver.session("nojs", false, (1280, 800), false).await;
    browser.goto(&format!("{}/console", plumber.base)).await;
    for (pipeline, tenant) in [("orders", "acme"), ("clicks", "beta")] {
        let row = format!("tr[data-pipeline=\"{pipeline}\"]");
        assert_eq!(browser.text(&format!("{row} th a")).await, pipeline);
        assert_eq!(
            browser.text(&format!("{row} [data-field=tenant]")).await,
            tenant
        );
        assert_eq!(
            browser.text(&format!("{row} [data-field=state]")).await,
            "running"
        );
    }
    // The script did not run: the status line is the server's.
    assert_eq!(
        browser.text("#live").await,
        "As loaded; live updates need JavaScript."
    );
    assert_eq!(
        browser
            .run(
                "return document.querySelectorAll('td.spark svg').length",
                json!([])
            )
            .await,
        json!(0)
    );
    browser.screenshot("overview").await;
    // The pipeline page too, with its graph.
    browser
        .goto(&format!("{}/console/pipelines/orders", plumber.base))
        .await;
    assert!(browser.text("#graph").await.contains("count"));
    browser.screenshot("pipeline").await;
    // Dead letters with their headers, and guest log lines, server-rendered.
    plumber.wait_for_dead_letters_and_log("clicks").await;
    browser
        .goto(&format!("{}/console/pipelines/clicks", plumber.base))
        .await;
    let letters = browser.text("#dead-letters").await;
    assert!(letters.contains("fail-me"), "{letters}");
    assert!(letters.contains("plumber-dead-letter-reason"), "{letters}");
    assert!(letters.contains("asked to fail"), "{letters}");
    let log = browser.text("#guest-log").await;
    assert!(log.contains("stdout: "), "{log}");
    assert!(log.contains("loud"), "{log}");
    browser.quit().await;
}

/// The console with JavaScript: counters move, a checkpoint asked for on
/// the page lands in its history, a bad module is refused with the reason,
/// no token and a cross-origin form are refused, and every page fits a
/// phone's width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let plumber = Plumber::start().await;
    let driver = Driver::start().await;
    let base = &plumber.base;
    let browser = driver.session("desktop", true, (1280, 800), false).await;

    // Overview: both pipelines; the counters and rates move.
    browser.goto(&format!("{base}/console")).await;
    let events_in = "tr[data-pipeline=\"clicks\"] [data-field=events_in]";
    let first: u64 = browser.text(events_in).await.parse().unwrap();
    browser
        .wait_for(
            "the events-in counter of `clicks` to move",
            "return Number(document.querySelector(arguments[0]).textContent) > arguments[1];",
            json!([events_in, first]),
        )
        .await;
    browser
        .wait_for(
            "a rate and a sparkline of five points",
            "const row = document.querySelector('tr[data-pipeline=\"orders\"]'); \
             return /^[0-9.]+$/.test(row.querySelector('[data-field=rate_in]').textContent) \
                 && (row.querySelector('td.spark polyline')?.getAttribute('points') || '').split(' ').length >= 5;",
            json!([]),
        )
        .await;
    assert!(browser.text("#live").await.starts_with("Live: updated"));
    assert!(
        browser.fits_the_width().await,
        "the overview is wider than 1280"
    );
    browser.screenshot("overview").await;

    // Keyboard: the first Tab reaches the skip link, Enter follows it.
    browser.keys(&["\u{E004}"]).await;
    assert_eq!(
        browser
            .run("return document.activeElement.textContent", json!([]))
            .await,
        json!("Skip to content")
    );
    browser.keys(&["\u{E007}"]).await;
    assert_eq!(
        browser.run("return location.hash", json!([])).await,
        json!("#main")
    );

    // The pipeline page.
    browser
        .goto(&format!("{base}/console/pipelines/orders"))
        .await;
    let before = checkpoint_epochs(&plumber.detail("orders").await);

    // Without the token: refused, and nothing happened.
    browser.type_into("#token", "").await;
    browser.click("#checkpoint").await;
    browser
        .wait_for(
            "the refusal of a checkpoint without the token",
            "return document.querySelector('#action-result').textContent.startsWith('Checkpoint refused (401)');",
            json!([]),
        )
        .await;
    assert!(browser
        .text("#action-result")
        .await
        .contains("missing or wrong admin token"));
    assert_eq!(checkpoint_epochs(&plumber.detail("orders").await), before);

    // With it: committed, and the history shows it.
    browser.type_into("#token", TOKEN).await;
    browser.click("#checkpoint").await;
    browser
        .wait_for(
            "the checkpoint's answer",
            "return /^Checkpoint [0-9]+ committed\\.$/.test(document.querySelector('#action-result').textContent);",
            json!([]),
        )
        .await;
    let answer = browser.text("#action-result").await;
    let epoch: u64 = answer
        .trim_start_matches("Checkpoint ")
        .trim_end_matches(" committed.")
        .parse()
        .unwrap();
    let after = checkpoint_epochs(&plumber.detail("orders").await);
    assert!(
        after.contains(&epoch) && !before.contains(&epoch),
        "{before:?} {after:?}"
    );
    browser
        .wait_for(
            "the new checkpoint in the history table",
            "return document.querySelector(`#checkpoints tr[data-epoch=\"${arguments[0]}\"]`) !== null;",
            json!([epoch]),
        )
        .await;

    // A module that is no component: refused, with the engine's reason,
    // and kept in the swap history; the old version keeps running.
    let version = plumber.detail("orders").await["pipes"][0]["version"].clone();
    let bad = plumber.module_file("bad.wasm", b"this is not a component");
    let file_input = browser.element("#upload-file").await;
    browser
        .call(
            reqwest::Method::POST,
            &format!("/element/{file_input}/value"),
            Some(json!({"text": bad.display().to_string()})),
        )
        .await;
    browser.click("#upload").await;
    browser
        .wait_for(
            "the refusal of the bad module",
            "return document.querySelector('#action-result').textContent.startsWith('Module upload for count refused (422): module refused:');",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the refusal in the swap history",
            "return [...document.querySelectorAll('table.swaps[data-pipe=\"count\"] td.refused')].length === 1;",
            json!([]),
        )
        .await;
    let detail = plumber.detail("orders").await;
    assert_eq!(detail["pipes"][0]["version"], version);
    let swaps = detail["pipes"][0]["swaps"].as_array().unwrap();
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(swaps[0]["from"], version);
    assert!(
        swaps[0]["refused"].as_str().unwrap().len() > 10,
        "{swaps:?}"
    );
    assert!(
        browser.fits_the_width().await,
        "the pipeline page is wider than 1280"
    );
    browser.screenshot("pipeline").await;

    // Tenants: acme's quota, and its counters kept live.
    browser.goto(&format!("{base}/console/tenants")).await;
    assert!(browser
        .text("tr[data-tenant=\"acme\"]")
        .await
        .contains("1 of 4"));
    let shown: u64 = browser
        .text("tr[data-tenant=\"acme\"] [data-field=events_in]")
        .await
        .parse()
        .unwrap();
    browser
        .wait_for(
            "acme's events in to move",
            "return Number(document.querySelector('tr[data-tenant=\"acme\"] [data-field=events_in]').textContent) > arguments[0];",
            json!([shown]),
        )
        .await;
    browser.screenshot("tenants").await;
    browser.goto(&format!("{base}/console/cluster")).await;
    assert!(browser.text("main").await.contains("not a cluster worker"));
    assert_eq!(
        browser.text("#live").await,
        "As loaded; reload for newer figures."
    );
    browser.screenshot("cluster").await;

    // Dead letters and log lines of `clicks`, kept live: the page's
    // newest dead letter is one the dead-letter sink wrote.
    plumber.wait_for_dead_letters_and_log("clicks").await;
    browser
        .goto(&format!("{base}/console/pipelines/clicks"))
        .await;
    browser
        .wait_for(
            "a dead letter with its headers and a guest log line",
            "const letter = document.querySelector('#dead-letters tr.letter'); \
             const line = document.querySelector('#guest-log tr.line'); \
             return letter !== null && line !== null \
                 && letter.textContent.includes('plumber-dead-letter-step: picky');",
            json!([]),
        )
        .await;
    let shown = browser
        .run(
            "return document.querySelector('#dead-letters tr.letter td:nth-child(3)').textContent",
            json!([]),
        )
        .await;
    let written = plumber.dead_letter_values("clicks");
    assert!(
        written.iter().any(|value| json!(value) == shown),
        "{shown} is not in the dead-letter file: {written:?}"
    );
    browser.screenshot("pipeline-dead-letters").await;

    // A page of another origin posting a form to the admin API (the
    // classic cross-site request): refused for its origin.
    let epochs = checkpoint_epochs(&plumber.detail("orders").await);
    let form = format!(
        "data:text/html,<form method=post enctype=text/plain \
         action={base}/pipelines/orders/checkpoint><input name=a value=b></form>"
    );
    browser.goto(&form).await;
    browser
        .run("document.forms[0].submit(); return true;", json!([]))
        .await;
    browser
        .wait_for(
            "the cross-origin refusal",
            "return document.body.innerText.includes('cross-origin request refused');",
            json!([]),
        )
        .await;
    assert_eq!(checkpoint_epochs(&plumber.detail("orders").await), epochs);
    browser.quit().await;

    // A phone: every page fits its width.
    let phone = driver.session("phone", true, (390, 844), true).await;
    for (page, file) in [
        ("/console", "overview"),
        ("/console/pipelines/clicks", "pipeline"),
        ("/console/tenants", "tenants"),
        ("/console/cluster", "cluster"),
    ] {
        phone.goto(&format!("{base}{page}")).await;
        phone
            .wait_for(
                "a live update",
                "return document.querySelector('#live').textContent.startsWith('Live') \
                     || document.body.dataset.page === 'cluster';",
                json!([]),
            )
            .await;
        assert_eq!(
            phone.run("return window.innerWidth", json!([])).await,
            json!(390)
        );
        assert!(phone.fits_the_width().await, "{page} is wider than a phone");
        phone.screenshot(file).await;
    }
    phone.quit().await;

    // Drain and stop, from the page: asked twice, then the pipeline ends.
    let browser = driver.session("stop", true, (1280, 800), false).await;
    browser
        .goto(&format!("{base}/console/pipelines/clicks"))
        .await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#stop").await;
    assert_eq!(browser.text("#stop").await, "Press again to drain and stop");
    browser.click("#stop").await;
    browser
        .wait_for(
            "the pipeline to stop",
            "return document.querySelector('#facts [data-field=state]').textContent === 'stopped';",
            json!([]),
        )
        .await;
    assert_eq!(plumber.detail("clicks").await["state"], "stopped");
    assert_eq!(plumber.detail("orders").await["state"], "running");
    browser.quit().await;
    println!("screenshots in {}", screenshot_dir().display());
}

/// A hundred pipelines: the overview lists them all, server-rendered, and
/// keeps them live (every row's rate and sparkline). Prints what one
/// update costs the browser, as its status line says (`--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pipelines_stay_live() {
    let dir = tempfile::tempdir().unwrap();
    let count = harness::guest("count");
    let mut names = Vec::new();
    for i in 0..100 {
        let name = format!("p{i:03}");
        std::fs::write(dir.path().join(format!("{name}.in")), "a\nb\n").unwrap();
        let config = json!({
            "name": name,
            "tenant": format!("t{}", i % 5),
            "state": {"type": "memory"},
            "from": {"type": "file", "path": format!("{name}.in"), "follow_ms": 500},
            "pipeline": [{"name": "count", "type": "wasm", "module": count}],
            "to": {"type": "discard"},
        });
        std::fs::write(dir.path().join(format!("{name}.json")), config.to_string()).unwrap();
        names.push(format!("{name}.json"));
    }
    let host = json!({"pipelines": names, "status_interval_ms": 0});
    std::fs::write(dir.path().join("host.json"), host.to_string()).unwrap();
    let port = harness::free_port();
    let mut child = Command::new(harness::plumber_binary())
        .current_dir(dir.path())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(["run", "--host", "host.json", "--admin"])
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start plumber run");
    let base = format!("http://127.0.0.1:{port}");
    let ready = harness::wait_until_async(Duration::from_secs(120), || async {
        reqwest::get(format!("{base}/ready"))
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(ready, "plumber run did not get ready at {base}");

    let driver = Driver::start().await;
    let browser = driver.session("hundred", true, (1280, 800), false).await;
    browser.goto(&format!("{base}/console")).await;
    assert_eq!(
        browser
            .run(
                "return document.querySelectorAll('#pipelines tbody tr[data-pipeline]').length",
                json!([])
            )
            .await,
        json!(100)
    );
    browser
        .wait_for(
            "every row live: a rate and a sparkline each",
            "const rows = [...document.querySelectorAll('#pipelines tbody tr[data-pipeline]')]; \
             return rows.length === 100 && rows.every((row) => \
                 /^[0-9.]+$/.test(row.querySelector('[data-field=rate_in]').textContent) \
                 && row.querySelector('td.spark polyline') !== null);",
            json!([]),
        )
        .await;
    let mut updates = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        updates.push(browser.text("#live").await);
    }
    for update in &updates {
        assert!(update.starts_with("Live: updated"), "{update}");
        println!("100 pipelines: {update}");
    }
    browser.screenshot("overview").await;
    browser.quit().await;
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn base64_decodes_as_the_standard_says() {
    // RFC 4648's test vectors.
    for (encoded, decoded) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg==", "foob"),
        ("Zm9vYmE=", "fooba"),
        ("Zm9vYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(encoded), decoded.as_bytes());
    }
}
