//! One-pass decoding of stored history rows.
//!
//! [`HistoryEvent`]'s derived `Deserialize` (an internally tagged enum, flattened) buffers
//! every field of an event into serde's private `Content` tree before it knows which variant
//! it is, then decodes the variant from that tree: two allocations for most strings, and most
//! of the time of reading a history. [`from_slice`] decodes a row in one pass when its tag
//! comes before the event's own fields, as in every row `serde_json` writes from a
//! [`HistoryEvent`] (`index`, `timestamp`, `eventType`, then the fields). Otherwise, or on any
//! error, it falls back to the derived decoding, which accepts the same documents and gives
//! the same result: the fast path changes nothing but the time taken.
//!
//! The variant's fields are decoded by [`EventFields`], a `#[serde(remote = "Event")]` twin
//! of [`Event`] that is externally tagged. It names every field of every variant (the derive
//! does not compile otherwise) with the same deserialization attributes; a variant missing
//! here would be decoded by the fallback (correct, slower). The tests check every variant.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, VariantAccess, Visitor,
};

use super::{
    CarriedEvent, Event, HistoryEvent, ParentRef, Payload, RuntimeStatus, SourceLocation, millis,
};
use crate::error::FailureDetails;
use crate::ids::{InstanceId, Timestamp};
use crate::trace_context::TraceContext;

/// Decodes one stored [`HistoryEvent`] (JSON), in one pass when its tag comes first.
pub(crate) fn from_slice(bytes: &[u8]) -> serde_json::Result<HistoryEvent> {
    one_pass(bytes).map_or_else(|| serde_json::from_slice(bytes), Ok)
}

/// The one-pass decoding; `None` when the row needs the derived one. The row's UTF-8 is
/// checked once, as a whole, rather than string by string.
fn one_pass(bytes: &[u8]) -> Option<HistoryEvent> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let event = de.deserialize_map(RowVisitor).ok()??;
    de.end().ok().map(|()| event)
}

/// Visits a row: `index` and `timestamp` (anywhere), the tag before any field of the event,
/// then the event's fields. `None` when the row is not in that order (the caller falls back).
struct RowVisitor;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = Option<HistoryEvent>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a history event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut index = None;
        let mut timestamp = None;
        let tag = loop {
            match map.next_key_seed(KeySeed(PhantomData::<de::IgnoredAny>))? {
                None | Some(Key::Field(_)) => return Ok(None),
                Some(Key::Index(_)) => index = Some(map.next_value()?),
                Some(Key::Timestamp(_)) => timestamp = Some(map.next_value()?),
                Some(Key::Tag(_)) => break map.next_value::<Tag<'de>>()?,
            }
        };
        let event = EventFields::deserialize(Tagged {
            tag,
            rest: Rest {
                map: &mut map,
                index: &mut index,
                timestamp: &mut timestamp,
            },
        })?;
        let (Some(index), Some(timestamp)) = (index, timestamp) else {
            return Ok(None);
        };
        Ok(Some(HistoryEvent {
            index,
            timestamp,
            event,
        }))
    }
}

/// A key of a row: one of the row's own (with the seed given back), or a field of the event
/// decoded by the seed.
enum Key<S, V> {
    Index(S),
    Timestamp(S),
    Tag(S),
    Field(V),
}

/// Reads a key; hands it to the seed unless it is `index`, `timestamp` or `eventType`.
struct KeySeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<S> {
    type Value = Key<S, S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor(self.0))
    }
}

struct KeyVisitor<S>(S);

