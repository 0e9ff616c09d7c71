//! Which channel a Kafka record belongs to: its key, a JSON pointer into its payload, or a
//! header, as the stream's `websocket.channel` says. Pure; called once per consumed record.

use eventstream_crds::v1alpha1::ChannelSpec;
use serde_json::Value;

/// The subscription that receives every record.
pub const ALL: &str = "*";

/// Longest channel name a client may use (and a record may derive).
pub const MAX_CHANNEL_LEN: usize = 256;

/// How channels are derived, resolved once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelSource {
    /// The record's key (UTF-8).
    Key,
    /// A JSON pointer into the payload; strings are used as they are, numbers and booleans as
    /// their JSON text; objects, arrays and null give no channel.
    Field(String),
    /// A header's value (UTF-8).
    Header(String),
}

impl ChannelSource {
    /// From the config's channel spec (neither field nor header: the key).
    pub fn from_spec(spec: &ChannelSpec) -> Self {
        match (&spec.field, &spec.header) {
            (Some(field), _) => ChannelSource::Field(field.clone()),
            (None, Some(header)) => ChannelSource::Header(header.clone()),
            (None, None) => ChannelSource::Key,
        }
    }

    /// Whether deriving needs the payload parsed as JSON.
    pub fn needs_json(&self) -> bool {
        matches!(self, ChannelSource::Field(_))
    }

    /// The channel of a record, or `None` when it has none (such records reach only `*`).
    /// `json` is the parsed payload when [`needs_json`](Self::needs_json) and the payload is JSON.
    pub fn derive<'a>(
        &self,
        key: Option<&[u8]>,
        json: Option<&Value>,
        mut header: impl FnMut(&str) -> Option<&'a [u8]>,
    ) -> Option<String> {
        let channel = match self {
            ChannelSource::Key => std::str::from_utf8(key?).ok()?.to_string(),
            ChannelSource::Header(name) => std::str::from_utf8(header(name)?).ok()?.to_string(),
            ChannelSource::Field(pointer) => match json?.pointer(pointer)? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            },
        };
        valid_channel(&channel).then_some(channel)
    }
}

/// Whether `name` can be a channel: 1 to 256 bytes without control characters. `*` is the
/// all-records subscription, never a derived channel.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name != ALL
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_header(_: &str) -> Option<&'static [u8]> {
        None
    }

    #[test]
    fn key_source_uses_utf8_keys() {
        let s = ChannelSource::Key;
        assert_eq!(
            s.derive(Some(b"user-1"), None, no_header),
            Some("user-1".into())
        );
        assert_eq!(s.derive(None, None, no_header), None);
        assert_eq!(s.derive(Some(&[0xff, 0xfe]), None, no_header), None);
        assert_eq!(s.derive(Some(b""), None, no_header), None);
    }

    #[test]
    fn field_source_reads_scalars() {
        let s = ChannelSource::Field("/session/id".into());
        let doc = json!({"session": {"id": "s-9"}});
        assert_eq!(s.derive(None, Some(&doc), no_header), Some("s-9".into()));
        let doc = json!({"session": {"id": 42}});
        assert_eq!(s.derive(None, Some(&doc), no_header), Some("42".into()));
        let doc = json!({"session": {"id": {"nested": 1}}});
        assert_eq!(s.derive(None, Some(&doc), no_header), None);
        assert_eq!(s.derive(None, None, no_header), None);
        assert!(s.needs_json());
    }

    #[test]
    fn header_source_reads_headers() {
        let s = ChannelSource::Header("room".into());
        let got = s.derive(None, None, |name| (name == "room").then_some(&b"lobby"[..]));
        assert_eq!(got, Some("lobby".into()));
        assert_eq!(s.derive(None, None, no_header), None);
    }

    #[test]
    fn star_and_control_characters_are_not_channels() {
        assert!(!valid_channel("*"));
        assert!(!valid_channel("a\nb"));
        assert!(!valid_channel(&"x".repeat(257)));
        assert!(valid_channel("user-*"));
    }

    #[test]
    fn from_spec_prefers_field_then_header_then_key() {
        let spec = ChannelSpec {
            field: Some("/a".into()),
            header: None,
        };
        assert_eq!(
            ChannelSource::from_spec(&spec),
            ChannelSource::Field("/a".into())
        );
        let spec = ChannelSpec {
            field: None,
            header: Some("h".into()),
        };
        assert_eq!(
            ChannelSource::from_spec(&spec),
            ChannelSource::Header("h".into())
        );
        assert_eq!(
            ChannelSource::from_spec(&ChannelSpec::default()),
            ChannelSource::Key
        );
    }
}
