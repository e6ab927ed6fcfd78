//! The recorded form of an HTTP body: a JSON string when the bytes are UTF-8 (the usual
//! case, readable in history), else `{"base64": "…"}` (standard alphabet, padded).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr<'a> {
    Text(std::borrow::Cow<'a, str>),
    Binary { base64: String },
}

#[allow(
    clippy::ptr_arg,
    reason = "serde's `with` passes the field as it is declared"
)]
pub(crate) fn serialize<S: Serializer>(body: &Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(body) {
        Ok(text) => Repr::Text(text.into()).serialize(s),
        Err(_) => Repr::Binary {
            base64: encode(body),
        }
        .serialize(s),
    }
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    match Repr::deserialize(d)? {
        Repr::Text(text) => Ok(text.into_owned().into_bytes()),
        Repr::Binary { base64 } => {
            decode(&base64).ok_or_else(|| D::Error::custom("invalid base64 body"))
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                ALPHABET.iter().position(|a| a == c)? as u32
            };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length_and_byte() {
        for len in 0..70 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 200) as u8).collect();
            let text = encode(&bytes);
            assert_eq!(decode(&text), Some(bytes), "length {len}");
        }
        assert_eq!(encode(b"Man"), "TWFu");
        assert_eq!(encode(b"Ma"), "TWE=");
        assert_eq!(encode(b"M"), "TQ==");
        assert_eq!(decode("TQ=="), Some(b"M".to_vec()));
        assert_eq!(decode("T==="), None);
        assert_eq!(decode("TQ*="), None);
        assert_eq!(decode("TQ="), None);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        body: Vec<u8>,
    }

    #[test]
    fn text_bodies_are_strings_and_binary_ones_base64() {
        let text = Holder {
            body: "héllo".as_bytes().to_vec(),
        };
        let json = serde_json::to_string(&text).unwrap();
        assert_eq!(json, r#"{"body":"héllo"}"#);
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), text);

        let binary = Holder {
            body: vec![0xff, 0x00, 0x9f],
        };
        let json = serde_json::to_string(&binary).unwrap();
        assert_eq!(json, r#"{"body":{"base64":"/wCf"}}"#);
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), binary);
        assert!(serde_json::from_str::<Holder>(r#"{"body":{"base64":"%%"}}"#).is_err());
    }
}
