//! A secured etcd (client-certificate TLS and auth, `Etcd::start_secured`) keeps
//! Haven's keys from clients without full credentials, and keeps Haven's user inside
//! Haven's prefix. Every refusal is checked next to the same request succeeding with
//! full credentials, so a broken fixture cannot pass for a refusal.

use haven_coordinator::config::EtcdSecurity;
use haven_coordinator::store::etcd::EtcdStore;
use haven_coordinator::store::{KeyValue, MetaStore, Op, StoreError};
use haven_testkit::etcd::{Etcd, EtcdctlUser, HAVEN_PREFIX, HAVEN_USER};

async fn start_secured() -> Etcd {
    tokio::task::spawn_blocking(|| Etcd::start_secured(1))
        .await
        .expect("etcd start-up task")
        .expect("start a secured etcd")
}

/// Connects with `security` and reads `key`: the first error of either step.
async fn read(
    etcd: &Etcd,
    security: &EtcdSecurity,
    key: &str,
) -> Result<Option<KeyValue>, StoreError> {
    let store = EtcdStore::connect(&etcd.endpoints(), security).await?;
    store.get(key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_full_credentials_cannot_read_havens_keys() {
    let etcd = start_secured().await;
    let haven = etcd.credentials().expect("secured").haven_security();
    let key = format!("{HAVEN_PREFIX}leader");
    let store = EtcdStore::connect(&etcd.endpoints(), &haven)
        .await
        .expect("Haven's credentials are accepted");
    let written = store
        .txn(vec![], vec![Op::put(&key, "http://coordinator")])
        .await
        .expect("Haven writes its prefix");
    assert!(written.succeeded);
    let found = read(&etcd, &haven, &key)
        .await
        .expect("Haven reads its prefix");
    assert_eq!(
        found.map(|kv| kv.value),
        Some(b"http://coordinator".to_vec())
    );

    // A certificate but no user: etcd takes the certificate's common name as the user,
    // and no such user exists.
    let no_user = EtcdSecurity {
        user: None,
        password_file: None,
        ..haven.clone()
    };
    let refused = read(&etcd, &no_user, &key).await;
    assert!(
        matches!(refused, Err(StoreError::Denied(_))),
        "a client certificate without a user must be refused, got {refused:?}"
    );

    // The right user with a wrong password.
    let dir = tempfile::tempdir().expect("temporary directory");
    let wrong_password = dir.path().join("wrong-password");
    std::fs::write(&wrong_password, "guess\n").expect("write");
    let guessed = EtcdSecurity {
        password_file: Some(wrong_password),
        ..haven.clone()
    };
    let refused = read(&etcd, &guessed, &key).await;
    assert!(
        matches!(refused, Err(StoreError::Denied(_))),
        "a wrong password must be refused, got {refused:?}"
    );

    // The password but no client certificate: the TLS handshake is refused, before
    // any request.
    let no_certificate = EtcdSecurity {
        cert_file: None,
        key_file: None,
        ..haven.clone()
    };
    let refused = read(&etcd, &no_certificate, &key).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "a client without a certificate must not get through TLS, got {refused:?}"
    );

    // Plain HTTP to the TLS port.
    let plain: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|endpoint| endpoint.replacen("https://", "http://", 1))
        .collect();
    let refused = match EtcdStore::connect(&plain, &EtcdSecurity::default()).await {
        Ok(store) => store.get(&key).await,
        Err(error) => Err(error),
    };
    assert!(
        refused.is_err(),
        "plain HTTP must not read {key}, got {refused:?}"
    );

    // etcdctl, as an operator would try it, with the certificate but as no user.
    let refused = etcd.etcdctl(EtcdctlUser::Nobody, &["get", &key]);
    let error = refused.expect_err("etcdctl without a user must not read Haven's keys");
    assert!(
        error.to_string().contains("permission denied"),
        "etcdctl: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn havens_user_stays_inside_its_prefix() {
    let etcd = start_secured().await;
    let haven = etcd.credentials().expect("secured").haven_security();
    let outside = "/outside/secret";
    let root = |args: &[&str]| {
        etcd.etcdctl(EtcdctlUser::Root, args)
            .expect("etcdctl as root")
    };
    root(&["put", outside, "kept"]);

    let store = EtcdStore::connect(&etcd.endpoints(), &haven)
        .await
        .expect("Haven's credentials are accepted");
    let inside = format!("{HAVEN_PREFIX}probe");
    store
        .txn(vec![], vec![Op::put(&inside, "1")])
        .await
        .expect("Haven writes its prefix");
    assert!(
        store
            .get(&inside)
            .await
            .expect("Haven reads its prefix")
            .is_some()
    );

    let read = store.get(outside).await;
    assert!(
        matches!(read, Err(StoreError::Denied(_))),
        "reading {outside} must be refused, got {read:?}"
    );
    let listed = store.list("/").await;
    assert!(
        matches!(listed, Err(StoreError::Denied(_))),
        "listing every key must be refused, got {listed:?}"
    );
    for op in [
        Op::put(outside, "overwritten"),
        Op::put("/outside/new", "1"),
        Op::Delete(outside.to_string()),
    ] {
        let written = store.txn(vec![], vec![op.clone()]).await;
        assert!(
            matches!(written, Err(StoreError::Denied(_))),
            "{op:?} must be refused, got {written:?}"
        );
    }
    // A transaction reaching outside is refused as a whole.
    let mixed = store
        .txn(
            vec![],
            vec![Op::put(&inside, "2"), Op::put("/outside/new", "1")],
        )
        .await;
    assert!(matches!(mixed, Err(StoreError::Denied(_))), "got {mixed:?}");
    let kept = store
        .get(&inside)
        .await
        .expect("read back")
        .expect("exists");
    assert_eq!(kept.value, b"1", "the refused transaction changed nothing");

    assert_eq!(root(&["get", "--print-value-only", outside]).trim(), "kept");
    assert_eq!(
        root(&["get", "/outside/new"]).trim(),
        "",
        "nothing was created"
    );
}

/// The client certificate rotates without a restart: the store starts with a
/// certificate etcd takes as no user (every read refused), the files are replaced by
/// one named after Haven's user, and reads succeed once the store has followed them.
/// Only a new TLS connection with the new certificate can turn the refusal around.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_without_a_restart() {
    let etcd = start_secured().await;
    let files = etcd.credentials().expect("secured");
    let dir = tempfile::tempdir().expect("temporary directory");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client-key.pem");
    std::fs::copy(&files.client_cert, &cert).expect("copy the certificate");
    std::fs::copy(&files.client_key, &key).expect("copy the key");
    // The certificate is the credential: no user and password.
    let security = EtcdSecurity {
        ca_file: Some(files.ca_file.clone()),
        cert_file: Some(cert.clone()),
        key_file: Some(key.clone()),
        ..EtcdSecurity::default()
    };
    let key_name = format!("{HAVEN_PREFIX}leader");
    let store = std::sync::Arc::new(
        EtcdStore::connect(&etcd.endpoints(), &security)
            .await
            .expect("the certificate passes TLS"),
    );
    store.follow_credentials(&etcd.endpoints(), &security);
    let refused = store.get(&key_name).await;
    assert!(
        matches!(refused, Err(StoreError::Denied(_))),
        "a certificate named after no user must be refused, got {refused:?}"
    );

    // Rotate as cert-manager does: new files renamed over the old ones.
    let staged = tempfile::tempdir_in(dir.path()).expect("staging directory");
    let (new_cert, new_key) = (
        staged.path().join("client.pem"),
        staged.path().join("client-key.pem"),
    );
    files
        .issue_client(HAVEN_USER, &new_cert, &new_key)
        .expect("issue a certificate named after Haven's user");
    std::fs::rename(&new_key, &key).expect("replace the key");
    std::fs::rename(&new_cert, &cert).expect("replace the certificate");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let read = loop {
        match store.get(&key_name).await {
            Err(StoreError::Denied(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => break other,
        }
    };
    assert!(
        read.is_ok(),
        "the rotated certificate must be used by the running store, got {read:?}"
    );
}
