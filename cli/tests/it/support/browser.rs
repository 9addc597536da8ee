//! Headless Chromium driven through `chromedriver`'s WebDriver HTTP API (W3C
//! WebDriver), for the web console's tests: open pages, read and click elements, run
//! a script in the page, take screenshots.
//!
//! `chromedriver` runs in its own process group with a private profile folder; drop
//! ends the session (closing the browser) and then kills the whole group, so neither
//! the driver nor a Chromium process outlives the test, even when it fails. The
//! WebDriver calls go through `reqwest` (already in the tree) on a runtime private to
//! the browser, so tests stay synchronous.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::{Guard, free_port, spawn_logged};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A headless Chromium session; see the module documentation.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    root: String,
    /// The session's id.
    session: String,
    driver: Guard,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` (its log in `dir/chromedriver.log`) and a headless
    /// Chromium session that accepts the test CA's certificates.
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let mut command = Command::new("chromedriver");
        command.arg(format!("--port={port}")).process_group(0);
        let driver = spawn_logged(&mut command, &dir.join("chromedriver.log"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Self {
            runtime,
            http: reqwest::Client::new(),
            root: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            driver,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser
            .request(reqwest::Method::GET, "/status", None)
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        args.push("--password-store=basic".to_owned());
        let mut options = json!({ "args": args });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": options,
        }}});
        let created = browser
            .request(reqwest::Method::POST, "/session", Some(capabilities))
            .unwrap_or_else(|error| panic!("cannot start Chromium: {error}"));
        let id = created["sessionId"].as_str().expect("a session id");
        browser.session = id.to_owned();
        browser
    }

    /// One WebDriver call: `path` below the driver's root; the answer's `value`, or
    /// the driver's error.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.root));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let (status, text) = self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, text))
        })?;
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if status.is_success() {
            Ok(answer["value"].clone())
        } else {
            Err(format!("WebDriver {status}: {}", answer["value"]))
        }
    }

    /// A call on the session (`path` below `/session/ID`) that must succeed.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body)
            .unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// The URL of the current page.
    pub fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML as the browser holds it now.
    pub fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every element matching the CSS `selector`.
    pub fn find_all(&self, selector: &str) -> Vec<Element> {
        let found = self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({ "using": "css selector", "value": selector })),
        );
        found
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|id| Element(id.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The one element matching `selector`; the test fails without one.
    pub fn find(&self, selector: &str) -> Element {
        self.find_all(selector)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {selector:?} on {}:\n{}", self.url(), self.source()))
    }

    /// The rendered text of `element`.
    pub fn text(&self, element: &Element) -> String {
        let path = format!("/element/{}/text", element.0);
        self.call(reqwest::Method::GET, &path, None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A DOM property of `element` (`value` of a `<progress>`, say).
    pub fn property(&self, element: &Element, name: &str) -> Value {
        let path = format!("/element/{}/property/{name}", element.0);
        self.call(reqwest::Method::GET, &path, None)
    }

    /// Clicks `element` (and waits for a navigation it starts).
    pub fn click(&self, element: &Element) {
        let path = format!("/element/{}/click", element.0);
        self.call(reqwest::Method::POST, &path, Some(json!({})));
    }

    /// Types `text` into `element`.
    pub fn type_into(&self, element: &Element, text: &str) {
        let path = format!("/element/{}/value", element.0);
        self.call(reqwest::Method::POST, &path, Some(json!({ "text": text })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page, awaiting
    /// the promise it returns; its result.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Forgets every cookie of the current site (ends a console session).
    pub fn delete_cookies(&self) {
        self.call(reqwest::Method::DELETE, "/cookie", None);
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None);
        let mut decoder = Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(path).unwrap())
            .spawn()
            .unwrap();
        use std::io::Write;
        decoder
            .stdin
            .take()
            .unwrap()
            .write_all(encoded.as_str().unwrap_or_default().as_bytes())
            .unwrap();
        assert!(decoder.wait().unwrap().success(), "base64 -d");
    }

    /// Waits until `ready` holds, reloading nothing; fails after `timeout` with `what`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut ready: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what} on {}:\n{}",
                self.url(),
                self.source()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; then nothing of the group may survive.
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.request(reqwest::Method::DELETE, &path, None);
        }
        if let Some(child) = &self.driver.0 {
            let group = i32::try_from(child.id()).unwrap_or(0);
            if group > 0 {
                // SAFETY: kill(2) on the process group this test created.
                unsafe {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
        }
        self.driver.kill9();
    }
}
