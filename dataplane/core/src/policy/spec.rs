//! A rule as written (config file or API message), checked into a [`Rule`]. One function for
//! both, so the control plane accepts exactly what nodes apply.

use super::{Level, Rule, Selector};
use crate::crypto::TlsFloor;
use crate::outcome::Method;
use crate::pin::SpkiPin;

/// A rule's fields as text.
#[derive(Clone, Copy, Debug)]
pub struct RuleSpec<'a> {
    pub selector: &'a str,
    pub level: &'a str,
    pub methods: &'a [String],
    pub pins: &'a [String],
    /// `None` or `""`: the default floor.
    pub min_tls: Option<&'a str>,
    pub allow_cleartext_fallback: Option<bool>,
    pub report_only: bool,
}

/// Which field is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// `match`, `level`, `methods`, `pins`, `min_tls`, or empty for the rule as a whole.
    pub field: &'static str,
    pub reason: String,
}

fn error(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

impl Method {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "dane" => Self::Dane,
            "pinned" => Self::Pinned,
            "fleet" => Self::Fleet,
            "tofu" => Self::Tofu,
            "pkix" => Self::Pkix,
            _ => return None,
        })
    }
}

impl RuleSpec<'_> {
    /// The rule, named `id` in outcome records.
    pub fn build(&self, id: String) -> Result<Rule, SpecError> {
        let selector = Selector::parse(self.selector).map_err(|e| error("match", e.to_string()))?;
        let level = Level::from_name(self.level).ok_or_else(|| {
            error(
                "level",
                format!(
                    "unknown level `{}`; expected opportunistic, encrypt, authenticate, cleartext or deny",
                    self.level
                ),
            )
        })?;
        let methods = self
            .methods
            .iter()
            .map(|m| {
                Method::from_name(m).ok_or_else(|| {
                    error(
                        "methods",
                        format!("unknown method `{m}`; expected dane, pinned, fleet, tofu or pkix"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pins = self
            .pins
            .iter()
            .map(|text| SpkiPin::parse(text).map_err(|e| error("pins", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let floor = self.min_tls.filter(|f| !f.is_empty());
        let min_tls = match floor {
            None | Some("1.2") => TlsFloor::Tls12,
            Some("1.3") => TlsFloor::Tls13,
            Some(other) => return Err(error("min_tls", format!("`{other}` is not 1.2 or 1.3"))),
        };
        let rule = Rule {
            id,
            selector,
            level,
            methods,
            pins,
            min_tls,
            allow_cleartext_fallback: self.allow_cleartext_fallback.unwrap_or(true),
            report_only: self.report_only,
        };
        rule.validate(self.allow_cleartext_fallback.is_some(), floor.is_some())
            .map_err(|e| error("", e.to_string()))?;
        Ok(rule)
    }
}
