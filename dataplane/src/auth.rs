//! JWT verification shared by HTTP ingest and the WebSocket/SSE side.
//!
//! [`JwtVerifier`] is built once at start-up from the stream's [`AuthConfig`] and the key in
//! `EVENTSTREAM_JWT_KEY` (an HS256 secret, or an RS256 public key in PEM). It accepts tokens
//! signed with *the configured algorithm only*: `alg: none`, and an HS256 token signed with the
//! RS256 public key as HMAC secret (algorithm confusion), are refused before any signature check.
//! `exp` is required; `exp` and `nbf` are checked with [`LEEWAY_SECS`] of clock skew; `iss` and
//! `aud` are checked when configured.
//!
//! What a token allows is read from two configurable claims into [`Claims`]: the channel globs
//! (a list of strings, or one string) and the publish flag (`true` only). [`glob_match`] is the
//! pure matcher for those globs (`*` any run of characters, `?` exactly one).

use eventstream_crds::config::AuthConfig;
use eventstream_crds::v1alpha1::JwtAlgorithm;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// Channel globs from the configured channels claim (empty when the claim is absent).
    pub channels: Vec<String>,
    /// The configured publish claim is the JSON value `true`.
    pub publish: bool,
    /// `exp`, in seconds since the Unix epoch (always set on a verified token: it is
    /// required). A connection admitted with the token ends [`LEEWAY_SECS`] after it, when the
    /// token stops verifying, unless the client presents a newer one.
    pub expires_at: Option<i64>,
}

impl Claims {
    /// Whether any of the token's channel globs matches `channel`.
    pub fn allows_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| glob_match(p, channel))
    }
}

/// Why a token (or the verifier's key) was refused. The `Display` text is safe to send to the
/// client: it never contains the token or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The key in the environment cannot be used for the configured algorithm.
    #[error("the JWT key in EVENTSTREAM_JWT_KEY is not usable for {algorithm}: {reason}")]
    Key {
        /// `HS256` or `RS256`.
        algorithm: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No token was presented.
    #[error("a bearer token is required")]
    Missing,
    /// The token is not a well-formed JWT (including `alg: none`, which is not an algorithm we
    /// know).
    #[error("the token is malformed")]
    Malformed,
    /// The token is signed with another algorithm than the configured one.
    #[error("the token's algorithm is not accepted")]
    WrongAlgorithm,
    /// The signature does not verify with the configured key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is in the past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("the token's audience is not accepted")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`) is absent.
    #[error("the token lacks the required claim {0}")]
    MissingClaim(String),
    /// Anything else jsonwebtoken refuses.
    #[error("the token is invalid")]
    Invalid,
}

