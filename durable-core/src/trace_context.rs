//! W3C trace context stored with durable work, so that an orchestration started inside a
//! traced request continues that request's trace across processes and restarts.
//!
//! A [`TraceContext`] is plain data: the `traceparent` (and optional `tracestate`) of the
//! span that caused a piece of work. It is stored on the start of every execution
//! (`ExecutionStarted`), on every activity task and on every entity operation, whether or
//! not the `opentelemetry` feature is on, so the history format does not depend on
//! features. With the feature, the worker turns it into parents of its spans (see
//! `durable_core::otel`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The W3C trace context (`traceparent` and `tracestate`) of the span that caused a piece
/// of durable work: its parent in a distributed trace.
///
/// Built only from a well-formed `traceparent` ([`parse`](Self::parse)), so every value
/// names a valid trace and span. Stored contexts that are malformed (written by hand, or by
/// something else) read as absent rather than as an error.
///
/// # Examples
///
/// ```
/// use durable_core::TraceContext;
///
/// let tc = TraceContext::parse(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
///     Some("congo=t61rcWkgMzE"),
/// )
/// .unwrap();
/// assert_eq!(tc.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(tc.span_id(), "00f067aa0ba902b7");
/// assert!(tc.is_sampled());
/// assert_eq!(tc.tracestate(), Some("congo=t61rcWkgMzE"));
///
/// // Malformed headers are ignored, never an error.
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
/// assert!(TraceContext::parse("not a traceparent", None).is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawTraceContext")]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`, lower-case hex, validated.
    traceparent: String,
    /// Vendor-specific data, passed along unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
}

/// A trace context as stored, before validation.
#[derive(Deserialize)]
struct RawTraceContext {
    traceparent: String,
    #[serde(default)]
    tracestate: Option<String>,
}

/// Why a stored trace context was refused.
#[derive(Debug)]
struct InvalidTraceContext;

impl fmt::Display for InvalidTraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed W3C traceparent")
    }
}

impl TryFrom<RawTraceContext> for TraceContext {
    type Error = InvalidTraceContext;

    fn try_from(raw: RawTraceContext) -> Result<Self, Self::Error> {
        Self::parse(&raw.traceparent, raw.tracestate.as_deref()).ok_or(InvalidTraceContext)
    }
}

/// The longest `tracestate` passed along (the W3C limit propagators must keep).
const MAX_TRACESTATE: usize = 512;

impl TraceContext {
    /// Parses a W3C `traceparent` header value and an optional `tracestate`.
    ///
    /// `None` when `traceparent` is malformed: not `version-traceid-spanid-flags` in
    /// lower-case hex, version `ff`, an all-zero trace or span id, or a version-00 value
    /// with trailing data. A later version's extra fields are dropped (the value is kept as
    /// version 00, as the W3C spec asks of propagators). A `tracestate` longer than 512
    /// characters or holding non-printable characters is dropped, keeping the
    /// `traceparent`.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent.trim();
        let bytes = tp.as_bytes();
        // ASCII first: the fields below are sliced by byte position.
        if bytes.len() < 55 || !tp.is_ascii() {
            return None;
        }
        let version = &tp[0..2];
        let well_formed = is_hex(version)
            && version != "ff"
            && bytes[2] == b'-'
            && is_hex(&tp[3..35])
            && bytes[35] == b'-'
            && is_hex(&tp[36..52])
            && bytes[52] == b'-'
            && is_hex(&tp[53..55]);
        if !well_formed {
            return None;
        }
        let extra_ok = match bytes.len() {
            55 => true,
            _ => version != "00" && bytes[55] == b'-',
        };
        if !extra_ok || is_zero(&tp[3..35]) || is_zero(&tp[36..52]) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_TRACESTATE
                    && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
            })
            .map(str::to_owned);
        let traceparent = if version == "00" {
            tp.to_owned()
        } else {
            format!("00-{}", &tp[3..55])
        };
        Some(Self {
            traceparent,
            tracestate,
        })
    }

    /// A context naming span `span_id` of trace `trace_id` (raw ids), sampled or not;
    /// `None` if either id is all zeros.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn from_ids(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        sampled: bool,
        tracestate: Option<String>,
    ) -> Option<Self> {
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let mut tp = String::with_capacity(55);
        tp.push_str("00-");
        push_hex(&mut tp, &trace_id);
        tp.push('-');
        push_hex(&mut tp, &span_id);
        tp.push_str(if sampled { "-01" } else { "-00" });
        Some(Self {
            traceparent: tp,
            tracestate,
        })
    }

    /// The `traceparent` value (version 00).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id: 32 lower-case hex digits.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The id of the parent span: 16 lower-case hex digits.
    pub fn span_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// The trace flags byte.
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.traceparent[53..55], 16).unwrap_or(0)
    }

    /// `true` if the caller sampled the trace (flag `01`).
    pub fn is_sampled(&self) -> bool {
        self.flags() & 1 == 1
    }

    /// Deserializes an optional stored context, reading a malformed one as `None`: a bad
    /// trace context never makes history or a task unreadable.
    pub(crate) fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        Ok(Option::<RawTraceContext>::deserialize(d)?
            .and_then(|raw| Self::parse(&raw.traceparent, raw.tracestate.as_deref())))
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent)
    }
}

