//! Features named in `requires` (see the header of osgate.proto). A node applies a message
//! only if it implements every feature the message requires.

/// The features this build implements.
pub const SUPPORTED: &[&str] = &["policy.v1", "pin.v1", "node-key.v1"];

/// The first feature in `requires` that this build does not implement.
pub fn first_unsupported(requires: &[String]) -> Option<&str> {
    requires
        .iter()
        .map(String::as_str)
        .find(|name| !SUPPORTED.contains(name))
}
