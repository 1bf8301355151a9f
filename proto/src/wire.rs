//! Unknown fields on the protobuf wire (CONFORMANCE G.43).
//!
//! prost drops fields it does not know, so a field a newer control plane added to a Policy,
//! FleetPin, NodeKey or Update would be silently ignored — and the node would apply a rule
//! that means something else than what was sent. Before decoding, the node walks the raw
//! bytes and refuses any field number the message does not define, at any depth, whatever
//! `requires` says. The field numbers come from the descriptor set the build generates
//! alongside the code, so they cannot drift from it.
//!
//! Wire format: <https://protobuf.dev/programming-guides/encoding/>. Each field is a varint
//! key `(number << 3) | wire_type`, then a varint (0), 8 bytes (1), a varint length and
//! that many bytes (2) or 4 bytes (5). Groups (3, 4) are not proto3 and are refused.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::Type;

/// The fully qualified name of `osgate.v1.Update`, the root of every watch message.
pub const UPDATE: &str = "osgate.v1.Update";

/// prost's own nesting limit; the schema is not recursive, so this is never reached by
/// honest input.
const MAX_DEPTH: usize = 100;

/// Why the bytes of a message were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A field number the message does not define.
    Unknown {
        /// Fully qualified message name, e.g. `osgate.v1.Policy`.
        message: String,
        number: u32,
        wire_type: u8,
        /// Where, from the root: field names with the occurrence index of repeated ones.
        path: Vec<(String, usize)>,
    },
    /// Not valid protobuf (truncated, bad varint, a group, an unknown message type).
    Malformed { message: String, reason: String },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown {
                message,
                number,
                wire_type,
                path,
            } => {
                write!(
                    f,
                    "field {number} (wire type {wire_type}) is unknown to {message}"
                )?;
                if !path.is_empty() {
                    write!(f, " at {}", show_path(path))?;
                }
                write!(
                    f,
                    "; this node does not understand it, so it refuses the update"
                )
            }
            Self::Malformed { message, reason } => write!(f, "{message} does not parse: {reason}"),
        }
    }
}

fn show_path(path: &[(String, usize)]) -> String {
    path.iter()
        .map(|(name, i)| format!("{name}[{i}]"))
        .collect::<Vec<_>>()
        .join(".")
}

/// A field: its name, and the message type it holds, if any.
#[derive(Debug)]
struct Field {
    name: String,
    message: Option<String>,
}

/// Field numbers by fully qualified message name.
#[derive(Debug, Default)]
struct Schema {
    messages: HashMap<String, HashMap<u32, Field>>,
}

fn schema() -> Result<&'static Schema, WireError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::from_descriptors(crate::pb::FILE_DESCRIPTOR_SET))
        .as_ref()
        .map_err(|reason| WireError::Malformed {
            message: "the osgate.v1 descriptors".into(),
            reason: reason.clone(),
        })
}

impl Schema {
    fn from_descriptors(bytes: &[u8]) -> Result<Self, String> {
        let set = prost_types::FileDescriptorSet::decode(bytes).map_err(|e| e.to_string())?;
        let mut schema = Schema::default();
        for file in &set.file {
            for message in &file.message_type {
                schema.add(file.package(), message);
            }
        }
        Ok(schema)
    }

    fn add(&mut self, scope: &str, message: &prost_types::DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        let fields = message
            .field
            .iter()
            .filter_map(|f| {
                let number = u32::try_from(f.number()).ok()?;
                let nested = (f.r#type() == Type::Message)
                    .then(|| f.type_name().trim_start_matches('.').to_owned());
                let field = Field {
                    name: f.name().to_owned(),
                    message: nested,
                };
                Some((number, field))
            })
            .collect();
        self.messages.insert(name.clone(), fields);
        for nested in &message.nested_type {
            self.add(&name, nested);
        }
    }
}

/// Checks that `bytes`, encoded as the message `message` (fully qualified), hold only fields
/// the schema defines, recursively.
pub fn check(message: &str, bytes: &[u8]) -> Result<(), WireError> {
    let mut walker = Walker {
        schema: schema()?,
        path: Vec::new(),
    };
    walker.message(message, bytes)
}

struct Walker<'s> {
    schema: &'s Schema,
    path: Vec<(String, usize)>,
}

impl Walker<'_> {
    fn message(&mut self, name: &str, mut bytes: &[u8]) -> Result<(), WireError> {
        let malformed = |reason: &str| WireError::Malformed {
            message: name.to_owned(),
            reason: reason.to_owned(),
        };
        if self.path.len() > MAX_DEPTH {
            return Err(malformed("nested too deeply"));
        }
        let fields = self
            .schema
            .messages
            .get(name)
            .ok_or_else(|| malformed("no such message in osgate.v1"))?;
        let mut seen: HashMap<u32, usize> = HashMap::new();
        while !bytes.is_empty() {
            let key = varint(&mut bytes).ok_or_else(|| malformed("a truncated field key"))?;
            let wire_type = (key & 7) as u8;
            let number = u32::try_from(key >> 3)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| malformed("a field number out of range"))?;
            let Some(field) = fields.get(&number) else {
                return Err(WireError::Unknown {
                    message: name.to_owned(),
                    number,
                    wire_type,
                    path: self.path.clone(),
                });
            };
            let index = seen.entry(number).or_default();
            let occurrence = *index;
            *index += 1;
            match wire_type {
                0 => varint(&mut bytes).map(drop),
                1 => skip(&mut bytes, 8),
                5 => skip(&mut bytes, 4),
                2 => {
                    let body = length_delimited(&mut bytes)
                        .ok_or_else(|| malformed("a truncated length-delimited field"))?;
                    if let Some(nested) = &field.message {
                        self.path.push((field.name.clone(), occurrence));
                        self.message(nested, body)?;
                        self.path.pop();
                    }
                    Some(())
                }
                _ => return Err(malformed(&format!("wire type {wire_type} is not proto3"))),
            }
            .ok_or_else(|| malformed("a truncated field"))?;
        }
        Ok(())
    }
}

/// A base-128 varint of at most 10 bytes.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in 0..10 {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << (shift * 7);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn skip(bytes: &mut &[u8], n: usize) -> Option<()> {
    *bytes = bytes.get(n..)?;
    Some(())
}

fn length_delimited<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(bytes)?).ok()?;
    let body = bytes.get(..len)?;
    *bytes = bytes.get(len..)?;
    Some(body)
}

#[cfg(test)]
mod tests;
