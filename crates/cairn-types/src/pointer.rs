//! JSON pointers (RFC 6901) looked up without allocating. `serde_json`'s
//! [`Value::pointer`] unescapes every token into a new string; the pointers cairn
//! follows on every event read (personal fields, their people) rarely hold an escape,
//! so a token without `~` is compared as it is.

use serde_json::Value;

/// `value.pointer(pointer)`, without allocating when `pointer` holds no `~`.
pub fn pointer<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.contains('~') {
        return value.pointer(pointer);
    }
    if pointer.is_empty() {
        return Some(value);
    }
    let mut target = value;
    for token in pointer.strip_prefix('/')?.split('/') {
        target = match target {
            Value::Object(map) => map.get(token)?,
            Value::Array(items) => items.get(index(token)?)?,
            _ => return None,
        };
    }
    Some(target)
}

/// `value.pointer_mut(pointer)`, without allocating when `pointer` holds no `~`.
pub fn pointer_mut<'a>(value: &'a mut Value, pointer: &str) -> Option<&'a mut Value> {
    if pointer.contains('~') {
        return value.pointer_mut(pointer);
    }
    if pointer.is_empty() {
        return Some(value);
    }
    let mut target = value;
    for token in pointer.strip_prefix('/')?.split('/') {
        target = match target {
            Value::Object(map) => map.get_mut(token)?,
            Value::Array(items) => items.get_mut(index(token)?)?,
            _ => return None,
        };
    }
    Some(target)
}

/// An array index as RFC 6901 writes it: digits, no sign, no leading zero.
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_what_serde_json_finds() {
        let mut value = json!({
            "a": {"b": [10, {"c": "deep"}]},
            "a/b": 1,
            "m~n": 2,
            "": 3,
            "07": 4
        });
        for p in [
            "",
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1/c",
            "/a/b/2",
            "/a/b/01",
            "/a/b/+1",
            "/a/b/x",
            "/a~1b",
            "/m~0n",
            "/",
            "/07",
            "/a/b/1/c/d",
            "a",
            "/missing",
        ] {
            assert_eq!(pointer(&value, p), value.pointer(p), "{p:?}");
            let expected = value.pointer(p).cloned();
            assert_eq!(
                pointer_mut(&mut value, p).map(|v| v.clone()),
                expected,
                "{p:?}"
            );
        }
        if let Some(c) = pointer_mut(&mut value, "/a/b/1/c") {
            *c = json!("changed");
        }
        assert_eq!(value["a"]["b"][1]["c"], "changed");
    }
}
