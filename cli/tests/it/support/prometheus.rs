//! A real Prometheus server (Debian's `prometheus`) on a free loopback port with its
//! data in a temporary folder, scraping given targets every second; killed on drop.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{Guard, free_port, spawn_logged};

/// A running Prometheus and the port of its HTTP API.
pub struct Prometheus {
    port: u16,
    _process: Guard,
}

/// What Prometheus scrapes: `/metrics` of `127.0.0.1:port` as job `job`, over HTTPS
/// with a client certificate when `tls` is given.
pub struct Target<'a> {
    /// The `job` label.
    pub job: &'a str,
    /// The loopback port.
    pub port: u16,
    /// CA, client certificate and key (role viewer or above), for a TLS listener.
    pub tls: Option<(&'a Path, &'a Path, &'a Path)>,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping every target every second.
    pub fn start(dir: &Path, targets: &[Target<'_>]) -> Self {
        Self::start_with_rules(dir, targets, None)
    }

    /// [`Prometheus::start`] evaluating the alerting rules of `rules` every second
    /// (the firing alerts are the `ALERTS` series).
    pub fn start_with_rules(dir: &Path, targets: &[Target<'_>], rules: Option<&Path>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        if let Some(rules) = rules {
            config.push_str(&format!("rule_files:\n  - {}\n", rules.display()));
        }
        config.push_str("scrape_configs:\n");
        for target in targets {
            config.push_str(&format!(
                "  - job_name: {}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
                target.job, target.port
            ));
            if let Some((ca, cert, key)) = target.tls {
                config.push_str(&format!(
                    "    scheme: https\n    tls_config:\n      ca_file: {}\n      \
                     cert_file: {}\n      key_file: {}\n",
                    ca.display(),
                    cert.display(),
                    key.display()
                ));
            }
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let process = spawn_logged(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
            &dir.join("prometheus.log"),
        );
        let prometheus = Self {
            port,
            _process: process,
        };
        prometheus.wait_for("up", Duration::from_secs(30));
        prometheus
    }

    /// The result vector of an instant query (`/api/v1/query`); empty while
    /// Prometheus is not answering yet.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-s", "-G", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .unwrap();
        let Ok(answer) = serde_json::from_slice::<Value>(&out.stdout) else {
            return Vec::new();
        };
        assert!(
            answer["status"] == "success",
            "query {promql:?} failed: {answer}"
        );
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `promql` until its result is not empty.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if !result.is_empty() {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has no result for {promql:?} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The value of one sample of a query result, as a number.
pub fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no value in {sample}"))
}