/// Verifies bearer tokens against one stream's auth config; cheap to share (`Arc`) or clone.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    channels_claim: String,
    publish_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("channels_claim", &self.channels_claim)
            .field("publish_claim", &self.publish_claim)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `config` with `key`: the HS256 secret, or the RS256 public key as PEM.
    pub fn new(config: &AuthConfig, key: &str) -> Result<Self, AuthError> {
        let (algorithm, key) = match config.algorithm {
            JwtAlgorithm::HS256 => {
                if key.is_empty() {
                    return Err(AuthError::Key {
                        algorithm: "HS256",
                        reason: "the secret is empty".into(),
                    });
                }
                (Algorithm::HS256, DecodingKey::from_secret(key.as_bytes()))
            }
            JwtAlgorithm::RS256 => {
                let key =
                    DecodingKey::from_rsa_pem(key.as_bytes()).map_err(|e| AuthError::Key {
                        algorithm: "RS256",
                        reason: format!("expected an RSA public key in PEM: {e}"),
                    })?;
                (Algorithm::RS256, key)
            }
        };
        // `Validation::new` allows exactly one algorithm: a token whose header names another
        // (HS256 signed with the public key, `none`, RS512…) fails before signature checking.
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // jsonwebtoken refuses any token carrying `aud` unless told what to expect.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            key,
            validation,
            channels_claim: config.channels_claim.clone(),
            publish_claim: config.publish_claim.clone(),
        })
    }

    /// Verifies `token` (without the `Bearer ` prefix) and reads what it allows.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.into_kind() {
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c),
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            _ => AuthError::Invalid,
        })?;
        let claims = data.claims;
        let channels = match claims.get(&self.channels_claim) {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let publish = matches!(claims.get(&self.publish_claim), Some(Value::Bool(true)));
        // NumericDate may carry a fraction; jsonwebtoken has already checked it is a number.
        let expires_at = claims
            .get("exp")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64)));
        Ok(Claims {
            channels,
            publish,
            expires_at,
        })
    }

    /// The token of an `Authorization: Bearer TOKEN` header value, if it is one.
    pub fn bearer(header_value: &str) -> Option<&str> {
        let (scheme, token) = header_value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// Whether `channel` matches the glob `pattern`: `*` matches any run of characters (also
/// empty), `?` exactly one character, everything else itself. Greedy with backtracking to the last `*`: O(len(pattern) × len(channel))
/// at worst, linear for the usual patterns.
pub fn glob_match(pattern: &str, channel: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let c: Vec<char> = channel.chars().collect();
    let (mut pi, mut ci) = (0usize, 0usize);
    // Position of the last `*` seen and the channel position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ci < c.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == c[ci]) {
            pi += 1;
            ci += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ci));
            pi += 1;
        } else if let Some((sp, sc)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ci = sc + 1;
            star = Some((sp, sc + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&x| x == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    // Throw-away RSA keys generated for these tests only.
    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDD0q2xPCrrYeTI
IgY7zYVHYkh+SJMm0KYU7bffhJ280PxLJziU8qh9GOYjtZRZA9EFuV+R6RFcfVs5
xKQ1sU3f/+ajWeEBjknqxtQlrCQpmT9QykCYBW+/P0xwE32lUfqrL4hkzZB8oH54
qHF4wAleD+bQ0tf9U94bcKkatCgR3PvozGEmeOeYmPYAcA/QVs1m8a+gSh1jVqSr
ctb9ntsbuTv3QFv63MyWlCfffCLW7EM8dHT3VPWGumI4oXmZ5O5rc6TKEQsyC646
YMlIHMgf7D0D2ORhqYwOXIrwoXj6J+PWHkNxv36ub9UQv3Q1gtkVK1De4tscMSxp
AG02v59xAgMBAAECggEAAw78lwXEpC3E5jtmNuR5VQ761/wZ5+KL1LtrL1kz1ZQI
HhkdtejssVgs9tZz7MyZ8cIpAdwh8hpsqvVNMkqgefki9sl+6SRCne5JyUhhX+HT
Bxfci+rHBVOqShaUpVS80Byj3WF2gJ43/AKzPlmXxoeMfI1DCmgB0mfdLzu9jmlx
Ryw+buDJgIxqozYHFkv4Bkdj9fJKK+K37a6guZMrnKsI8t4RZ5/pRVN9lSkL6Vvn
Nmx0EpkifbBvhpF17/KmxkJ9C+POrQZWEaFYytP9bubt3mX0/64M3dUwnsj65VFF
kLrWzMcHU8iLQIWQD1rrATbUdJN4NN35AAWFLPeLJQKBgQDn+kLcn9hxKvXpmiUm
V4IBqTYJO38qawc70hAJmD46uMDBxyQLo/sF5mgk5zfC8KWBaDboys/1CcuoY1wu
+LyWj/jKQhhn2JGtq4h8KJ7Qvsu2HDLgfcImPiIm9JlkxZqRGq/N7SO82iumw2c5
OdGth4WjrGyuqfNp5dDUxvqhHQKBgQDYGfTPfoogOG3RyqSe/O3f+41qGGKH0cCg
qm3mitBAMOPfq9CzZz8e25CCcCiptYeK7DIE5/zlNIUEFb1o/R6s+EENIWgq5Xrp
lkGbGrP5suzoF709xgWqAoQhQedJwU8GZRTVsQja6itSL8em1OIPmwskmlLMTiZN
CEwejGAbZQKBgQDlUqZUWgRq43BUrVh6TdmscK2FdPaiZUmyXlgSVBl4jXmoVogQ
pduamoprqNOb9691fSODADOSZkuZPBg+KxCrusnUkIB18EcbK05yhulxLJxPfBLj
kA6lJZk3b2hQkXPabEpNRVel8vtiERtzG/BnHmkDQ4nxJPsHvfOy1L2hFQKBgQDS
JXOm7+P8b0OENu6dWVMtdB9R5AK1F2meE/4pqiXXtnNyiE+8lpOQO24tGkrAtjHo
C8acdMi+T7NmhImb9kIFbKk9zpXQ2TYMvzxvS6lnEfNFxAgYcWACss2w1bjIRX7G
tjdrkuwMjpmwI5yghPaMvHY6kwQff4PJd18medXf7QKBgQDBzrBXd1hZd+kcQ2/H
Ti5pIGhXjSPXoAflXqXqazLrBCbFkmO4MrQzhFz55/jLv95ROeznb5a/atfxbZ/Q
k+NVva/f8ZeqrJlOH/tdxopjGs9n40r+SRFeIZg/TELRcwJzLRpMOzzA0SUHz0xm
UlI+wCpdzx4bJ52Pta64Makqdg==
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAw9KtsTwq62HkyCIGO82F
R2JIfkiTJtCmFO2334SdvND8Syc4lPKofRjmI7WUWQPRBblfkekRXH1bOcSkNbFN
3//mo1nhAY5J6sbUJawkKZk/UMpAmAVvvz9McBN9pVH6qy+IZM2QfKB+eKhxeMAJ
Xg/m0NLX/VPeG3CpGrQoEdz76MxhJnjnmJj2AHAP0FbNZvGvoEodY1akq3LW/Z7b
G7k790Bb+tzMlpQn33wi1uxDPHR091T1hrpiOKF5meTua3OkyhELMguuOmDJSBzI
H+w9A9jkYamMDlyK8KF4+ifj1h5Dcb9+rm/VEL90NYLZFStQ3uLbHDEsaQBtNr+f
cQIDAQAB
-----END PUBLIC KEY-----
";
    const OTHER_RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDMni+PTeYlt56e
ecqlnJqE1lGxtqkQq9c/TNKNLZoJ1blzonj/0Nqo2300/1lSsARQ9nyOTpY2dbK+
8hKg6c6t+NorPCzzUASntcPrjBE2kMkjSGJwMM5ZhD3ayKTFioyJTXhce3YmnlML
4lfFch4c1e5qcedA+eVp8X8cXaW/kP1IDHYdXfn1Hgdf8gA6yae/ScU3XRoP+n13
bwQ8h0ms3lqKf9IbWUQjsu6t6FfcbviB8E3GzL31lDAHOM5b1plnEEbM/ID9F4lL
RxScNoQXEPV2TUqvSdrS4Xgngm3YsU9Hr7E98DPJzdvEY7VwWsBaECgSp7nZmv4K
Ek4M3HUbAgMBAAECggEAOCgv8FoWUIKxD1hotAQjalKxsB7sDo3C8PYCEUoTLSDR
mXldUQQ+hrpahimQl7+EJ75GV/4cfszVpk8kqrIQjbGvGs+UnKB47phVsXdLIBkj
gsHydk0GzQ2ctkd75VVNlb9Dycn+lsG8FBZmNWPI/Ov/14n0SGJtQqLLWnsfKtA/
mrc5ZWZrT1NPit3KJT1aCnOn78gZPEjr4jTXO6KMrRmHsWYB6W6tT/73eE1d8n+4
JMcgQbke1PxGnUw8NnGGFtqR+RzmGcgkAFxBSgaeZIKUR5iqgVtxviJBkNqsSnGD
QNF7arZr5kXSGgTRyQMnwPCOBxyag/BEsm++Olw4iQKBgQD3NnkDpx3QSf6iwjH4
4abOs4EvTtqIEtc2JRaXqQ/jtm014OMR0WDW9skaOZ7BUDTUiNmTOkDgm4MZ7XkB
QknsAD7VtNBcw7Sy0cO/ZSqu90vNs0LN8Oivn4+H+taN1ispRDe75qG8SjeX20Fc
YccefOqRS02yBidRUAgF2PpL4wKBgQDT5B5YKGKVAJqLiJaTQdRtfaapvh+8njWS
lVnG8OiRFhJXQSAx01v7aqMzGzaTlQVKr7/8XwYwQcbabZjsgl8WwyxSP8b8Oia2
yPxhrANzU/oP3pUXyEPY+dVa0796kgI2vylcZ+INn8zM55OopH/v8bV/ji0fvJUp
rKXaNZlnaQKBgFJ5MdYuIpwik3jpIJLPdT7wU+DchbtvzayaovblyA9IBRc8d4Sy
PYR5wI2nO3dysq1VGoErpglI2GwF9aCd5Nt/GXdiY0EPaXFe2dc4gQzuI7P0Yg0i
mf49VT0gSgP3t16FC7L8NmkCuZlH5H5VgICDXB4s6TbDJsrR0FtjD93RAoGAaqBJ
kM1JxndWTc7/Dr06u5pWSuasq8rlZI0Zb139ej0kH5pbLBeTGvJvi6EvFpcP4aSN
NN9Qiuoeuf4azTFRzm+Klx0W8ggFQUfkkPXxipCAromwdxZE5iPadGlH2tMsoAYU
Nzbjbz2x3o7OJDgbVVBJqBWQqX7JhP4nO6ZrOrkCgYEAot2sMLfk6ZmOETXp3r8F
6heK6/cY4tptCZ4C/HgVKHKPsdQfmWVY88kYFznWVmShi6OzS2zecTSoS6GCiySP
Tnwk8TY6yjy9kjg2seqJ2fExiCKcaZ+HrSQXK/8/qIZD1wdNFRyv6lH59T/YNeQN
SjfoDOSRQsmxtPYRWv9vo4U=
-----END PRIVATE KEY-----
";
    const SECRET: &str = "a-test-secret-of-reasonable-length";

    fn config(algorithm: JwtAlgorithm) -> AuthConfig {
        AuthConfig {
            algorithm,
            issuer: Some("https://issuer.test".into()),
            audience: Some("eventstream".into()),
            channels_claim: "channels".into(),
            publish_claim: "publish".into(),
            websocket: true,
            ingest: true,
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims(extra: Value) -> Value {
        let mut base = json!({
            "iss": "https://issuer.test",
            "aud": "eventstream",
            "exp": now() + 600,
            "channels": ["orders.*", "user-?"],
            "publish": true,
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(k);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        base
    }

    fn hs(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    }

    fn rs(claims: &Value, private: &str) -> String {
        encode(
            &Header::new(Algorithm::RS256),
            claims,
            &EncodingKey::from_rsa_pem(private.as_bytes()).expect("key"),
        )
        .expect("encode")
    }

    fn hs_verifier() -> JwtVerifier {
        JwtVerifier::new(&config(JwtAlgorithm::HS256), SECRET).expect("verifier")
    }

    fn rs_verifier() -> JwtVerifier {
        JwtVerifier::new(&config(JwtAlgorithm::RS256), RSA_PUBLIC).expect("verifier")
    }

    #[test]
    fn valid_hs256_token_is_allowed_with_its_claims() {
        let got = hs_verifier()
            .verify(&hs(&claims(json!({}))))
            .expect("valid");
        assert_eq!(got.channels, ["orders.*", "user-?"]);
        assert!(got.publish);
        assert!(got.allows_channel("orders.eu"));
        assert!(got.allows_channel("user-7"));
        assert!(!got.allows_channel("user-77"));
    }

    #[test]
    fn valid_rs256_token_is_allowed() {
        let got = rs_verifier()
            .verify(&rs(&claims(json!({})), RSA_PRIVATE))
            .expect("valid");
        assert!(got.publish);
    }

    #[test]
    fn publish_must_be_literally_true_and_channels_may_be_one_string() {
        let token = hs(&claims(json!({"publish": "true", "channels": "a.*"})));
        let got = hs_verifier().verify(&token).expect("valid");
        assert!(!got.publish, "a string is not the boolean true");
        assert_eq!(got.channels, ["a.*"]);
        let token = hs(&claims(
            json!({"publish": null, "channels": null, "exp": 4_000_000_000i64}),
        ));
        assert_eq!(
            hs_verifier().verify(&token),
            Ok(Claims {
                expires_at: Some(4_000_000_000),
                ..Claims::default()
            })
        );
    }

    #[test]
    fn wrong_secret_is_denied() {
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(b"another-secret"),
        )
        .expect("encode");
        assert_eq!(hs_verifier().verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn other_rsa_key_is_denied() {
        let token = rs(&claims(json!({})), OTHER_RSA_PRIVATE);
        assert_eq!(rs_verifier().verify(&token), Err(AuthError::BadSignature));
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_denied() {
        let expired = hs(&claims(json!({"exp": now() - 3600})));
        assert_eq!(hs_verifier().verify(&expired), Err(AuthError::Expired));
        let early = hs(&claims(json!({"nbf": now() + 3600})));
        assert_eq!(hs_verifier().verify(&early), Err(AuthError::NotYetValid));
        let no_exp = hs(&claims(json!({"exp": null})));
        assert_eq!(
            hs_verifier().verify(&no_exp),
            Err(AuthError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn issuer_and_audience_are_checked() {
        let token = hs(&claims(json!({"iss": "https://evil.test"})));
        assert_eq!(hs_verifier().verify(&token), Err(AuthError::WrongIssuer));
        let token = hs(&claims(json!({"aud": "someone-else"})));
        assert_eq!(hs_verifier().verify(&token), Err(AuthError::WrongAudience));
        let token = hs(&claims(json!({"aud": null})));
        assert_eq!(
            hs_verifier().verify(&token),
            Err(AuthError::MissingClaim("aud".into()))
        );
        // Without a configured audience, a token's `aud` is not a reason to refuse it.
        let mut open = config(JwtAlgorithm::HS256);
        open.audience = None;
        open.issuer = None;
        let v = JwtVerifier::new(&open, SECRET).expect("verifier");
        assert!(
            v.verify(&hs(&claims(json!({"aud": "x", "iss": null}))))
                .is_ok()
        );
    }

    #[test]
    fn wrong_algorithm_is_denied() {
        // An RS256 token where HS256 is configured, and vice versa.
        let token = rs(&claims(json!({})), RSA_PRIVATE);
        assert_eq!(hs_verifier().verify(&token), Err(AuthError::WrongAlgorithm));
        let token = hs(&claims(json!({})));
        assert_eq!(rs_verifier().verify(&token), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn alg_none_is_denied() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(claims(json!({})).to_string());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            let got = hs_verifier().verify(&token);
            assert!(got.is_err(), "alg none accepted: {got:?}");
            let got = rs_verifier().verify(&token);
            assert!(got.is_err(), "alg none accepted: {got:?}");
        }
    }

    #[test]
    fn algorithm_confusion_is_denied() {
        // The classic attack: sign HS256 with the RS256 *public* key as the HMAC secret.
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        )
        .expect("encode");
        assert_eq!(rs_verifier().verify(&token), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn garbage_and_empty_tokens_are_denied() {
        assert_eq!(hs_verifier().verify(""), Err(AuthError::Missing));
        assert_eq!(hs_verifier().verify("not-a-jwt"), Err(AuthError::Malformed));
        assert!(hs_verifier().verify("a.b.c").is_err());
    }

    #[test]
    fn unusable_keys_are_startup_errors() {
        let err = JwtVerifier::new(&config(JwtAlgorithm::RS256), "not a pem").expect_err("bad");
        assert!(err.to_string().contains("RS256"), "{err}");
        assert!(JwtVerifier::new(&config(JwtAlgorithm::HS256), "").is_err());
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(JwtVerifier::bearer("Bearer abc"), Some("abc"));
        assert_eq!(JwtVerifier::bearer("bearer   abc "), Some("abc"));
        assert_eq!(JwtVerifier::bearer("Basic abc"), None);
        assert_eq!(JwtVerifier::bearer("Bearer "), None);
        assert_eq!(JwtVerifier::bearer("abc"), None);
    }

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("orders.*", "orders.", true),
            ("orders.*", "orders.eu.1", true),
            ("orders.*", "order.eu", false),
            ("user-?", "user-1", true),
            ("user-?", "user-", false),
            ("user-?", "user-12", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*.eu", "orders.eu", true),
            ("*.eu", "orders.us", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("", "x", false),
            ("?", "é", true),
            ("**", "x", true),
        ];
        for (pattern, channel, want) in cases {
            assert_eq!(
                glob_match(pattern, channel),
                want,
                "{pattern:?} vs {channel:?}"
            );
        }
    }
}
