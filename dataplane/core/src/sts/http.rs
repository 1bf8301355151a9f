//! The HTTP/1.1 response to the policy GET, parsed whole (the node reads until the server
//! closes, up to [`RESPONSE_LIMIT`] bytes).
//!
//! RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed"; a policy comes only with status
//! 200 and the media type `text/plain` the RFC requires of it (§3.2).

use super::POLICY_SIZE_LIMIT;
use crate::outcome::Reason;

/// Headers plus the largest policy accepted.
pub const RESPONSE_LIMIT: usize = HEADER_LIMIT + POLICY_SIZE_LIMIT;
const HEADER_LIMIT: usize = 16 * 1024;

/// Why a response carries no policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP {0}: a redirect, not followed (RFC 8461 §3.3)")]
    Redirect(u16),
    #[error("HTTP {0}, not 200")]
    Status(u16),
    #[error("Content-Type `{0}`, not text/plain")]
    ContentType(String),
    #[error("the response is larger than the 64 KiB policy limit")]
    TooLarge,
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The RFC 8460 result type: a policy served wrongly is invalid, no policy is a fetch
    /// error.
    pub fn reason(&self) -> Reason {
        match self {
            Self::ContentType(_) => Reason::StsPolicyInvalid,
            _ => Reason::StsPolicyFetchError,
        }
    }
}

/// The request the node sends: no caching (§3.3: "HTTP caching ... MUST NOT be used"), and
/// the connection closed after the response, which delimits a body without a length.
pub fn request(host: &str) -> String {
    format!(
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: osgate\r\nAccept: text/plain\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )
}

/// The policy body of a complete response (everything the server sent before closing).
pub fn parse_response(data: &[u8]) -> Result<Vec<u8>, HttpError> {
    if data.len() > RESPONSE_LIMIT {
        return Err(HttpError::TooLarge);
    }
    let end = find(data, b"\r\n\r\n").ok_or(HttpError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&data[..end]).map_err(|_| HttpError::Malformed("headers"))?;
    let body = &data[end + 4..];
    let mut lines = head.split("\r\n");
    let status = status(lines.next().unwrap_or_default())?;
    match status {
        200 => {}
        300..=399 => return Err(HttpError::Redirect(status)),
        _ => return Err(HttpError::Status(status)),
    }
    let (mut content_type, mut length, mut chunked) = (None, None, false);
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("a header line without `:`"))?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_owned()),
            "content-length" => {
                let n = value.parse::<usize>();
                length = Some(n.map_err(|_| HttpError::Malformed("Content-Length"))?);
            }
            "transfer-encoding" if value.eq_ignore_ascii_case("chunked") => chunked = true,
            "transfer-encoding" => return Err(HttpError::Malformed("Transfer-Encoding")),
            _ => {}
        }
    }
    let media = content_type.as_deref().unwrap_or_default();
    let media_type = media.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("text/plain") {
        return Err(HttpError::ContentType(media.to_owned()));
    }
    let body = match (chunked, length) {
        (true, _) => dechunk(body)?,
        (false, Some(n)) if n > POLICY_SIZE_LIMIT => return Err(HttpError::TooLarge),
        (false, Some(n)) => body
            .get(..n)
            .ok_or(HttpError::Malformed("body shorter than Content-Length"))?
            .to_vec(),
        (false, None) => body.to_vec(),
    };
    if body.len() > POLICY_SIZE_LIMIT {
        return Err(HttpError::TooLarge);
    }
    Ok(body)
}

/// `HTTP/1.x SP 3DIGIT ...`.
fn status(line: &str) -> Result<u16, HttpError> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .ok_or(HttpError::Malformed("status line"))?;
    let code = rest
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
    let code = code.ok_or(HttpError::Malformed("status code"))?;
    code.parse()
        .map_err(|_| HttpError::Malformed("status code"))
}

/// RFC 9112 §7.1 chunked transfer coding (extensions and trailers skipped).
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or(HttpError::Malformed("chunk size line"))?;
        let line = std::str::from_utf8(&data[..eol]).map_err(|_| HttpError::Malformed("chunk"))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| HttpError::Malformed("chunk"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size > POLICY_SIZE_LIMIT.saturating_sub(out.len()) {
            return Err(HttpError::TooLarge);
        }
        let chunk = data
            .get(..size)
            .ok_or(HttpError::Malformed("short chunk"))?;
        out.extend_from_slice(chunk);
        data = data
            .get(size..)
            .and_then(|d| d.strip_prefix(b"\r\n"))
            .ok_or(HttpError::Malformed("chunk without CRLF"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
