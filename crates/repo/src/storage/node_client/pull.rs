//! Client of the storage node's batch pull (`?haven-batch-pull=`, see
//! `haven_node_protocol::PullRequest`): the target node fetches a batch
//! from the source node itself, with a batch read this client signed, so
//! the objects do not pass through the client.

use haven_node_protocol::{
    BATCH_GET_QUERY, BATCH_PULL_QUERY, PULL_FETCH_TIMEOUT, PullKey, PullOutcome, PullRequest,
};

/// Time a node may take, after its fetch, to write and answer a pull.
const PULL_WRITE_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

use super::{NodeClient, NodeClientError, Payload, check_keys, ok_text};

impl NodeClient {
    /// A batch read of this bucket for another node to send: signed over
    /// its exact body (the source keys of `keys`), so whoever holds it can
    /// read exactly these objects, for as long as the signature is valid
    /// (the node accepts 15 minutes of clock skew).
    pub fn pull_request(&self, keys: Vec<PullKey>) -> Result<PullRequest, NodeClientError> {
        check_keys(
            keys.iter()
                .flat_map(|key| [key.source.as_str(), key.target.as_str()]),
        )?;
        let mut request = PullRequest {
            url: String::new(),
            headers: Vec::new(),
            keys,
        };
        let body = request.source_body();
        let query = format!("{BATCH_GET_QUERY}=");
        let (url, headers) = self.signed_post(&query, Payload::Bytes(body.as_bytes()));
        request.url = url.into();
        request.headers = headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        Ok(request)
    }

    /// Asks this node to fetch `request` from its source and write the
    /// objects into this bucket; one outcome per key, in order. Waits as long
    /// as the node may take: its bounded fetch, then its write.
    pub async fn batch_pull(
        &self,
        request: &PullRequest,
    ) -> Result<Vec<PullOutcome>, NodeClientError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| NodeClientError::Protocol(format!("cannot encode a pull request: {e}")))?;
        let query = format!("{BATCH_PULL_QUERY}=");
        let response = self
            .post(&query, Payload::Bytes(&body))
            .timeout(PULL_FETCH_TIMEOUT + PULL_WRITE_MARGIN)
            .body(body)
            .send()
            .await?;
        let text = ok_text(response).await?;
        let outcomes: Vec<PullOutcome> = serde_json::from_str(&text)
            .map_err(|e| NodeClientError::Protocol(format!("invalid pull answer: {e}")))?;
        if outcomes.len() != request.keys.len() {
            return Err(NodeClientError::Protocol(format!(
                "{} outcomes for {} keys",
                outcomes.len(),
                request.keys.len()
            )));
        }
        Ok(outcomes)
    }

    /// Whether this node pulls batches from `source`: an empty pull, which
    /// makes it read an empty batch from `source`, succeeds. A node that may
    /// not or cannot reach `source` (not in its `replication.pull_sources`,
    /// unreachable from there, an untrusted certificate), or a server
    /// without the extension, answers otherwise and the caller relays the
    /// objects itself; only a node that cannot be reached from here is an
    /// error.
    pub async fn pulls_from(&self, source: &NodeClient) -> Result<bool, NodeClientError> {
        let request = source.pull_request(Vec::new())?;
        match self.batch_pull(&request).await {
            Ok(_) => Ok(true),
            Err(NodeClientError::Transport(error)) => Err(NodeClientError::Transport(error)),
            Err(error) => {
                tracing::info!(%error, "the secondary node does not pull from the primary");
                Ok(false)
            }
        }
    }
}
