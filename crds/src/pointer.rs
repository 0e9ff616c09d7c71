//! JSON pointers (RFC 6901) as the API uses them to name fields: `/userId`, `/device/id`.

/// Why a JSON pointer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// The pointer does not start with `/` (the empty pointer names the whole document).
    #[error("{0:?} is not a JSON pointer to a field: it must start with '/', e.g. /userId")]
    NoLeadingSlash(String),
    /// A `~` not followed by `0` or `1`.
    #[error("{0:?} has an invalid escape: '~' must be followed by 0 ('~') or 1 ('/')")]
    BadEscape(String),
}

/// Checks that `text` is a non-empty JSON pointer.
pub fn check(text: &str) -> Result<(), PointerError> {
    if !text.starts_with('/') {
        return Err(PointerError::NoLeadingSlash(text.to_string()));
    }
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0') | Some('1')) {
            return Err(PointerError::BadEscape(text.to_string()));
        }
    }
    Ok(())
}

/// Turns a required-field entry into a pointer: `eventType` → `/eventType`, pointers unchanged.
pub fn field_to_pointer(field: &str) -> String {
    if field.starts_with('/') {
        field.to_string()
    } else {
        format!("/{}", field.replace('~', "~0").replace('/', "~1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_field_pointers() {
        for ok in ["/a", "/userId", "/a/b/0", "/a~1b", "/m~0n", "/"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_non_pointers() {
        assert!(matches!(check(""), Err(PointerError::NoLeadingSlash(_))));
        assert!(matches!(
            check("userId"),
            Err(PointerError::NoLeadingSlash(_))
        ));
        assert!(matches!(check("/a~2"), Err(PointerError::BadEscape(_))));
        assert!(matches!(check("/a~"), Err(PointerError::BadEscape(_))));
    }

    #[test]
    fn names_become_pointers() {
        assert_eq!(field_to_pointer("eventType"), "/eventType");
        assert_eq!(field_to_pointer("/device/id"), "/device/id");
        assert_eq!(field_to_pointer("a/b"), "/a~1b");
    }
}
