//! `osgatectl get policies -o toml`: the stored policies as a file `osgatectl apply -f`
//! takes back unchanged (the fields of [`super::policy_file`], in its order).

use std::fmt::Write as _;

use osgate_proto::pb;

/// The policy file for `list`.
pub fn render(list: &pb::PolicyList) -> String {
    let mut out = format!(
        "# osgatectl get policies -o toml, at revision {}; `osgatectl apply -f` takes it back.\n",
        list.revision
    );
    for p in &list.policies {
        out.push_str("\n[[policy]]\n");
        field(&mut out, "name", &quote(&p.name));
        field(&mut out, "match", &quote(&p.r#match));
        field(&mut out, "level", &quote(&p.level));
        field(&mut out, "methods", &array(&p.methods));
        field(&mut out, "pins", &array(&p.pins));
        if !p.min_tls.is_empty() {
            field(&mut out, "min_tls", &quote(&p.min_tls));
        }
        if let Some(fallback) = p.allow_cleartext_fallback {
            field(&mut out, "allow_cleartext_fallback", &fallback.to_string());
        }
        field(&mut out, "report_only", &p.report_only.to_string());
        field(&mut out, "requires", &array(&p.requires));
    }
    for i in &list.inbound {
        out.push_str("\n[[inbound]]\n");
        field(&mut out, "name", &quote(&i.name));
        field(&mut out, "listener", &quote(&i.listener));
        field(&mut out, "clients", &array(&i.clients));
        field(&mut out, "requires", &array(&i.requires));
    }
    out
}

fn field(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(out, "{key} = {value}");
}

fn array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A TOML basic string: quote, backslash and control characters escaped (TOML 1.0 §String).
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_field_loads_back_as_it_was() {
        let policy = pb::Policy {
            name: "every-field".into(),
            r#match: "*.example.com".into(),
            level: "authenticate".into(),
            methods: vec!["pinned".into(), "fleet".into()],
            pins: vec!["sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()],
            min_tls: "1.3".into(),
            allow_cleartext_fallback: None,
            report_only: true,
            requires: vec!["policy.v1".into()],
        };
        let fallback = pb::Policy {
            name: "fallback".into(),
            r#match: "10.0.0.0/8".into(),
            level: "opportunistic".into(),
            allow_cleartext_fallback: Some(false),
            requires: vec!["policy.v1".into(), "x-later".into()],
            ..Default::default()
        };
        let inbound = pb::InboundPolicy {
            name: "fleet-only".into(),
            listener: "127.0.0.1:7443".into(),
            clients: vec!["fleet".into()],
            requires: vec!["inbound-clients.v1".into()],
        };
        let list = pb::PolicyList {
            policies: vec![policy.clone(), fallback.clone()],
            revision: 7,
            inbound: vec![inbound.clone()],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, render(&list)).unwrap();
        let loaded = super::super::policy_file::load(&path).unwrap();
        assert_eq!(loaded.policies, vec![policy, fallback]);
        assert_eq!(loaded.inbound, vec![inbound]);
    }

    #[test]
    fn strings_are_escaped_as_toml_basic_strings() {
        let text = "q\"b\\c\u{7f}\n";
        let quoted = quote(text);
        assert_eq!(quoted, "\"q\\\"b\\\\c\\u007F\\n\"");
        let parsed: toml::Value = toml::from_str(&format!("v = {quoted}")).unwrap();
        assert_eq!(parsed["v"].as_str(), Some(text));
    }
}
