//! Configuration of a storage node: a TOML file, with the essentials also
//! available as command-line flags for a quick start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::permission::{AccessKind, Requirement};

/// Default largest object accepted by a single PUT (5 GiB, as on AWS S3).
const DEFAULT_MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Default largest set of request headers (hyper buffer size) in bytes.
const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default largest number of keys in one batch existence query.
const DEFAULT_MAX_EXISTS_KEYS: usize = 100_000;
/// Default largest number of objects in one batch read or write.
const DEFAULT_MAX_BATCH_OBJECTS: usize = 1000;
/// Default time a client has to send its request headers, in seconds.
const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default time a connection may stay open with no request in progress, in seconds.
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Default largest number of open connections.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Everything a storage node needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the S3 endpoint (and `/metrics`) listens on.
    pub listen: SocketAddr,
    /// Directory that holds buckets, objects, uploads and temporary files
    /// (the single-directory form; exclusive with `data_dirs`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Several data directories (typically one per disk); objects are
    /// spread over them by a stable hash of bucket and key. The list is
    /// fixed once the store exists: it may not be reordered, grown or shrunk.
    #[serde(default)]
    pub data_dirs: Vec<PathBuf>,
    /// Region reported to clients and accepted in signatures.
    #[serde(default = "default_region")]
    pub region: String,
    /// Access keys allowed to talk to this node.
    #[serde(default)]
    pub keys: Vec<AccessKeyConfig>,
    /// Optional TLS; without it the node speaks plain HTTP, which only a loopback
    /// `listen` accepts unless `insecure` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP off loopback anyway (logged as a warning at every start):
    /// keys are never sent (requests are signed), but object bytes and names travel
    /// in clear.
    #[serde(default)]
    pub insecure: bool,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Replication between nodes.
    #[serde(default)]
    pub replication: ReplicationConfig,
}

/// What this node may do for replication between nodes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Nodes this one may pull batches from when a client asks
    /// (`?haven-batch-pull=`), as `http(s)://host[:port]`. Empty (the
    /// default): the node connects to nobody, and replication relays the
    /// objects through the client. A pull makes this node connect wherever
    /// the request says, so only listed nodes are reachable that way.
    pub pull_sources: Vec<String>,
    /// PEM file of CA certificates trusted for `https` pull sources, in addition to
    /// the system's: peers inside one organisation usually have certificates of a
    /// private CA.
    pub pull_ca_file: Option<PathBuf>,
}

impl ReplicationConfig {
    /// Whether `url` points at a node in [`ReplicationConfig::pull_sources`]
    /// (same scheme, host and port).
    pub fn allows_source(&self, url: &url::Url) -> bool {
        self.pull_sources
            .iter()
            .filter_map(|source| url::Url::parse(source).ok())
            .any(|source| source.origin() == url.origin())
    }

