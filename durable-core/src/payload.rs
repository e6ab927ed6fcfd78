//! The one rule for decoding payloads that come from outside the typed Rust API.
//!
//! Orchestration inputs, external event data and entity operation inputs can be sent by
//! untyped callers: the HTTP API, and through it the Durable Functions clients, which
//! JSON-encode a payload and then send that text as a JSON *string* (`"[\"Tokyo\"]"` for
//! `["Tokyo"]`, `"5"` for `5`). [`decode_external`] accepts both forms wherever such a
//! payload is decoded into its typed value:
//!
//! 1. the payload is decoded as `T`;
//! 2. only if that fails, and the payload is a JSON string whose text decodes as `T`, that
//!    text is used;
//! 3. otherwise the error of step 1 is returned.
//!
//! A payload that decodes as `T` is therefore never reinterpreted: what typed callers
//! send round-trips exactly, and histories recorded before this rule replay the same
//! (the rule is a pure function of the payload, so replay is deterministic).
//!
//! For `T = String` step 1 always succeeds on a string, so a double-encoded string
//! (`"\"World\""`) would keep its inner quotes here. The HTTP API unwraps that one case at
//! the boundary, where the double encoding happens (see [`crate::http`]); typed Rust
//! callers and orchestration-to-orchestration traffic are not affected by that.

use serde::de::DeserializeOwned;

use crate::error::{PayloadDecodeError, decode};

/// Decodes an orchestration input, event data or entity operation input as `T`,
/// accepting the double-encoded form Durable Functions clients send (see the module
/// docs for the rule).
pub(crate) fn decode_external<T: DeserializeOwned>(text: &str) -> Result<T, PayloadDecodeError> {
    match decode::<T>(text) {
        Ok(value) => Ok(value),
        Err(direct) => string_content(text)
            .and_then(|inner| decode::<T>(&inner).ok())
            .ok_or(direct),
    }
}

/// The text of a payload that is a JSON string; `None` for any other payload.
fn string_content(text: &str) -> Option<String> {
    if !text.trim_start().starts_with('"') {
        return None;
    }
    serde_json::from_str::<String>(text).ok()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Order {
        item: String,
        qty: u32,
    }

    #[test]
    fn payloads_that_decode_are_taken_as_they_are() {
        assert_eq!(decode_external::<u32>("5").unwrap(), 5);
        assert_eq!(decode_external::<String>("\"5\"").unwrap(), "5");
        assert_eq!(
            decode_external::<String>("\"\\\"World\\\"\"").unwrap(),
            "\"World\"",
            "a string is never reinterpreted"
        );
        assert_eq!(
            decode_external::<serde_json::Value>("\"[1]\"").unwrap(),
            serde_json::json!("[1]")
        );
        assert_eq!(
            decode_external::<Option<String>>("\"null\"").unwrap(),
            Some("null".to_owned())
        );
    }

    #[test]
    fn a_json_string_holding_the_typed_value_is_unwrapped() {
        assert_eq!(decode_external::<u32>("\"5\"").unwrap(), 5);
        assert_eq!(decode_external::<u32>(" \"5\" ").unwrap(), 5);
        assert_eq!(
            decode_external::<Vec<String>>("\"[\\\"Tokyo\\\", \\\"Lima\\\"]\"").unwrap(),
            ["Tokyo", "Lima"]
        );
        assert_eq!(
            decode_external::<Order>("\"{\\\"item\\\": \\\"pen\\\", \\\"qty\\\": 2}\"").unwrap(),
            Order {
                item: "pen".into(),
                qty: 2
            }
        );
        decode_external::<()>("\"null\"").unwrap();
        assert_eq!(decode_external::<Option<u32>>("\"null\"").unwrap(), None);
        assert!(decode_external::<bool>("\"true\"").unwrap());
    }

    #[test]
    fn failures_report_the_direct_error() {
        let e = decode_external::<u32>("\"five\"").unwrap_err();
        assert_eq!(e.expected, "u32");
        assert!(e.message.contains("invalid type: string"), "{e}");
        // Only one level is unwrapped.
        assert!(decode_external::<u32>("\"\\\"5\\\"\"").is_err());
        assert!(decode_external::<u32>("{oops").is_err());
        assert!(decode_external::<Order>("\"{}\"").is_err());
    }
}
