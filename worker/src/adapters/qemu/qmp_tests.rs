//! The QMP client against hostile fake servers: every bad reply is a clear error.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;

/// A fake QMP server: sends the greeting, answers `qmp_capabilities`, then answers the
/// next request with `script(id)` (raw lines).
fn fake_server(
    script: impl Fn(&str) -> Vec<String> + Send + 'static,
    greeting: &'static str,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(greeting.as_bytes()).await.unwrap();
        write.write_all(b"\n").await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = request["id"].as_str().unwrap_or_default().to_string();
            let replies = if request["execute"] == "qmp_capabilities" {
                vec![json!({"return": {}, "id": id}).to_string() + "\n"]
            } else {
                script(&id)
            };
            for reply in replies {
                if reply == "CLOSE" {
                    return;
                }
                if reply == "SLEEP" {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    continue;
                }
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (dir, path)
}

async fn connect(path: &Path) -> Result<QmpClient, QmpError> {
    QmpClient::connect(path, Duration::from_millis(500)).await
}

#[tokio::test]
async fn events_and_stale_replies_are_skipped() {
    let (_dir, path) = fake_server(
        |id| {
            vec![
                r#"{"event": "JOB_STATUS_CHANGE", "data": {}}"#.to_string() + "\n",
                json!({"return": {"old": true}, "id": "haven-0"}).to_string() + "\n",
                json!({"return": {"ok": 1}, "id": id}).to_string() + "\n",
            ]
        },
        GREETING,
    );
    let mut client = connect(&path).await.unwrap();
    assert_eq!(client.version(), "10.0.2");
    let value = client.execute("query-block", json!({})).await.unwrap();
    assert_eq!(value, json!({"ok": 1}));
}

#[tokio::test]
async fn command_errors_keep_qemus_message() {
    let (_dir, path) = fake_server(
        |id| {
            vec![json!({"error": {"class": "GenericError", "desc": "Bitmap 'x' is inconsistent"}, "id": id}).to_string() + "\n"]
        },
        GREETING,
    );
    let mut client = connect(&path).await.unwrap();
    let error = client
        .execute("block-export-add", json!({}))
        .await
        .unwrap_err();
    assert!(error.is_command_error());
    assert_eq!(error.description(), Some("Bitmap 'x' is inconsistent"));
    assert!(error.to_string().contains("block-export-add"), "{error}");
}

type Script = Box<dyn Fn(&str) -> Vec<String> + Send>;

#[tokio::test]
async fn hostile_replies_are_errors() {
    let cases: Vec<(&str, Script)> = vec![
        ("malformed json", Box::new(|_| vec!["{not json\n".into()])),
        ("not a json object", Box::new(|_| vec!["[1,2]\n".into()])),
        (
            "foreign or missing id",
            Box::new(|_| vec![r#"{"return": {}}"#.to_string() + "\n"]),
        ),
        (
            "neither return nor error",
            Box::new(|id| vec![json!({"id": id, "x": 1}).to_string() + "\n"]),
        ),
        ("closed by the peer", Box::new(|_| vec!["CLOSE".into()])),
        (
            "longer than",
            Box::new(|_| vec!["x".repeat(MAX_LINE + 20_000)]),
        ),
    ];
    for (expected, script) in cases {
        let (_dir, path) = fake_server(script, GREETING);
        let mut client = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            client.execute("query-block", json!({})),
        )
        .await
        .expect("the client must not hang");
        let error = result.unwrap_err().to_string();
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_late_reply_is_ignored() {
    let (_dir, path) = fake_server(
        |id| {
            if id == "haven-2" {
                // Answer the first command only after its caller gave up, then the
                // second immediately: the stale reply must not be taken for it.
                vec![
                    "SLEEP".into(),
                    json!({"return": "first", "id": id}).to_string() + "\n",
                ]
            } else {
                vec![json!({"return": "second", "id": id}).to_string() + "\n"]
            }
        },
        GREETING,
    );
    let mut client = connect(&path).await.unwrap();
    let error = client.execute("slow", json!({})).await.unwrap_err();
    assert!(matches!(error, QmpError::Timeout { .. }), "{error}");
    let value = client
        .execute_within("fast", json!({}), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(value, json!("second"));
}

#[tokio::test]
async fn a_server_that_is_not_qmp_is_refused() {
    let (_dir, path) = fake_server(|_| vec![], r#"{"hello": 1}"#);
    let error = connect(&path).await.unwrap_err().to_string();
    assert!(error.contains("not a QMP greeting"), "{error}");
    let missing = connect(Path::new("/nonexistent/qmp.sock"))
        .await
        .unwrap_err();
    assert!(matches!(missing, QmpError::Io { .. }));
}

#[tokio::test]
async fn guest_agent_syncs_past_stale_bytes_then_freezes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        // Stale output of an earlier client.
        write.write_all(b"{\"return\": 7}\n").await.unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: serde_json::Value = serde_json::from_str(&line).unwrap();
            let reply = match request["execute"].as_str().unwrap() {
                "guest-sync" => json!({"return": request["arguments"]["id"]}),
                "guest-fsfreeze-freeze" => json!({"return": 2}),
                _ => json!({"error": {"class": "GenericError", "desc": "nope"}}),
            };
            write
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .unwrap();
        }
    });
    let mut agent = GuestAgent::connect(&path, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        agent
            .execute("guest-fsfreeze-freeze", json!({}))
            .await
            .unwrap(),
        json!(2)
    );
    let error = agent.execute("guest-other", json!({})).await.unwrap_err();
    assert!(error.is_command_error());
    // A refused command leaves the channel usable.
    agent
        .execute("guest-fsfreeze-freeze", json!({}))
        .await
        .unwrap();
}
