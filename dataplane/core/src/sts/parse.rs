//! The two MTA-STS texts: the `_mta-sts` TXT record (RFC 8461 §3.1) and the policy file
//! (§3.2). Both grammars are case-sensitive (`%s"..."` in the ABNF).

use super::{MAX_AGE_LIMIT, Mode, POLICY_SIZE_LIMIT, PolicyBody, Txt};

/// Why a policy file was rejected (RFC 8460 `sts-policy-invalid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("larger than 64 KiB")]
    TooLarge,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("malformed line: {0}")]
    Syntax(&'static str),
    #[error("bad {0} value")]
    BadValue(&'static str),
    #[error("two {0} fields")]
    Duplicate(&'static str),
    #[error("no {0}")]
    Missing(&'static str),
}

/// The verdict on the TXT records at `_mta-sts.<domain>`, each one's strings concatenated
/// ("the record MUST be treated as if those strings are concatenated without adding spaces").
///
/// §3.1: "records that do not begin with "v=STSv1;" are discarded. If the number of resulting
/// records is not one, or if the resulting record is syntactically invalid, senders MUST
/// assume the recipient domain does not have an available MTA-STS Policy".
pub fn parse_txt(records: &[String]) -> Txt {
    let mut sts = records.iter().filter(|r| is_sts_record(r));
    match (sts.next(), sts.next()) {
        (Some(record), None) => record_id(record).map_or(Txt::Absent, Txt::Id),
        _ => Txt::Absent,
    }
}

/// `v=STSv1` then the field delimiter (`*WSP ";"`).
fn is_sts_record(record: &str) -> bool {
    record
        .strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.trim_start_matches(is_wsp).starts_with(';'))
}

/// `sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]`, with
/// exactly one `sts-id`; other fields are extensions, checked and ignored.
fn record_id(record: &str) -> Option<String> {
    let mut fields = record.split(';');
    fields.next()?; // the version, checked by `is_sts_record`
    let fields: Vec<&str> = fields.map(|f| f.trim_matches(is_wsp)).collect();
    let (last, body) = fields.split_last()?;
    let body = if last.is_empty() { body } else { &fields[..] };
    if body.is_empty() {
        return None;
    }
    let mut id = None;
    for field in body {
        let (name, value) = field.split_once('=')?;
        if !is_ext_name(name) || !value.bytes().all(is_ext_value_byte) || value.is_empty() {
            return None;
        }
        if name == "id" {
            // A second id leaves the policy instance ambiguous: no policy.
            if id.replace(txt_id(value)?).is_some() {
                return None;
            }
        }
    }
    id
}

/// `sts-id = %s"id=" 1*32(ALPHA / DIGIT)`.
pub(super) fn txt_id(value: &str) -> Option<String> {
    let ok = (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| value.to_owned())
}

/// `(ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`, shared by both grammars.
fn is_ext_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `%x21-3A / %x3C / %x3E-7E`: visible ASCII but `;` and `=`.
fn is_ext_value_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e)
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The policy file (§3.2): "CRLF-separated key/value pairs"; the ABNF's `sts-policy-term` is
/// LF or CRLF. Fields not defined by the RFC are ignored ("unknown fields SHOULD be ignored");
/// blank lines are tolerated. `version`, `mode` and `max_age` appear exactly once; `mx` at
/// least once unless the mode is `none`. `max_age` above one year is capped to a year.
pub fn parse_policy(body: &[u8]) -> Result<PolicyBody, PolicyError> {
    if body.len() > POLICY_SIZE_LIMIT {
        return Err(PolicyError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotUtf8)?;
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_matches(is_wsp).is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(PolicyError::Syntax("no `:`"))?;
        let value = value.trim_matches(is_wsp);
        if !is_ext_name(name) {
            return Err(PolicyError::Syntax("a field name"));
        }
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(PolicyError::Syntax("an empty value or a control character"));
        }
        match name {
            "version" => once(&mut version, (value == "STSv1").then_some(()), "version")?,
            "mode" => once(&mut mode, mode_of(value), "mode")?,
            "max_age" => once(&mut max_age, max_age_of(value), "max_age")?,
            "mx" => mx.push(mx_pattern(value).ok_or(PolicyError::BadValue("mx"))?),
            _ => {}
        }
    }
    version.ok_or(PolicyError::Missing("version"))?;
    let mode = mode.ok_or(PolicyError::Missing("mode"))?;
    let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(PolicyError::Missing("mx"));
    }
    Ok(PolicyBody { mode, mx, max_age })
}

/// Sets a field that may appear once; `value` is `None` when it did not parse.
fn once<T>(slot: &mut Option<T>, value: Option<T>, name: &'static str) -> Result<(), PolicyError> {
    let value = value.ok_or(PolicyError::BadValue(name))?;
    match slot.replace(value) {
        Some(_) => Err(PolicyError::Duplicate(name)),
        None => Ok(()),
    }
}

fn mode_of(value: &str) -> Option<Mode> {
    match value {
        "enforce" => Some(Mode::Enforce),
        "testing" => Some(Mode::Testing),
        "none" => Some(Mode::None),
        _ => None,
    }
}

/// `sts-policy-max-age-value = 1*10(DIGIT)`, capped at [`MAX_AGE_LIMIT`].
fn max_age_of(value: &str) -> Option<u64> {
    let ok = (1..=10).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| value.parse::<u64>().ok())
        .flatten()
        .map(|n| n.min(MAX_AGE_LIMIT))
}

/// `sts-policy-mx-value = ["*."] Domain` (RFC 5321 `Domain`: letters, digits, inner
/// hyphens, labels of 1 to 63), lower-cased.
fn mx_pattern(value: &str) -> Option<String> {
    let domain = value.strip_prefix("*.").unwrap_or(value);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (domain.len() <= 253 && domain.split('.').all(label_ok)).then(|| value.to_ascii_lowercase())
}
