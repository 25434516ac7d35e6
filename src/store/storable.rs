//! What PostgreSQL cannot hold, made storable before it is written: a NUL
//! (`\u0000` in JSON, a raw 0x00 in text) is refused by `text` and `jsonb`
//! alike, so it becomes U+FFFD. Everything else is kept as it came, so a
//! stored payload is still the provider's own.

use std::borrow::Cow;

const REPLACEMENT: char = '\u{FFFD}';

/// `text` with every NUL replaced; borrowed when there is none (the rule).
pub fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// An owned string made storable in place.
pub fn string(value: &mut String) {
    if value.contains('\0') {
        *value = value.replace('\0', &REPLACEMENT.to_string());
    }
}

/// A JSON document with NULs replaced in every string and every key.
pub fn json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(json),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(map);
                for (mut key, mut item) in entries {
                    string(&mut key);
                    json(&mut item);
                    map.insert(key, item);
                }
            } else {
                map.values_mut().for_each(json);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_becomes_the_replacement_character_everywhere_and_nothing_else_changes() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
        let mut doc: serde_json::Value = serde_json::from_str(
            r#"{"type":"email.bounced","data":{"bounce":{"message":"550 \u0000 user\u0000"},"k\u0000":[1,"x\u0000",{"y":"\u0000"}],"n":1e308,"big":9223372036854775808}}"#,
        )
        .unwrap();
        json(&mut doc);
        let text = doc.to_string();
        assert!(!text.contains("\\u0000"), "{text}");
        assert_eq!(
            doc["data"]["bounce"]["message"],
            "550 \u{FFFD} user\u{FFFD}"
        );
        assert_eq!(doc["data"]["k\u{FFFD}"][1], "x\u{FFFD}");
        assert_eq!(doc["data"]["k\u{FFFD}"][2]["y"], "\u{FFFD}");
        assert_eq!(doc["data"]["n"], 1e308);
        assert_eq!(doc["data"]["big"], 9223372036854775808u64);
        assert_eq!(doc["type"], "email.bounced");
    }
}
