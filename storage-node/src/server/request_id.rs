//! Request ids as AWS gives them: every response carries `x-amz-request-id`,
//! and an S3 error body names the same id in `<RequestId>`, so an operator can
//! find a client's failed request in the node's log.

use bytes::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use rand::RngCore;

/// The response header that carries the id.
pub const HEADER: &str = "x-amz-request-id";

/// The end of an S3 error document, before which the id is inserted.
const ERROR_END: &[u8] = b"</Error>";

/// A fresh request id: 16 upper-case hex digits, as AWS's are.
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode_upper(bytes)
}

/// Stamps `id` on a response: the header always, and `<RequestId>` in an
/// S3 error document (a complete XML body with status 400 or more).
pub fn stamp(response: &mut http::Response<s3s::Body>, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(HEADER, value);
    }
    if response.status().as_u16() < 400 {
        return;
    }
    let is_xml = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/xml"));
    if !is_xml {
        return;
    }
    let Some(body) = response.body().bytes() else {
        return;
    };
    let Some(stamped) = with_request_id(&body, id) else {
        return;
    };
    if response.headers().contains_key(CONTENT_LENGTH) {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(stamped.len()));
    }
    *response.body_mut() = s3s::Body::from(stamped);
}

/// An error document with `<RequestId>` added before `</Error>`; `None`
/// when it is not one or already names an id.
fn with_request_id(body: &[u8], id: &str) -> Option<Bytes> {
    if body
        .windows(b"<RequestId>".len())
        .any(|w| w == b"<RequestId>")
    {
        return None;
    }
    let end = body
        .windows(ERROR_END.len())
        .rposition(|window| window == ERROR_END)?;
    let mut out = Vec::with_capacity(body.len() + id.len() + 24);
    out.extend_from_slice(&body[..end]);
    out.extend_from_slice(b"<RequestId>");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"</RequestId>");
    out.extend_from_slice(&body[end..]);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_the_id_into_error_documents_only() {
        let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>";
        let stamped = with_request_id(body, "0123456789ABCDEF").expect("error document");
        assert_eq!(
            std::str::from_utf8(&stamped).expect("utf-8"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>no such key</Message><RequestId>0123456789ABCDEF</RequestId></Error>"
        );
        assert!(with_request_id(&stamped, "FEDCBA9876543210").is_none());
        assert!(with_request_id(b"<ListBucketResult/>", "X").is_none());
    }

    #[test]
    fn ids_look_like_aws_ones() {
        let id = new_id();
        assert_eq!(id.len(), 16);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        );
        assert_ne!(new_id(), id);
    }
}
