//! Reading tool arguments out of a JSON object with errors that name the field and the rule.
//!
//! Agents are forgiving writers: an integer sent as `"50"` or `50.0` is read as 50, a boolean as
//! `"true"`. Anything else of the wrong type, a missing required field, or an argument the tool
//! does not take is refused with a message an agent can act on.

use serde_json::{Map, Value};

use crate::core::request::LockName;
use crate::core::{CoreError, MAX_TTL_SECONDS};

pub type ArgResult<T> = Result<T, CoreError>;

/// The arguments of one tool call, and the names that tool accepts.
pub struct Args<'a> {
    map: &'a Map<String, Value>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Args<'a> {
    /// Wraps `map`, refusing any argument not in `allowed`.
    pub fn new(map: &'a Map<String, Value>, allowed: &[&str]) -> ArgResult<Self> {
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(CoreError::invalid(
                &clip(unknown),
                format!(
                    "is not an argument of this tool (it takes: {})",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(Args { map })
    }

    fn present(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    pub fn opt_str(&self, field: &str) -> ArgResult<Option<String>> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(CoreError::invalid(
                field,
                format!("must be a string, got {}", type_name(v)),
            )),
        }
    }

    pub fn str(&self, field: &str) -> ArgResult<String> {
        self.opt_str(field)?
            .ok_or_else(|| CoreError::invalid(field, "is required (a string)"))
    }

    pub fn opt_i64(&self, field: &str) -> ArgResult<Option<i64>> {
        let bad = |v: &Value| {
            CoreError::invalid(field, format!("must be an integer, got {}", describe(v)))
        };
        match self.present(field) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    Ok(Some(i))
                } else if let Some(f) = n.as_f64() {
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        Ok(Some(f as i64))
                    } else {
                        Err(bad(v))
                    }
                } else {
                    Err(bad(v))
                }
            }
            Some(v @ Value::String(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| bad(v)),
            Some(v) => Err(bad(v)),
        }
    }

    pub fn i64(&self, field: &str) -> ArgResult<i64> {
        self.opt_i64(field)?
            .ok_or_else(|| CoreError::invalid(field, "is required (an integer)"))
    }

    pub fn opt_bool(&self, field: &str) -> ArgResult<Option<bool>> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(v) => Err(CoreError::invalid(
                field,
                format!("must be true or false, got {}", describe(v)),
            )),
        }
    }

    pub fn str_list(&self, field: &str) -> ArgResult<Vec<String>> {
        match self.present(field) {
            None => Err(CoreError::invalid(
                field,
                "is required (an array of strings)",
            )),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(CoreError::invalid(
                        &format!("{field}[{i}]"),
                        format!("must be a string, got {}", type_name(other)),
                    )),
                })
                .collect(),
            Some(v) => Err(CoreError::invalid(
                field,
                format!("must be an array of strings, got {}", type_name(v)),
            )),
        }
    }

    /// `lock_resources`' names: each a string (exclusive), or an object
    /// `{name, shared?, limit?}`.
    pub fn lock_names(&self, field: &str) -> ArgResult<Vec<LockName>> {
        let items = match self.present(field) {
            None => {
                return Err(CoreError::invalid(
                    field,
                    "is required (an array of strings, or of {name, shared, limit} objects)",
                ))
            }
            Some(Value::Array(items)) => items,
            Some(v) => {
                return Err(CoreError::invalid(
                    field,
                    format!(
                    "must be an array of strings (or of {{name, shared, limit}} objects), got {}",
                    type_name(v)
                ),
                ))
            }
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(LockName::plain(s.clone())),
                Value::Object(m) => {
                    let at = |e: CoreError| match e {
                        CoreError::Invalid { field: f, rule } => CoreError::Invalid {
                            field: format!("{field}[{i}].{f}"),
                            rule,
                        },
                        other => other,
                    };
                    let a = Args::new(m, &["name", "shared", "limit"]).map_err(at)?;
                    Ok(LockName {
                        name: a.str("name").map_err(at)?,
                        shared: a.opt_bool("shared").map_err(at)?,
                        limit: a.opt_i64("limit").map_err(at)?,
                    })
                }
                other => Err(CoreError::invalid(
                    &format!("{field}[{i}]"),
                    format!(
                        "must be a string or a {{name, shared, limit}} object, got {}",
                        type_name(other)
                    ),
                )),
            })
            .collect()
    }

    /// `ttl_seconds`, or the deprecated `ttl_minutes` converted; both at once is an error.
    pub fn ttl_seconds(&self) -> ArgResult<Option<i64>> {
        let seconds = self.opt_i64("ttl_seconds")?;
        let minutes = self.opt_i64("ttl_minutes")?;
        match (seconds, minutes) {
            (Some(_), Some(_)) => Err(CoreError::invalid(
                "ttl_minutes",
                "give ttl_seconds or the deprecated ttl_minutes, not both",
            )),
            (Some(s), None) => Ok(Some(s)),
            (None, Some(m)) => {
                // Checked here so that the error names the field the caller actually sent.
                let max = MAX_TTL_SECONDS / 60;
                if m.checked_mul(60).is_none() {
                    return Err(CoreError::invalid(
                        "ttl_minutes",
                        format!(
                            "is far too large (it must be between 1 and {max} minutes, 30 days)"
                        ),
                    ));
                }
                if !(1..=max).contains(&m) {
                    return Err(CoreError::invalid(
                        "ttl_minutes",
                        format!("must be between 1 and {max} minutes (30 days), got {m}"),
                    ));
                }
                Ok(Some(m * 60))
            }
            (None, None) => Ok(None),
        }
    }
}

