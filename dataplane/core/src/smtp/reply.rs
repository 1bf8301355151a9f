//! Replies (RFC 5321 §4.2): `Reply-code "-" text CRLF` lines, then `Reply-code [SP text] CRLF`.

use super::line::{Scan, content, scan_line};

/// The most lines one reply may have: an EHLO reply lists a few dozen extensions at most.
/// Bounds what a hostile server can make osgate buffer (CONFORMANCE E.34).
pub const MAX_REPLY_LINES: usize = 64;

/// One complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of each line, after the code and its separator.
    pub lines: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyScan {
    /// A reply, and how many bytes of the buffer it took.
    Complete(Reply, usize),
    NeedMore,
    /// Not a reply: bad code, codes that differ between lines, too many or too long lines.
    Malformed,
}

pub fn scan_reply(buf: &[u8]) -> ReplyScan {
    let mut lines = Vec::new();
    let mut at = 0;
    let mut code = None;
    loop {
        let len = match scan_line(&buf[at..]) {
            Scan::Line(len) => len,
            Scan::NeedMore => return ReplyScan::NeedMore,
            Scan::TooLong => return ReplyScan::Malformed,
        };
        let line = content(&buf[at..at + len]);
        at += len;
        let Some((this, last, text)) = split(line) else {
            return ReplyScan::Malformed;
        };
        if *code.get_or_insert(this) != this || lines.len() == MAX_REPLY_LINES {
            return ReplyScan::Malformed;
        }
        lines.push(text.to_vec());
        if last {
            return ReplyScan::Complete(Reply { code: this, lines }, at);
        }
    }
}

/// `(code, is_last_line, text)`.
fn split(line: &[u8]) -> Option<(u16, bool, &[u8])> {
    let digits = line.get(..3)?;
    let valid = matches!(digits, [b'2'..=b'5', b'0'..=b'5', b'0'..=b'9']);
    if !valid {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None => Some((code, true, &[])),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Whether an EHLO reply lists `keyword` (RFC 5321 §4.1.1.1: each line after the first is
    /// an extension keyword, then its parameters).
    pub fn lists(&self, keyword: &[u8]) -> bool {
        self.lines
            .iter()
            .skip(1)
            .any(|line| extension(line).eq_ignore_ascii_case(keyword))
    }

    /// This EHLO reply with STARTTLS removed, and added back as the last extension when
    /// `offer` (osgate, not the MTA behind it, does STARTTLS on this leg).
    pub fn with_starttls(&self, offer: bool) -> Reply {
        let mut lines: Vec<Vec<u8>> = self.lines.iter().take(1).cloned().collect();
        let extensions = self.lines.iter().skip(1);
        lines.extend(
            extensions
                .filter(|l| !extension(l).eq_ignore_ascii_case(b"STARTTLS"))
                .cloned(),
        );
        if offer {
            lines.push(b"STARTTLS".to_vec());
        }
        Reply {
            code: self.code,
            lines,
        }
    }

    /// The reply as it goes on the wire, CRLF after every line.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let last = self.lines.len().saturating_sub(1);
        let code = self.code.to_string();
        for (i, text) in self.lines.iter().enumerate() {
            out.extend_from_slice(code.as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        if self.lines.is_empty() {
            out.extend_from_slice(code.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

fn extension(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b' ').next().unwrap_or_default()
}