    /// The certificates of [`ReplicationConfig::pull_ca_file`] (none without one).
    pub fn pull_roots(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        let Some(path) = &self.pull_ca_file else {
            return Ok(Vec::new());
        };
        let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let invalid = |reason: String| {
            ConfigError::Invalid(format!(
                "replication.pull_ca_file {}: {reason}",
                path.display()
            ))
        };
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| invalid(error.to_string()))?;
        if roots.is_empty() {
            return Err(invalid("no PEM certificate in it".to_owned()));
        }
        Ok(roots)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.pull_roots()?;
        for source in &self.pull_sources {
            let parsed = url::Url::parse(source).map_err(|e| {
                ConfigError::Invalid(format!("replication.pull_sources: {source}: {e}"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.path() != "/"
                || parsed.query().is_some()
            {
                return Err(ConfigError::Invalid(format!(
                    "replication.pull_sources: {source} is not http(s)://host[:port]"
                )));
            }
        }
        Ok(())
    }
}

/// One access key with its secret and what it may touch.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyConfig {
    /// The access key id clients put in their signatures.
    #[serde(default)]
    pub access_key: String,
    /// The shared secret used to verify SigV4 signatures.
    #[serde(default)]
    pub secret_key: String,
    /// A file holding `access_key_id` and `secret_access_key` instead of the two
    /// fields above: the same file the worker's `[storage]` names, so a key's secret
    /// lives in one file (a mounted Secret) and never in this configuration.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Buckets this key may use: exact names, `prefix*` patterns or `*`.
    #[serde(default = "default_buckets")]
    pub buckets: Vec<String>,
    /// What the key may do: `read`, `append` (create only: no delete, no
    /// overwrite), `delete` or `admin` (see [`crate::permission`]). Without it
    /// (and without `read_only`) the key keeps the full rights keys had before
    /// kinds existed, so old configuration files work unchanged.
    #[serde(default)]
    pub access: Option<AccessKind>,
    /// The older spelling of `access = "read"`.
    #[serde(default)]
    pub read_only: bool,
    /// Whether the key may set and clear legal holds (no kind implies it).
    #[serde(default)]
    pub legal_hold: bool,
    /// Whether the key may bypass GOVERNANCE-mode retention; COMPLIANCE can
    /// never be bypassed (no kind implies it).
    #[serde(default)]
    pub bypass_governance: bool,
}

impl std::fmt::Debug for AccessKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKeyConfig")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("buckets", &self.buckets)
            .field("access", &self.kind())
            .field("legal_hold", &self.may_set_legal_hold())
            .field("bypass_governance", &self.bypass_governance)
            .finish()
    }
}

impl AccessKeyConfig {
    /// A key of `kind` for every bucket, with no separate grants.
    pub fn new(access_key: String, secret_key: String, kind: AccessKind) -> Self {
        Self {
            access_key,
            secret_key,
            key_file: None,
            buckets: default_buckets(),
            access: Some(kind),
            read_only: false,
            legal_hold: false,
            bypass_governance: false,
        }
    }

    /// Fills `access_key` and `secret_key` from `key_file`, when one is named (and
    /// refuses a key that also sets them: one source for a secret).
    fn read_key_file(&mut self) -> Result<(), ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct KeyFile {
            access_key_id: String,
            secret_access_key: String,
        }
        let Some(path) = &self.key_file else {
            return Ok(());
        };
        if !self.access_key.is_empty() || !self.secret_key.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "a key with key_file {} sets access_key or secret_key too",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        // Only the parser's message: its snippet of the file could show the secret.
        let file: KeyFile = toml::from_str(&text).map_err(|error| {
            ConfigError::Invalid(format!(
                "{} is not a key file (access_key_id and secret_access_key): {}",
                path.display(),
                error.message()
            ))
        })?;
        self.access_key = file.access_key_id;
        self.secret_key = file.secret_access_key;
        Ok(())
    }

    /// The kind of this key: `access`, else `read` for `read_only`, else the
    /// full rights of a key written before kinds existed.
    pub fn kind(&self) -> AccessKind {
        match (self.access, self.read_only) {
            (Some(kind), _) => kind,
            (None, true) => AccessKind::Read,
            (None, false) => AccessKind::Admin,
        }
    }

    /// Whether the key is of the form written before kinds existed (neither
    /// `access` nor `read_only`), which keeps every right it had, legal holds
    /// included.
    fn is_legacy_full_key(&self) -> bool {
        self.access.is_none() && !self.read_only
    }

    /// Whether the key may set or clear a legal hold.
    pub fn may_set_legal_hold(&self) -> bool {
        self.legal_hold || self.is_legacy_full_key()
    }

    /// Whether the key satisfies `requirement`.
    pub fn allows(&self, requirement: Requirement) -> bool {
        match requirement {
            Requirement::Kind(kind) => self.kind() >= kind,
            Requirement::LegalHold => self.may_set_legal_hold(),
        }
    }

    /// Whether this key may use `bucket` at all.
    pub fn allows_bucket(&self, bucket: &str) -> bool {
        self.buckets
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => bucket.starts_with(prefix),
                None => pattern == bucket,
            })
    }
}

