//! What a Socket.IO client sends, read into the relay's own terms (pure): the handshake's
//! `auth` (`token`, `resume`) and the arguments of `subscribe`, `unsubscribe` and alias joins.
//!
//! A subscription request is read by [`protocol::parse_json`], the parser of `/ws`, from the
//! same object with `"type": "subscribe"` added: the channel and `since` rules (and any option
//! protocol v1 adds later, such as a filter) are the same on both transports by construction.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::relay::protocol::{
    self, ErrorCode, Positions, ProtocolError, Request, SubscribeOptions,
};

/// The handshake's `auth` object: `{token?, resume?: {channel: {partition: lastSeenOffset}}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handshake {
    /// The JWT (`auth.token`, Socket.IO's convention).
    pub token: Option<String>,
    /// Per channel, the last offset the client has seen per partition: where a join of that
    /// channel resumes when it names no `since` itself.
    pub resume: HashMap<String, Positions>,
}

/// Reads the handshake's `auth`. `None` (no `auth` at all) is an empty handshake; anything
/// else that is not of the documented shape is refused with what is wrong.
pub fn parse_handshake(auth: Option<&Value>) -> Result<Handshake, ProtocolError> {
    let obj = match auth {
        None | Some(Value::Null) => return Ok(Handshake::default()),
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::BadFrame,
                "auth must be an object such as {token, resume}",
            ));
        }
    };
    let token = match obj.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::BadFrame,
                "auth.token must be a string (the JWT, without Bearer)",
            ));
        }
    };
    let mut resume = HashMap::new();
    match obj.get("resume") {
        None | Some(Value::Null) => {}
        Some(Value::Object(channels)) => {
            for (channel, since) in channels {
                let mut frame = Map::new();
                frame.insert("channel".into(), Value::String(channel.clone()));
                frame.insert("since".into(), since.clone());
                let options = subscribe_options(frame)?;
                if let Some(since) = options.since {
                    resume.insert(channel.clone(), since);
                }
            }
        }
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidSince,
                "auth.resume must be an object of channel → {partition: last seen offset}",
            ));
        }
    }
    Ok(Handshake { token, resume })
}

fn subscribe_options(mut frame: Map<String, Value>) -> Result<SubscribeOptions, ProtocolError> {
    frame.insert("type".into(), Value::String("subscribe".into()));
    match protocol::parse_json(&Value::Object(frame).to_string())? {
        Request::Subscribe(options) => Ok(options),
        // parse_json answers a `subscribe` frame with a subscription or an error.
        _ => Err(ProtocolError::new(
            ErrorCode::BadFrame,
            "not a subscription",
        )),
    }
}

/// The argument of `subscribe`: a channel name, or `{channel, since?, …}` as protocol v1's
/// `subscribe` frame without its `type`.
pub fn parse_subscribe(arg: Option<&Value>) -> Result<SubscribeOptions, ProtocolError> {
    match arg {
        Some(Value::String(channel)) => Ok(SubscribeOptions::new(channel.as_str())),
        Some(Value::Object(obj)) => {
            let mut frame = obj.clone();
            frame.remove("type");
            subscribe_options(frame)
        }
        _ => Err(ProtocolError::new(
            ErrorCode::BadFrame,
            "subscribe takes a channel name or {channel, since}",
        )),
    }
}

/// The argument of `unsubscribe`: a channel name or `{channel}`.
pub fn parse_unsubscribe(arg: Option<&Value>) -> Result<String, ProtocolError> {
    match arg {
        Some(Value::String(channel)) => Ok(channel.clone()),
        Some(Value::Object(obj)) => match obj.get("channel") {
            Some(Value::String(channel)) => Ok(channel.clone()),
            _ => Err(ProtocolError::new(
                ErrorCode::BadFrame,
                "unsubscribe takes a channel name or {channel}",
            )),
        },
        _ => Err(ProtocolError::new(
            ErrorCode::BadFrame,
            "unsubscribe takes a channel name or {channel}",
        )),
    }
}

