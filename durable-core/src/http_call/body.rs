//! The recorded form of an HTTP body: a JSON string when the bytes are UTF-8 (the usual
//! case, readable in history), else `{"base64": "…"}` (standard alphabet, padded).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
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

fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bodies_use_the_padded_standard_alphabet() {
        assert_eq!(encode(b"Ma"), "TWE=");
        assert_eq!(decode("TWE="), Some(b"Ma".to_vec()));
        assert_eq!(decode("TWE"), None, "unpadded text is rejected");
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
