//! Lines: RFC 5321 §2.3.8 says CRLF; like Postfix, a bare LF also ends a line, so a sloppy
//! client is read the way the MTA behind osgate would read it.

/// The longest command or reply line osgate reads, CRLF included. RFC 5321 §4.5.3.1.4 sets 512
/// octets for a command line and lets "SMTP extensions" raise it; 2048 is Postfix's
/// `line_length_limit`, the headroom real extension parameters get.
pub const MAX_LINE: usize = 2048;

/// Where the first line of a buffer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// A complete line of this many bytes, its terminator included.
    Line(usize),
    /// No terminator yet, and the buffer is within [`MAX_LINE`].
    NeedMore,
    /// [`MAX_LINE`] bytes without a terminator (CONFORMANCE E.34: never buffered further).
    TooLong,
}

pub fn scan_line(buf: &[u8]) -> Scan {
    let window = &buf[..buf.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(end) => Scan::Line(end + 1),
        None if buf.len() >= MAX_LINE => Scan::TooLong,
        None => Scan::NeedMore,
    }
}

/// A line without its terminator.
pub(super) fn content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