/// The subscription an alias join asks for: the alias's fixed channel (its argument, if any,
/// is the front end's own business and ignored), or the channel its argument names.
pub fn parse_alias_join(
    fixed: Option<&str>,
    arg: Option<&Value>,
) -> Result<SubscribeOptions, ProtocolError> {
    match fixed {
        Some(channel) => Ok(SubscribeOptions::new(channel)),
        None => parse_subscribe(arg),
    }
}

/// The `since` of a subscription: its own, else the handshake's `resume` for its channel.
pub fn with_resume(mut options: SubscribeOptions, handshake: &Handshake) -> SubscribeOptions {
    if options.since.is_none()
        && let Some(since) = handshake.resume.get(&*options.channel)
    {
        options.since = Some(since.clone());
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_handshake_carries_a_token_and_per_channel_resume_positions() {
        let h = parse_handshake(Some(&json!({
            "token": "t", "resume": {"*": {"0": 41, "1": -1}, "car-7": {"2": 3}}
        })))
        .expect("valid");
        assert_eq!(h.token.as_deref(), Some("t"));
        assert_eq!(h.resume["*"], [(0, 41), (1, -1)].into());
        assert_eq!(h.resume["car-7"], [(2, 3)].into());
        assert_eq!(parse_handshake(None).expect("none"), Handshake::default());
        assert_eq!(
            parse_handshake(Some(&json!({}))).expect("empty"),
            Handshake::default()
        );
    }

    #[test]
    fn garbage_in_the_handshake_is_refused_with_its_code() {
        for (auth, code) in [
            (json!("tok"), ErrorCode::BadFrame),
            (json!({"token": 7}), ErrorCode::BadFrame),
            (json!({"resume": [1]}), ErrorCode::InvalidSince),
            (json!({"resume": {"*": {"x": 1}}}), ErrorCode::InvalidSince),
            (json!({"resume": {"*": {"0": -2}}}), ErrorCode::InvalidSince),
            (json!({"resume": {"*": 5}}), ErrorCode::InvalidSince),
        ] {
            let err = parse_handshake(Some(&auth)).expect_err("refused");
            assert_eq!(err.code, code, "{auth}");
        }
    }

    #[test]
    fn subscribe_reads_a_name_or_the_v1_object_and_resume_fills_a_missing_since() {
        assert_eq!(
            parse_subscribe(Some(&json!("a"))).expect("name"),
            SubscribeOptions::new("a")
        );
        let o = parse_subscribe(Some(&json!({"channel": "a", "since": {"0": 4}}))).expect("obj");
        assert_eq!(o, SubscribeOptions::new("a").since([(0, 4)].into()));
        for bad in [None, Some(json!(3)), Some(json!({"since": {}}))] {
            let err = parse_subscribe(bad.as_ref()).expect_err("refused");
            assert_eq!(err.code, ErrorCode::BadFrame);
        }
        let h = Handshake {
            token: None,
            resume: [("a".to_string(), [(0, 9)].into())].into(),
        };
        assert_eq!(
            with_resume(SubscribeOptions::new("a"), &h).since,
            Some([(0, 9)].into())
        );
        // Its own since wins; other channels are untouched.
        let own = SubscribeOptions::new("a").since([(0, 2)].into());
        assert_eq!(with_resume(own.clone(), &h), own);
        assert_eq!(with_resume(SubscribeOptions::new("b"), &h).since, None);
    }

    #[test]
    fn an_alias_joins_its_fixed_channel_or_the_one_its_argument_names() {
        assert_eq!(
            parse_alias_join(Some("*"), None).expect("fixed"),
            SubscribeOptions::new("*")
        );
        assert_eq!(
            parse_alias_join(Some("*"), Some(&json!({"room": "x"}))).expect("fixed"),
            SubscribeOptions::new("*")
        );
        assert_eq!(
            parse_alias_join(None, Some(&json!("car-7"))).expect("arg"),
            SubscribeOptions::new("car-7")
        );
        assert!(parse_alias_join(None, None).is_err());
        assert_eq!(
            parse_unsubscribe(Some(&json!({"channel": "a"}))).expect("ok"),
            "a"
        );
        assert!(parse_unsubscribe(Some(&json!(1))).is_err());
    }
}