/// Certificate and key in PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// Limits that protect the node from oversized requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest object accepted by one PUT or one multipart part.
    pub max_object_size: u64,
    /// Largest request header section; larger requests get HTTP 431.
    pub max_header_bytes: usize,
    /// Largest number of keys in one batch existence query.
    pub max_exists_keys: usize,
    /// Largest number of objects in one batch read or write
    /// (`?haven-batch-get=`, `?haven-batch-put=`).
    pub max_batch_objects: usize,
    /// Seconds a client has to send a request's headers (HTTP/1; also how long
    /// a keep-alive connection may wait for its next request): a client
    /// trickling headers is dropped after it.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in progress (any HTTP
    /// version) before the node closes it.
    pub idle_timeout_secs: u64,
    /// Most connections open at once. When full, a new connection takes the
    /// place of the one idle the longest; only when all are busy does it wait.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_exists_keys: DEFAULT_MAX_EXISTS_KEYS,
            max_batch_objects: DEFAULT_MAX_BATCH_OBJECTS,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_buckets() -> Vec<String> {
    vec!["*".to_owned()]
}

/// Errors while reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file that failed.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A required setting was given neither in the file nor as a flag.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// The settings contradict each other or are unsafe.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        for key in &mut config.keys {
            key.read_key_file()?;
        }
        Ok(config)
    }

    /// The data directories in placement order (`data_dir` or `data_dirs`).
    pub fn directories(&self) -> Vec<PathBuf> {
        self.data_dir
            .iter()
            .chain(self.data_dirs.iter())
            .cloned()
            .collect()
    }

    /// Refuses configurations that would run an open or ambiguous server.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.data_dir, self.data_dirs.is_empty()) {
            (None, true) => return Err(ConfigError::Missing("data_dir or data_dirs")),
            (Some(_), false) => {
                return Err(ConfigError::Invalid(
                    "give either data_dir or data_dirs, not both".to_owned(),
                ));
            }
            _ => {}
        }
        let mut dirs = std::collections::HashSet::new();
        for dir in &self.data_dirs {
            if !dirs.insert(dir) {
                return Err(ConfigError::Invalid(format!(
                    "data directory {} is listed twice",
                    dir.display()
                )));
            }
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.insecure {
            return Err(ConfigError::Invalid(format!(
                "listen = {} is not loopback: add a [tls] table (certificate and key), \
                 or set insecure = true (--insecure) to serve plain HTTP anyway",
                self.listen
            )));
        }
        if self.keys.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one access key is required: the node never serves anonymous requests"
                    .to_owned(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for key in &self.keys {
            if key.access_key.is_empty() || key.secret_key.is_empty() {
                return Err(ConfigError::Invalid(
                    "access and secret keys must not be empty".to_owned(),
                ));
            }
            if key.read_only && key.access.is_some_and(|kind| kind != AccessKind::Read) {
                return Err(ConfigError::Invalid(format!(
                    "access key {}: read_only = true contradicts access = \"{}\"",
                    key.access_key,
                    key.kind().name()
                )));
            }
            if !seen.insert(key.access_key.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "access key {} is listed twice",
                    key.access_key
                )));
            }
        }
        let limits = &self.limits;
        if limits.header_read_timeout_secs == 0
            || limits.idle_timeout_secs == 0
            || limits.max_connections == 0
        {
            return Err(ConfigError::Invalid(
                "limits.header_read_timeout_secs, idle_timeout_secs and max_connections must be positive"
                    .to_owned(),
            ));
        }
        self.replication.validate()
    }

    /// Finds the configuration of one access key.
    pub fn key(&self, access_key: &str) -> Option<&AccessKeyConfig> {
        self.keys.iter().find(|k| k.access_key == access_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_off_loopback_needs_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        let parse = |listen: &str, extra: &str| {
            std::fs::write(
                &config,
                format!(
                    "listen = \"{listen}\"\ndata_dir = \"/srv\"\n{extra}[[keys]]\n\
                     access_key = \"k\"\nsecret_key = \"s3cret-0123\"\n"
                ),
            )
            .unwrap();
            Config::from_file(&config).and_then(|config| {
                config.validate()?;
                Ok(config)
            })
        };
        assert!(parse("127.0.0.1:9000", "").is_ok());
        let refused = parse("0.0.0.0:9000", "").unwrap_err().to_string();
        assert!(refused.contains("not loopback"), "{refused}");
        assert!(parse("0.0.0.0:9000", "insecure = true\n").is_ok());
    }

    #[test]
    fn a_key_file_gives_the_key_and_a_bad_one_is_refused_without_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("append.toml");
        std::fs::write(
            &key,
            "access_key_id = \"backup\"\nsecret_access_key = \"s3cret-0123\"\n",
        )
        .unwrap();
        let config = dir.path().join("node.toml");
        let write = |extra: &str| {
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv\"\n[[keys]]\n\
                     key_file = {key:?}\naccess = \"append\"\n{extra}"
                ),
            )
            .unwrap();
        };
        write("");
        let parsed = Config::from_file(&config).unwrap();
        assert_eq!(parsed.keys[0].access_key, "backup");
        assert_eq!(parsed.keys[0].secret_key, "s3cret-0123");
        assert_eq!(parsed.keys[0].kind(), AccessKind::Append);

        write("secret_key = \"other\"\n");
        assert!(
            Config::from_file(&config).is_err(),
            "two sources of a secret"
        );

        std::fs::write(
            &key,
            "access_key_id = \"backup\"\nsecret = \"s3cret-0123\"\n",
        )
        .unwrap();
        write("");
        let error = Config::from_file(&config).unwrap_err().to_string();
        assert!(error.contains("is not a key file"), "{error}");
        assert!(!error.contains("s3cret-0123"), "{error}");
    }

    #[test]
    fn parses_a_full_file() {
        let text = r#"
            listen = "127.0.0.1:9000"
            data_dir = "/srv/haven"
            [[keys]]
            access_key = "backup"
            secret_key = "s3cret"
            buckets = ["haven-*", "restic"]
            [[keys]]
            access_key = "reader"
            secret_key = "x"
            read_only = true
            [limits]
            max_object_size = 1048576
            [replication]
            pull_sources = ["http://10.0.0.2:9000", "https://dr.example.com"]
        "#;
        let config: Config = toml::from_str(text).expect("valid config");
        config.validate().expect("valid keys");
        let key = config.key("backup").expect("key exists");
        assert!(key.allows_bucket("haven-site1"));
        assert!(key.allows_bucket("restic"));
        assert!(!key.allows_bucket("resticx"));
        assert!(config.key("reader").expect("reader").allows_bucket("any"));
        assert_eq!(config.limits.max_object_size, 1_048_576);
        assert_eq!(config.region, "us-east-1");
        assert_eq!(config.directories(), [PathBuf::from("/srv/haven")]);
        let allows = |url: &str| {
            config
                .replication
                .allows_source(&url::Url::parse(url).expect("url"))
        };
        assert!(allows("http://10.0.0.2:9000/primary?haven-batch-get="));
        assert!(allows("https://dr.example.com:443/b"));
        assert!(!allows("http://10.0.0.2:9001/primary"));
        assert!(!allows("https://10.0.0.2:9000/primary"));
        assert!(!allows("http://dr.example.com/b"));
        assert!(!allows("http://169.254.169.254/latest/meta-data"));
    }

    #[test]
    fn keys_have_kinds_and_old_forms_keep_their_meaning() {
        let text = r#"
            listen = "127.0.0.1:9000"
            data_dir = "/srv/haven"
            [[keys]]
            access_key = "old-full"
            secret_key = "x"
            [[keys]]
            access_key = "old-reader"
            secret_key = "x"
            read_only = true
            [[keys]]
            access_key = "backup"
            secret_key = "x"
            access = "append"
            [[keys]]
            access_key = "prune"
            secret_key = "x"
            access = "delete"
            bypass_governance = true
            [[keys]]
            access_key = "root"
            secret_key = "x"
            access = "admin"
            [[keys]]
            access_key = "holds"
            secret_key = "x"
            access = "read"
            legal_hold = true
        "#;
        let config: Config = toml::from_str(text).expect("valid config");
        config.validate().expect("valid keys");
        let key = |name| config.key(name).expect("key exists");
        let table = [
            ("old-full", AccessKind::Admin, true, false),
            ("old-reader", AccessKind::Read, false, false),
            ("backup", AccessKind::Append, false, false),
            ("prune", AccessKind::Delete, false, true),
            ("root", AccessKind::Admin, false, false),
            ("holds", AccessKind::Read, true, false),
        ];
        for (name, kind, legal_hold, bypass) in table {
            assert_eq!(key(name).kind(), kind, "{name}");
            assert_eq!(key(name).may_set_legal_hold(), legal_hold, "{name}");
            assert_eq!(key(name).bypass_governance, bypass, "{name}");
        }
        assert!(key("backup").allows(Requirement::Kind(AccessKind::Append)));
        assert!(!key("backup").allows(Requirement::Kind(AccessKind::Delete)));
        assert!(!key("backup").allows(Requirement::LegalHold));
    }

    #[test]
    fn read_only_contradicting_access_is_refused() {
        let config: Config = toml::from_str(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/d\"\n[[keys]]\naccess_key = \"a\"\nsecret_key = \"b\"\nread_only = true\naccess = \"append\"\n",
        )
        .expect("parses");
        let error = config.validate().expect_err("contradiction refused");
        assert!(error.to_string().contains("read_only"), "{error}");
        assert!(toml::from_str::<Config>("listen = \"127.0.0.1:1\"\ndata_dir = \"/d\"\n[[keys]]\naccess_key = \"a\"\nsecret_key = \"b\"\naccess = \"write\"\n").is_err());
    }

    #[test]
    fn pull_sources_must_be_plain_node_urls() {
        let parse = |sources: &str| -> Config {
            toml::from_str(&format!(
                "listen = \"127.0.0.1:1\"\ndata_dir = \"/d\"\n[[keys]]\naccess_key = \"a\"\nsecret_key = \"b\"\n[replication]\npull_sources = {sources}\n"
            ))
            .expect("parses")
        };
        parse(r#"["http://127.0.0.1:9000"]"#)
            .validate()
            .expect("a node");
        for bad in [
            r#"["127.0.0.1:9000"]"#,
            r#"["file:///etc"]"#,
            r#"["http://h:1/bucket"]"#,
            r#"["http://h:1/?x=1"]"#,
            r#"["not a url"]"#,
        ] {
            assert!(parse(bad).validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn data_dirs_are_exclusive_with_data_dir_and_distinct() {
        let keys = "[[keys]]\naccess_key = \"a\"\nsecret_key = \"b\"\n";
        let parse = |dirs: &str| -> Config {
            toml::from_str(&format!("listen = \"127.0.0.1:1\"\n{dirs}\n{keys}")).expect("parses")
        };
        let config = parse("data_dirs = [\"/d0\", \"/d1\"]");
        config.validate().expect("two directories");
        assert_eq!(
            config.directories(),
            [PathBuf::from("/d0"), PathBuf::from("/d1")]
        );
        assert!(parse("").validate().is_err());
        assert!(parse("data_dirs = []").validate().is_err());
        assert!(
            parse("data_dir = \"/d\"\ndata_dirs = [\"/d1\"]")
                .validate()
                .is_err()
        );
        assert!(parse("data_dirs = [\"/d\", \"/d\"]").validate().is_err());
    }

    #[test]
    fn refuses_no_keys_and_duplicates() {
        let mut config: Config =
            toml::from_str("listen = \"127.0.0.1:1\"\ndata_dir = \"/x\"").expect("parses");
        assert!(config.data_dirs.is_empty());
        assert!(config.validate().is_err());
        let key = AccessKeyConfig::new("a".into(), "b".into(), AccessKind::Append);
        config.keys = vec![key.clone(), key];
        assert!(config.validate().is_err());
    }
}
