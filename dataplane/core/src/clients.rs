//! Which clients an inbound listener serves (`[[inbound]] clients`), and what a client's
//! certificate proves: the Linkerd authorization-policy idea for any TCP. Listeners always ask
//! for a certificate and never require one at the TLS layer, so a foreign client still
//! completes the handshake and is refused here, with a reason, before a byte reaches the
//! backend.

use crate::outcome::{Method, Reason};
use crate::pin::SpkiPin;

/// The clients a listener serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Clients {
    /// Anyone the listener's TLS or cleartext settings let in.
    #[default]
    Any,
    /// Only registered fleet nodes (`fleet`) and clients presenting one of `pins`.
    Only { fleet: bool, pins: Vec<SpkiPin> },
}

impl Clients {
    /// From the config's or the control plane's list: `any`, `fleet`, `sha256/…` pins.
    /// `any` stands alone: mixed with others it would silently mean everyone.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, String> {
        let mut fleet = false;
        let mut pins = Vec::new();
        for value in values {
            match value.as_ref() {
                "any" if values.len() == 1 => return Ok(Self::Any),
                "any" => return Err("`any` cannot be combined with other clients".into()),
                "fleet" => fleet = true,
                pin => pins.push(SpkiPin::parse(pin).map_err(|e| {
                    format!("`{pin}` is not `any`, `fleet` or a sha256/… pin: {e}")
                })?),
            }
        }
        match (fleet, pins.is_empty()) {
            (false, true) => Err("names no client: give `any`, `fleet` or pins".into()),
            _ => Ok(Self::Only { fleet, pins }),
        }
    }

    /// Whether a client without TLS can be served at all.
    pub fn admits_cleartext(&self) -> bool {
        *self == Self::Any
    }
}

/// A client that proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub method: Method,
    /// The fleet node's name, or the pin.
    pub who: String,
}

/// What `presented` (the key of the client's certificate, if it sent one) earns under
/// `clients`; `node` is the registered fleet node whose key it is. `Ok(None)`: served,
/// not authenticated.
pub fn admit(
    clients: &Clients,
    presented: Option<SpkiPin>,
    node: Option<&str>,
) -> Result<Option<Authenticated>, Reason> {
    let fleet_node = node.map(|name| Authenticated {
        method: Method::Fleet,
        who: name.to_owned(),
    });
    match clients {
        Clients::Any => Ok(fleet_node),
        Clients::Only { fleet, pins } => match (presented, fleet_node) {
            (_, Some(node)) if *fleet => Ok(Some(node)),
            (Some(key), _) if pins.contains(&key) => Ok(Some(Authenticated {
                method: Method::Pinned,
                who: key.to_string(),
            })),
            _ => Err(Reason::ClientNotAuthorized),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(n: u8) -> SpkiPin {
        SpkiPin::of_spki(&[n])
    }

    #[test]
    fn parses_the_three_forms_and_refuses_the_rest() {
        assert_eq!(Clients::parse(&["any"]), Ok(Clients::Any));
        let only = Clients::parse(&["fleet".to_owned(), pin(1).to_string()]);
        assert_eq!(
            only,
            Ok(Clients::Only {
                fleet: true,
                pins: vec![pin(1)]
            })
        );
        for bad in [&["everyone"][..], &[], &["any", "fleet"]] {
            assert!(Clients::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Every listener setting against every client: a client is served under `fleet` or pins
    /// only by proving one of them; `any` serves all, naming fleet nodes.
    #[test]
    fn the_whole_domain() {
        let settings = [
            Clients::Any,
            Clients::Only {
                fleet: true,
                pins: vec![],
            },
            Clients::Only {
                fleet: false,
                pins: vec![pin(1)],
            },
            Clients::Only {
                fleet: true,
                pins: vec![pin(1)],
            },
        ];
        let keys = [None, Some(pin(1)), Some(pin(2)), Some(pin(9))];
        for clients in &settings {
            for key in keys {
                // pin(9) is a registered node's key.
                let node = (key == Some(pin(9))).then_some("n9");
                let got = admit(clients, key, node);
                let (fleet_ok, pins): (bool, &[SpkiPin]) = match clients {
                    Clients::Any => (true, &[]),
                    Clients::Only { fleet, pins } => (*fleet, pins),
                };
                let expected = match () {
                    _ if node.is_some() && fleet_ok => Ok(Some(Method::Fleet)),
                    _ if key.is_some_and(|k| pins.contains(&k)) => Ok(Some(Method::Pinned)),
                    _ if *clients == Clients::Any => Ok(None),
                    _ => Err(Reason::ClientNotAuthorized),
                };
                assert_eq!(
                    got.map(|a| a.map(|a| a.method)),
                    expected,
                    "{clients:?} {key:?}"
                );
            }
        }
    }
}