/// A caller-chosen name for an error message: at most 64 bytes, so a huge input is never echoed.
pub fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// A short description of a value for an error message, never echoing a long input.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() <= 32 => format!("the string {s:?}"),
        Value::Number(n) => format!("the number {n}"),
        other => type_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn unknown_arguments_are_named() {
        let m = obj(json!({"name": "x", "wait_second": 5}));
        let e = Args::new(&m, &["name", "wait_seconds"]).err().unwrap();
        assert!(e.to_string().starts_with("wait_second: is not an argument"));
    }

    #[test]
    fn long_unknown_names_are_not_echoed() {
        let long = "é".repeat(10_000);
        let m = obj(json!({ long.clone(): 1 }));
        let e = Args::new(&m, &["name"]).err().unwrap().to_string();
        assert!(e.len() < 300, "{} bytes", e.len());
        assert!(e.contains("(20000 bytes)"));
    }

    #[test]
    fn integers_are_read_leniently_but_not_loosely() {
        let m = obj(json!({"a": 5, "b": "7", "c": 3.0, "d": 2.5, "e": "x", "f": true}));
        let a = Args::new(&m, &["a", "b", "c", "d", "e", "f"]).unwrap();
        assert_eq!(a.i64("a").unwrap(), 5);
        assert_eq!(a.i64("b").unwrap(), 7);
        assert_eq!(a.i64("c").unwrap(), 3);
        assert!(a.i64("d").is_err());
        assert!(a.i64("e").is_err());
        assert_eq!(
            a.i64("f").unwrap_err().to_string(),
            "f: must be an integer, got a boolean"
        );
        assert_eq!(
            a.i64("zz").unwrap_err().to_string(),
            "zz: is required (an integer)"
        );
    }

    #[test]
    fn ttl_alias_converts_and_conflicts() {
        let m = obj(json!({"ttl_minutes": 2}));
        assert_eq!(
            Args::new(&m, &["ttl_seconds", "ttl_minutes"])
                .unwrap()
                .ttl_seconds()
                .unwrap(),
            Some(120)
        );
        for bad in [0, -1, 43_201, i64::MAX] {
            let m = obj(json!({ "ttl_minutes": bad }));
            let e = Args::new(&m, &["ttl_seconds", "ttl_minutes"])
                .unwrap()
                .ttl_seconds()
                .unwrap_err();
            let e = e.to_string();
            assert!(e.starts_with("ttl_minutes: ") && e.contains("between 1 and 43200 minutes"));
        }
        let m = obj(json!({"ttl_minutes": 2, "ttl_seconds": 5}));
        assert!(Args::new(&m, &["ttl_seconds", "ttl_minutes"])
            .unwrap()
            .ttl_seconds()
            .is_err());
    }
}