/// Appends `bytes` as lower-case hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example() {
        let tc = TraceContext::parse(TP, None).unwrap();
        assert_eq!(tc.traceparent(), TP);
        assert_eq!(tc.flags(), 1);
        assert_eq!(tc.tracestate(), None);
        let unsampled = TraceContext::parse(&TP.replace("-01", "-00"), None).unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "00",
            &TP[..54],
            &TP.to_uppercase(),
            &TP.replace("00-4bf", "ff-4bf"),
            &TP.replace('-', "_"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            &format!("{TP}-extra"),
            &format!("{TP}x"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
            "\u{e9}\u{e9}-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b70-1",
            // A multi-byte character across a field boundary.
            "00-4bf92f3577b34da6a3ce929d0e0e473\u{e9}-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_keep_the_known_fields() {
        let tc = TraceContext::parse(&format!("01{}-future", &TP[2..]), None).unwrap();
        assert_eq!(tc.traceparent(), TP);
    }

    #[test]
    fn tracestate_is_kept_when_sane() {
        let tc = TraceContext::parse(TP, Some(" rojo=00f067aa0ba902b7 ")).unwrap();
        assert_eq!(tc.tracestate(), Some("rojo=00f067aa0ba902b7"));
        let long = "a=".to_owned() + &"b".repeat(600);
        assert_eq!(
            TraceContext::parse(TP, Some(&long)).unwrap().tracestate(),
            None
        );
        assert_eq!(
            TraceContext::parse(TP, Some("a=b\nc=d"))
                .unwrap()
                .tracestate(),
            None
        );
    }

    #[test]
    fn builds_from_ids() {
        let tc = TraceContext::from_ids([0xab; 16], [0x01; 8], false, Some("k=v".into())).unwrap();
        assert_eq!(
            tc.traceparent(),
            "00-abababababababababababababababab-0101010101010101-00"
        );
        assert_eq!(tc.tracestate(), Some("k=v"));
        assert!(TraceContext::from_ids([0; 16], [1; 8], true, None).is_none());
    }

    #[test]
    fn malformed_stored_contexts_read_as_absent() {
        #[derive(serde::Deserialize)]
        struct Holder {
            #[serde(default, deserialize_with = "TraceContext::lenient")]
            tc: Option<TraceContext>,
        }
        let ok: Holder =
            serde_json::from_str(&format!(r#"{{"tc": {{"traceparent": "{TP}"}}}}"#)).unwrap();
        assert_eq!(ok.tc.unwrap().traceparent(), TP);
        let bad: Holder = serde_json::from_str(r#"{"tc": {"traceparent": "junk"}}"#).unwrap();
        assert!(bad.tc.is_none());
        let missing: Holder = serde_json::from_str("{}").unwrap();
        assert!(missing.tc.is_none());
        assert!(serde_json::from_str::<TraceContext>(r#"{"traceparent": "junk"}"#).is_err());
    }
}
