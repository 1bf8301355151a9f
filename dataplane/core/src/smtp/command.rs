//! Command verbs (RFC 5321 §4.1.1): case-insensitive, the first word of the line.

use super::line::content;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Ehlo,
    Helo,
    Starttls,
    Mail,
    Rcpt,
    Data,
    /// RFC 3030 CHUNKING.
    Bdat,
    Rset,
    Noop,
    Quit,
    /// RFC 4954: credentials, which must never cross before TLS when TLS is required.
    Auth,
    Vrfy,
    Expn,
    Other,
}

impl Verb {
    /// Commands that carry mail, credentials or address data: refused before TLS by a listener
    /// that requires it (RFC 3207 §4: `530 5.7.0 Must issue a STARTTLS command first`).
    pub fn needs_tls_when_required(self) -> bool {
        matches!(
            self,
            Self::Mail
                | Self::Rcpt
                | Self::Data
                | Self::Bdat
                | Self::Auth
                | Self::Vrfy
                | Self::Expn
        )
    }

    /// Commands that need a session opened by EHLO/HELO (RFC 5321 §4.1.4).
    pub fn needs_hello(self) -> bool {
        matches!(
            self,
            Self::Mail | Self::Rcpt | Self::Data | Self::Bdat | Self::Auth
        )
    }
}

pub fn verb(line: &[u8]) -> Verb {
    let line = content(line);
    let word = line.split(|&b| b == b' ').next().unwrap_or_default();
    const VERBS: [(&[u8], Verb); 13] = [
        (b"EHLO", Verb::Ehlo),
        (b"HELO", Verb::Helo),
        (b"STARTTLS", Verb::Starttls),
        (b"MAIL", Verb::Mail),
        (b"RCPT", Verb::Rcpt),
        (b"DATA", Verb::Data),
        (b"BDAT", Verb::Bdat),
        (b"RSET", Verb::Rset),
        (b"NOOP", Verb::Noop),
        (b"QUIT", Verb::Quit),
        (b"AUTH", Verb::Auth),
        (b"VRFY", Verb::Vrfy),
        (b"EXPN", Verb::Expn),
    ];
    VERBS
        .iter()
        .find(|(name, _)| word.eq_ignore_ascii_case(name))
        .map_or(Verb::Other, |(_, verb)| *verb)
}
