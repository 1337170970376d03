//! The headers exchange: routes on the message's headers table against each binding's
//! arguments, with `x-match` = `all` (default), `any`, `all-with-x` or `any-with-x`.
//!
//! As in RabbitMQ: binding arguments starting with `x-` are ignored unless the mode ends in
//! `-with-x`; a binding value of type void matches on the presence of the header alone; integers
//! of any width compare by value, as do floats.

use super::{Binding, Destination, Router};
use warren_amqp::{FieldTable, FieldValue};

#[derive(Debug, Default)]
pub struct Headers {
    bindings: Vec<Binding>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    All,
    Any,
}

/// Checks a binding's `x-match` as RabbitMQ does when it binds to a headers exchange: absent, or
/// one of the four known strings. The error is RabbitMQ's text (a 406 PRECONDITION_FAILED).
pub fn validate_binding(args: &FieldTable) -> Result<(), String> {
    let Some(value) = args.get("x-match") else { return Ok(()) };
    match value {
        FieldValue::LongStr(b) => match std::str::from_utf8(b) {
            Ok("all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
            _ => Err(format!(
                "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                String::from_utf8_lossy(b)
            )),
        },
        other => {
            let (kind, shown) = match other {
                FieldValue::Bool(v) => ("bool", v.to_string()),
                FieldValue::I8(v) => ("byte", v.to_string()),
                FieldValue::U8(v) => ("unsignedbyte", v.to_string()),
                FieldValue::I16(v) => ("short", v.to_string()),
                FieldValue::U16(v) => ("unsignedshort", v.to_string()),
                FieldValue::I32(v) => ("signedint", v.to_string()),
                FieldValue::U32(v) => ("unsignedint", v.to_string()),
                FieldValue::I64(v) => ("long", v.to_string()),
                FieldValue::F32(v) => ("float", v.to_string()),
                FieldValue::F64(v) => ("double", v.to_string()),
                FieldValue::Timestamp(v) => ("timestamp", v.to_string()),
                FieldValue::Decimal { .. } => ("decimal", "...".into()),
                FieldValue::Array(_) => ("array", "[...]".into()),
                FieldValue::Table(_) => ("table", "[...]".into()),
                FieldValue::ByteArray(_) => ("binary", "<<...>>".into()),
                FieldValue::Void => ("void", "undefined".into()),
                FieldValue::LongStr(_) => ("longstr", String::new()),
            };
            Err(format!("Invalid x-match field type {kind} (value {shown}); expected longstr"))
        }
    }
}

fn mode(args: &FieldTable) -> (Mode, bool) {
    match args.get("x-match").and_then(FieldValue::as_str) {
        Some("any") => (Mode::Any, false),
        Some("any-with-x") => (Mode::Any, true),
        Some("all-with-x") => (Mode::All, true),
        _ => (Mode::All, false),
    }
}

fn values_match(pattern: &FieldValue, value: &FieldValue) -> bool {
    match (pattern, value) {
        (FieldValue::Void, _) => true,
        (FieldValue::F32(a), FieldValue::F64(b)) | (FieldValue::F64(b), FieldValue::F32(a)) => f64::from(*a) == *b,
        _ => match (pattern.as_i64(), value.as_i64()) {
            (Some(a), Some(b))
                if !matches!(pattern, FieldValue::Timestamp(_)) && !matches!(value, FieldValue::Timestamp(_)) =>
            {
                a == b
            }
            _ => pattern == value,
        },
    }
}

pub fn binding_matches(args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let (mode, with_x) = mode(args);
    let empty = FieldTable::new();
    let headers = headers.unwrap_or(&empty);
    let mut considered = 0;
    let mut matched = 0;
    for (k, pattern) in args.iter() {
        if k.as_str() == "x-match" || (!with_x && k.starts_with("x-")) {
            continue;
        }
        considered += 1;
        if headers.get(k).is_some_and(|v| values_match(pattern, v)) {
            matched += 1;
            if mode == Mode::Any {
                return true;
            }
        } else if mode == Mode::All {
            return false;
        }
    }
    match mode {
        Mode::All => matched == considered,
        // RabbitMQ: `any` with nothing to compare matches nothing.
        Mode::Any => false,
    }
}

impl Router for Headers {
    fn bind(&mut self, b: &Binding) {
        self.bindings.push(b.clone());
    }

    fn unbind(&mut self, b: &Binding) {
        if let Some(pos) = self.bindings.iter().position(|x| x == b) {
            self.bindings.remove(pos);
        }
    }

    fn route(&self, _routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        for b in &self.bindings {
            if binding_matches(&b.arguments, headers) {
                out.push(b.destination.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in entries {
            t.insert(*k, v.clone());
        }
        t
    }

    #[test]
    fn all_and_any() {
        let all = table(&[("format", "pdf".into()), ("type", "report".into())]);
        let any = table(&[("x-match", "any".into()), ("format", "pdf".into()), ("type", "report".into())]);
        let both = table(&[("format", "pdf".into()), ("type", "report".into())]);
        let one = table(&[("format", "pdf".into())]);
        assert!(binding_matches(&all, Some(&both)));
        assert!(!binding_matches(&all, Some(&one)));
        assert!(binding_matches(&any, Some(&one)));
        assert!(!binding_matches(&any, None));
    }

    #[test]
    fn integers_compare_by_value_and_void_means_present() {
        let b = table(&[("n", FieldValue::I32(5)), ("flag", FieldValue::Void)]);
        let h = table(&[("n", FieldValue::I64(5)), ("flag", FieldValue::Bool(false))]);
        assert!(binding_matches(&b, Some(&h)));
        let h2 = table(&[("n", FieldValue::I64(6)), ("flag", FieldValue::Bool(false))]);
        assert!(!binding_matches(&b, Some(&h2)));
    }

    #[test]
    fn x_arguments_only_with_x_modes() {
        let plain = table(&[("x-match", "all".into()), ("x-tag", "1".into())]);
        let with_x = table(&[("x-match", "all-with-x".into()), ("x-tag", "1".into())]);
        let any_with_x = table(&[("x-match", "any-with-x".into()), ("x-tag", "1".into())]);
        let h = table(&[("x-tag", "2".into())]);
        assert!(binding_matches(&plain, Some(&h)), "x- args are ignored under all");
        assert!(!binding_matches(&with_x, Some(&h)));
        assert!(binding_matches(&with_x, Some(&table(&[("x-tag", "1".into())]))));
        assert!(binding_matches(&any_with_x, Some(&table(&[("x-tag", "1".into())]))));
    }
}
