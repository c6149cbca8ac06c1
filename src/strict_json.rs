//! JSON parsing that refuses duplicate object keys, at every depth.
//!
//! `serde_json` keeps the last of two equal keys, so `{"name":"get_note","name":"set_note"}`
//! would run `set_note` while a proxy or log that keeps the first saw `get_note`. The edge parses
//! every request body with [`from_slice`] instead, which answers such a body with an error.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` as JSON, refusing an object that names a key twice.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

/// A JSON value built by [`StrictVisitor`].
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {:?} in an object (each key may appear once)",
                    crate::mcp::args::clip(&key)
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        let e = from_slice(br#"{"name":"get_note","name":"set_note"}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"name\""), "{e}");
        assert!(e.is_data());
        let e = from_slice(br#"{"p":{"a":[{"x":1,"y":2,"x":3}]}}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"x\""), "{e}");
        // Escapes that spell the same key are the same key.
        assert!(from_slice(br#"{"a":1,"\u0061":2}"#).is_err());
    }

    #[test]
    fn everything_else_parses_as_serde_json_does() {
        let text = br#"{"a":[1,-2,3.5,true,null,"s",{"b":{}}],"c":18446744073709551615}"#;
        assert_eq!(
            from_slice(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
        assert_eq!(from_slice(b"[]").unwrap(), json!([]));
        assert!(from_slice(b"{").unwrap_err().is_eof());
        assert!(from_slice(b"{,}").unwrap_err().is_syntax());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(
            from_slice(deep.as_bytes()).is_err(),
            "the recursion limit holds"
        );
    }
}