impl<S> KeyVisitor<S> {
    fn row_key<V>(self, key: &str) -> Result<Key<S, V>, Self> {
        match key {
            "index" => Ok(Key::Index(self.0)),
            "timestamp" => Ok(Key::Timestamp(self.0)),
            "eventType" => Ok(Key::Tag(self.0)),
            _ => Err(self),
        }
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for KeyVisitor<S> {
    type Value = Key<S, S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        match self.row_key(v) {
            Ok(key) => Ok(key),
            Err(this) => this
                .0
                .deserialize(de::value::BorrowedStrDeserializer::new(v))
                .map(Key::Field),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match self.row_key(v) {
            Ok(key) => Ok(key),
            Err(this) => this
                .0
                .deserialize(de::value::StrDeserializer::new(v))
                .map(Key::Field),
        }
    }
}

/// The variant name, borrowed from the row when it can be.
struct Tag<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Tag<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TagVisitor;
        impl<'de> Visitor<'de> for TagVisitor {
            type Value = Tag<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event type")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Tag(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Tag(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(TagVisitor)
    }
}

/// The rest of a row after its tag, as the variant's map; `index` and `timestamp` met on
/// the way are taken out.
struct Rest<'a, A> {
    map: &'a mut A,
    index: &'a mut Option<u64>,
    timestamp: &'a mut Option<Timestamp>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rest<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        mut seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.map.next_key_seed(KeySeed(seed))? {
                None => return Ok(None),
                Some(Key::Field(v)) => return Ok(Some(v)),
                Some(Key::Index(s)) => {
                    *self.index = Some(self.map.next_value()?);
                    seed = s;
                }
                Some(Key::Timestamp(s)) => {
                    *self.timestamp = Some(self.map.next_value()?);
                    seed = s;
                }
                Some(Key::Tag(_)) => return Err(de::Error::duplicate_field("eventType")),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// The row as an externally tagged enum: the tag names the variant, the rest is its map.
struct Tagged<'a, 'de, A> {
    tag: Tag<'de>,
    rest: Rest<'a, A>,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Tagged<'_, 'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'a, 'de, A: MapAccess<'de>> EnumAccess<'de> for Tagged<'a, 'de, A> {
    type Error = A::Error;
    type Variant = Rest<'a, A>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let variant = match self.tag.0 {
            Cow::Borrowed(tag) => seed.deserialize(de::value::BorrowedStrDeserializer::new(tag)),
            Cow::Owned(tag) => seed.deserialize(de::value::StringDeserializer::new(tag)),
        }?;
        Ok((variant, self.rest))
    }
}

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Rest<'_, A> {
    type Error = A::Error;

    fn unit_variant(mut self) -> Result<(), A::Error> {
        while self.next_key::<de::IgnoredAny>()?.is_some() {
            self.next_value::<de::IgnoredAny>()?;
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, A::Error> {
        Err(de::Error::custom("history events have no newtype variant"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, A::Error> {
        Err(de::Error::custom("history events have no tuple variant"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }
}

/// [`Event`]'s fields, externally tagged (see the module docs).
#[derive(Deserialize)]
#[serde(remote = "Event")]
pub(super) enum EventFields {
    ExecutionStarted {
        name: String,
        #[serde(default)]
        version: Option<String>,
        input: Payload,
        #[serde(default)]
        parent: Option<ParentRef>,
        #[serde(default)]
        scheduled_start: Option<Timestamp>,
        #[serde(default)]
        carried: Vec<CarriedEvent>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "TraceContext::lenient"
        )]
        trace_context: Option<TraceContext>,
    },
    OrchestratorStarted,
    TaskScheduled {
        seq: u64,
        name: String,
        input: Payload,
        #[serde(default)]
        location: Option<SourceLocation>,
        #[serde(default, with = "millis")]
        timeout: Option<Duration>,
        #[serde(default, with = "millis")]
        heartbeat_timeout: Option<Duration>,
    },
    TaskCompleted {
        seq: u64,
        result: Payload,
    },
    TaskFailed {
        seq: u64,
        failure: FailureDetails,
        #[serde(default)]
        heartbeat: Option<Payload>,
    },
    TimerCreated {
        seq: u64,
        fire_at: Timestamp,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    TimerFired {
        seq: u64,
        fire_at: Timestamp,
    },
    SubOrchestrationCreated {
        seq: u64,
        name: String,
        instance_id: InstanceId,
        input: Payload,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    OrchestrationCreated {
        seq: u64,
        name: String,
        instance_id: InstanceId,
        input: Payload,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        scheduled_start: Option<Timestamp>,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    SubOrchestrationCompleted {
        seq: u64,
        result: Payload,
    },
    SubOrchestrationFailed {
        seq: u64,
        failure: FailureDetails,
    },
    EventRaised {
        name: String,
        input: Payload,
    },
    EventSent {
        seq: u64,
        instance_id: InstanceId,
        name: String,
        input: Payload,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    ContinuedAsNew {
        input: Payload,
        #[serde(default)]
        version: Option<String>,
    },
    ExecutionTerminated {
        #[serde(default)]
        reason: String,
        #[serde(default)]
        child_of: Option<ParentRef>,
    },
    ExecutionSuspended {
        #[serde(default)]
        reason: String,
    },
    ExecutionResumed {
        #[serde(default)]
        reason: String,
    },
    ExecutionRewound {
        #[serde(default)]
        reason: String,
        #[serde(default)]
        seqs: Vec<u64>,
    },
    CustomStatusSet {
        status: Option<Payload>,
    },
    EntityCalled {
        seq: u64,
        entity: InstanceId,
        operation: String,
        input: Payload,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    EntitySignaled {
        seq: u64,
        entity: InstanceId,
        operation: String,
        input: Payload,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    EntityLockRequested {
        seq: u64,
        entities: Vec<InstanceId>,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    EntityUnlockSent {
        seq: u64,
        entities: Vec<InstanceId>,
        #[serde(default)]
        location: Option<SourceLocation>,
    },
    EntityResponded {
        seq: u64,
        #[serde(default)]
        result: Option<Payload>,
        #[serde(default)]
        failure: Option<FailureDetails>,
    },
    EntityLockGranted {
        seq: u64,
        #[serde(default)]
        entities: Vec<InstanceId>,
    },
    EntityOperation {
        operation: String,
        input: Payload,
        #[serde(default)]
        sender: Option<InstanceId>,
        #[serde(default)]
        reply_to: Option<ParentRef>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "TraceContext::lenient"
        )]
        trace_context: Option<TraceContext>,
    },
    EntityLockRequest {
        owner: ParentRef,
        entities: Vec<InstanceId>,
        position: u32,
    },
    EntityUnlock {
        owner: InstanceId,
        #[serde(default)]
        execution: Option<u32>,
    },
    ExecutionCompleted {
        status: RuntimeStatus,
        #[serde(default)]
        output: Option<Payload>,
        #[serde(default)]
        failure: Option<FailureDetails>,
    },
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A number per variant: fails to compile when a variant is added, so that it gets a
    /// sample in [`samples`] below.
    fn variant_number(e: &Event) -> usize {
        match e {
            Event::ExecutionStarted { .. } => 0,
            Event::OrchestratorStarted => 1,
            Event::TaskScheduled { .. } => 2,
            Event::TaskCompleted { .. } => 3,
            Event::TaskFailed { .. } => 4,
            Event::TimerCreated { .. } => 5,
            Event::TimerFired { .. } => 6,
            Event::SubOrchestrationCreated { .. } => 7,
            Event::OrchestrationCreated { .. } => 8,
            Event::SubOrchestrationCompleted { .. } => 9,
            Event::SubOrchestrationFailed { .. } => 10,
            Event::EventRaised { .. } => 11,
            Event::EventSent { .. } => 12,
            Event::ContinuedAsNew { .. } => 13,
            Event::ExecutionTerminated { .. } => 14,
            Event::ExecutionSuspended { .. } => 15,
            Event::ExecutionResumed { .. } => 16,
            Event::ExecutionRewound { .. } => 17,
            Event::CustomStatusSet { .. } => 18,
            Event::EntityCalled { .. } => 19,
            Event::EntitySignaled { .. } => 20,
            Event::EntityLockRequested { .. } => 21,
            Event::EntityUnlockSent { .. } => 22,
            Event::EntityResponded { .. } => 23,
            Event::EntityLockGranted { .. } => 24,
            Event::EntityOperation { .. } => 25,
            Event::EntityLockRequest { .. } => 26,
            Event::EntityUnlock { .. } => 27,
            Event::ExecutionCompleted { .. } => 28,
        }
    }
    const VARIANTS: usize = 29;

    /// Every variant with every optional field set, and again with none set.
    #[allow(clippy::too_many_lines, reason = "one sample per variant")]
    fn samples() -> Vec<Event> {
        let id = |s: &str| InstanceId::new(s).unwrap();
        let loc = || {
            Some(SourceLocation {
                file: "src/lib.rs".into(),
                line: 7,
                column: 9,
            })
        };
        let parent = || ParentRef {
            instance_id: id("parent"),
            execution: 2,
            seq: 3,
        };
        let failure = || {
            let mut f = FailureDetails::new("io", "disk \"full\"\n");
            f.causes = vec!["cause é".into()];
            f.non_retriable = true;
            f.inner = Some(Box::new(FailureDetails::new("inner", "x")));
            f
        };
        let trace = || {
            TraceContext::parse(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                Some("k=v"),
            )
        };
        let payload = || r#"{"text":"a \"quoted\" ünïcode \\ line\n"}"#.to_owned();
        let entity = || InstanceId::new_system("@counter@a").unwrap();
        vec![
            Event::ExecutionStarted {
                name: "Order".into(),
                version: Some("2".into()),
                input: payload(),
                parent: Some(parent()),
                scheduled_start: Some(Timestamp::from_unix_millis(5)),
                carried: vec![CarriedEvent {
                    name: "go".into(),
                    input: "1".into(),
                }],
                trace_context: trace(),
            },
            Event::ExecutionStarted {
                name: "Order".into(),
                version: None,
                input: "null".into(),
                parent: None,
                scheduled_start: None,
                carried: Vec::new(),
                trace_context: None,
            },
            Event::OrchestratorStarted,
            Event::TaskScheduled {
                seq: 1,
                name: "charge".into(),
                input: payload(),
                location: loc(),
                timeout: Some(Duration::from_millis(1500)),
                heartbeat_timeout: Some(Duration::from_secs(3)),
            },
            Event::TaskScheduled {
                seq: 1,
                name: "charge".into(),
                input: "1".into(),
                location: None,
                timeout: None,
                heartbeat_timeout: None,
            },
            Event::TaskCompleted {
                seq: 1,
                result: payload(),
            },
            Event::TaskFailed {
                seq: 1,
                failure: failure(),
                heartbeat: Some("7".into()),
            },
            Event::TaskFailed {
                seq: 1,
                failure: FailureDetails::new("t", "m"),
                heartbeat: None,
            },
            Event::TimerCreated {
                seq: 2,
                fire_at: Timestamp::from_unix_millis(99),
                location: loc(),
            },
            Event::TimerFired {
                seq: 2,
                fire_at: Timestamp::from_unix_millis(99),
            },
            Event::SubOrchestrationCreated {
                seq: 3,
                name: "Child".into(),
                instance_id: id("child"),
                input: payload(),
                version: Some("1".into()),
                location: loc(),
            },
            Event::OrchestrationCreated {
                seq: 4,
                name: "Other".into(),
                instance_id: id("other"),
                input: payload(),
                version: Some("1".into()),
                scheduled_start: Some(Timestamp::from_unix_millis(8)),
                location: loc(),
            },
            Event::SubOrchestrationCompleted {
                seq: 3,
                result: payload(),
            },
            Event::SubOrchestrationFailed {
                seq: 3,
                failure: failure(),
            },
            Event::EventRaised {
                name: "approval".into(),
                input: payload(),
            },
            Event::EventSent {
                seq: 5,
                instance_id: id("peer"),
                name: "ping".into(),
                input: payload(),
                location: loc(),
            },
            Event::ContinuedAsNew {
                input: payload(),
                version: Some("3".into()),
            },
            Event::ExecutionTerminated {
                reason: "stop".into(),
                child_of: Some(parent()),
            },
            Event::ExecutionTerminated {
                reason: String::new(),
                child_of: None,
            },
            Event::ExecutionSuspended {
                reason: "pause".into(),
            },
            Event::ExecutionResumed {
                reason: "go".into(),
            },
            Event::ExecutionRewound {
                reason: "again".into(),
                seqs: vec![1, 2],
            },
            Event::CustomStatusSet {
                status: Some(payload()),
            },
            Event::CustomStatusSet { status: None },
            Event::EntityCalled {
                seq: 6,
                entity: entity(),
                operation: "add".into(),
                input: payload(),
                location: loc(),
            },
            Event::EntitySignaled {
                seq: 7,
                entity: entity(),
                operation: "add".into(),
                input: payload(),
                location: loc(),
            },
            Event::EntityLockRequested {
                seq: 8,
                entities: vec![entity(), InstanceId::new_system("@counter@b").unwrap()],
                location: loc(),
            },
            Event::EntityUnlockSent {
                seq: 9,
                entities: vec![entity()],
                location: loc(),
            },
            Event::EntityResponded {
                seq: 6,
                result: Some(payload()),
                failure: Some(failure()),
            },
            Event::EntityResponded {
                seq: 6,
                result: None,
                failure: None,
            },
            Event::EntityLockGranted {
                seq: 8,
                entities: vec![entity()],
            },
            Event::EntityOperation {
                operation: "add".into(),
                input: payload(),
                sender: Some(id("caller")),
                reply_to: Some(parent()),
                trace_context: trace(),
            },
            Event::EntityLockRequest {
                owner: parent(),
                entities: vec![entity()],
                position: 0,
            },
            Event::EntityUnlock {
                owner: id("owner"),
                execution: Some(1),
            },
            Event::ExecutionCompleted {
                status: RuntimeStatus::Failed,
                output: Some(payload()),
                failure: Some(failure()),
            },
        ]
    }

    #[test]
    fn every_variant_decodes_in_one_pass_as_the_derived_decoding_does() {
        let mut seen = [false; VARIANTS];
        for (i, event) in samples().into_iter().enumerate() {
            seen[variant_number(&event)] = true;
            let row = HistoryEvent {
                index: i as u64,
                timestamp: Timestamp::from_unix_millis(1_700_000_000_000 + i as u64),
                event,
            };
            let bytes = serde_json::to_vec(&row).unwrap();
            let derived: HistoryEvent = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(derived, row);
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(one_pass(&bytes).as_ref(), Some(&row), "one pass: {text}");
            assert_eq!(from_slice(&bytes).unwrap(), row, "{text}");
        }
        assert!(seen.iter().all(|s| *s), "a variant has no sample");
    }

    #[test]
    fn rows_in_another_order_decode_through_the_fallback() {
        let same = |json: &str| {
            let derived: HistoryEvent = serde_json::from_str(json).unwrap();
            assert_eq!(from_slice(json.as_bytes()).unwrap(), derived, "{json}");
            derived
        };
        // The tag after a field: the fallback.
        let e =
            same(r#"{"seq":1,"eventType":"TaskCompleted","result":"2","index":3,"timestamp":4}"#);
        assert!(
            one_pass(
                br#"{"seq":1,"eventType":"TaskCompleted","result":"2","index":3,"timestamp":4}"#
            )
            .is_none()
        );
        assert_eq!(e.index, 3);
        // Index and timestamp after the fields, unknown fields, escaped keys: one pass.
        let json = r#"{"eventType":"TaskCompleted","res\u0075lt":"2","extra":[1,{"a":null}],"seq":1,"timestamp":4,"index":3}"#;
        assert_eq!(one_pass(json.as_bytes()), Some(same(json)));
        // A unit variant with a stray field.
        let json = r#"{"index":0,"timestamp":1,"eventType":"OrchestratorStarted","x":1}"#;
        assert_eq!(one_pass(json.as_bytes()), Some(same(json)));
    }

    #[test]
    fn bad_rows_fail_as_the_derived_decoding_does() {
        for json in [
            r#"{"index":0,"timestamp":1,"eventType":"NoSuchEvent"}"#,
            r#"{"index":0,"timestamp":1,"eventType":"TaskCompleted","seq":1}"#,
            r#"{"timestamp":1,"eventType":"TaskCompleted","seq":1,"result":"1"}"#,
            r#"{"index":0,"timestamp":1,"eventType":"TaskCompleted","seq":1,"result":"1","eventType":"X"}"#,
            r#"{"index":0,"timestamp":1,"eventType":"TaskCompleted","seq":"one","result":"1"}"#,
            r#"{"index":0,"timestamp":1,"eventType":"TaskCompleted","seq":1,"result":"1"} trailing"#,
            r#"{"index":0,"#,
            "[]",
        ] {
            let derived = serde_json::from_str::<HistoryEvent>(json).unwrap_err();
            let ours = from_slice(json.as_bytes()).unwrap_err();
            assert_eq!(ours.to_string(), derived.to_string(), "{json}");
        }
    }
}
