use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::*;

const KEY: &[u8] = b"test-access-key";
const NOW: u64 = 1_700_000_000;
const CLIENT_AUD: &str = "http://127.0.0.1/client/?hub=chat";

/// The jwt.io HS256 example (secret `your-256-bit-secret`); it has no `exp`.
const JWT_IO_HS256: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

/// The jwt.io HS512 example (secret `your-512-bit-secret`), re-computed with Python's `hmac`.
const JWT_IO_HS512: &str = "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiYWRtaW4iOnRydWUsImlhdCI6MTUxNjIzOTAyMn0.VFb0qJ1LRg_4ujbZoRMXnVkUgiuKq5KxWqNdbKq_G9Vvz-S1zZa9LPxtHWKa64zDl2ofkT8F6jBt_K4riU-fPg";

/// An SDK-shaped server token (header with `kid`), computed with Python's `hmac` and the
/// emulator key.
const PYTHON_SERVER_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjEyMzQ1IiwidHlwIjoiSldUIn0.eyJuYW1laWQiOiJteXNlcnZlcl9hYmMiLCJuYmYiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMCwiaWF0IjoxNzAwMDAwMDAwLCJhdWQiOiJodHRwOi8vMTI3LjAuMC4xL3NlcnZlci8_aHViPWNoYXQifQ.H1wwzdn2RAEziVjrMSZNAMlIiB3DWPrOsfIe6G0J44U";
const EMULATOR_KEY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

fn client_claims() -> Claims {
    let mut claims = Claims::issued_at(NOW, 3600);
    claims.aud.push(CLIENT_AUD.to_owned());
    claims.insert(claim_names::USER_ID, "alice");
    claims
}

fn client_audience() -> Audience {
    Audience::new(Scheme::Http, "127.0.0.1", "/client/", Some("chat"))
}

fn client_validation() -> Validation {
    Validation::new()
        .with_audience(client_audience())
        .with_leeway_secs(0)
}

/// A token over an arbitrary header and payload segment, HMAC-SHA256'd directly with `hmac`
/// (independently of [`sign`]).
fn raw_token(header_json: &str, payload_segment: &str, key: &[u8]) -> String {
    let signing_input = format!("{}.{payload_segment}", URL_SAFE_NO_PAD.encode(header_json));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(signing_input.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{tag}")
}

fn hs256_token(payload: &serde_json::Value) -> String {
    raw_token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &URL_SAFE_NO_PAD.encode(payload.to_string()),
        KEY,
    )
}

fn verify_client(token: &str) -> Result<Claims, JwtError> {
    verify(token, &[KEY], NOW, &client_validation())
}

fn with_claims(edit: impl FnOnce(&mut Claims)) -> String {
    let mut claims = client_claims();
    edit(&mut claims);
    sign(&claims, KEY, Algorithm::Hs256)
}

fn parts(token: &str) -> Vec<&str> {
    token.split('.').collect()
}

// ---------------------------------------------------------------------------------------
// JWT: round trips and independent tokens

#[test]
fn hs256_round_trip() {
    let claims = client_claims();
    let token = sign(&claims, KEY, Algorithm::Hs256);
    assert_eq!(parts(&token)[0], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
    assert!(!token.contains('='));
    assert_eq!(verify_client(&token), Ok(claims));
}

#[test]
fn hs512_round_trip() {
    let claims = client_claims();
    let token = sign(&claims, KEY, Algorithm::Hs512);
    let header = URL_SAFE_NO_PAD.decode(parts(&token)[0]).unwrap();
    assert_eq!(header, br#"{"alg":"HS512","typ":"JWT"}"#);
    // 64-byte tag -> 86 base64url characters.
    assert_eq!(parts(&token)[2].len(), 86);
    assert_eq!(verify_client(&token), Ok(claims));
}

#[test]
fn jwt_io_hs256_example_signature_is_accepted() {
    let key: &[u8] = b"your-256-bit-secret";
    let claims = verify_signature(JWT_IO_HS256, &[key], DEFAULT_MAX_TOKEN_LEN).unwrap();
    assert_eq!(claims.get_str("sub"), Some("1234567890"));
    assert_eq!(claims.get_str("name"), Some("John Doe"));
    assert_eq!(claims.iat, Some(1_516_239_022));
    assert_eq!(claims.user_id(), Some("1234567890"));
    // Without `exp` the full check refuses it unless told otherwise.
    assert_eq!(
        verify(JWT_IO_HS256, &[key], NOW, &Validation::new()),
        Err(JwtError::MissingExpiry)
    );
    let lenient = Validation::new().with_require_exp(false);
    assert_eq!(verify(JWT_IO_HS256, &[key], NOW, &lenient), Ok(claims));
}

#[test]
fn jwt_io_hs512_example_signature_is_accepted() {
    let key: &[u8] = b"your-512-bit-secret";
    let claims = verify_signature(JWT_IO_HS512, &[key], DEFAULT_MAX_TOKEN_LEN).unwrap();
    assert_eq!(claims.get("admin"), Some(&json!(true)));
    let wrong: &[u8] = b"your-256-bit-secret";
    assert_eq!(
        verify_signature(JWT_IO_HS512, &[wrong], DEFAULT_MAX_TOKEN_LEN),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn sdk_shaped_server_token_from_python_verifies() {
    let cs = ConnectionString::parse(
        "Endpoint=http://127.0.0.1;Port=8888;AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH;Version=1.0;",
    )
    .unwrap();
    assert_eq!(cs.access_key().as_bytes(), EMULATOR_KEY);
    let validation = Validation::new().with_audience(cs.server_audience("Chat"));
    let claims = verify(PYTHON_SERVER_TOKEN, &[EMULATOR_KEY], NOW + 60, &validation).unwrap();
    assert_eq!(claims.nameid.as_deref(), Some("myserver_abc"));
    assert_eq!(
        (claims.nbf, claims.exp, claims.iat),
        (Some(NOW), Some(NOW + 3600), Some(NOW))
    );
    assert_eq!(claims.aud, ["http://127.0.0.1/server/?hub=chat"]);
}

#[test]
fn signed_token_matches_independent_hmac() {
    let claims = client_claims();
    let token = sign(&claims, KEY, Algorithm::Hs256);
    let p = parts(&token);
    assert_eq!(
        token,
        raw_token(r#"{"alg":"HS256","typ":"JWT"}"#, p[1], KEY)
    );
}

#[test]
fn key_rotation_second_key_verifies() {
    let old: &[u8] = b"old-key";
    let claims = client_claims();
    let token = sign(&claims, KEY, Algorithm::Hs512);
    assert_eq!(
        verify(&token, &[old, KEY], NOW, &client_validation()),
        Ok(claims)
    );
    assert_eq!(
        verify(&token, &[old], NOW, &client_validation()),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        verify(&token, &[], NOW, &client_validation()),
        Err(JwtError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------
// JWT: bad input, each with its own error

#[test]
fn tampered_payload_is_bad_signature() {
    let token = sign(&client_claims(), KEY, Algorithm::Hs256);
    let other = with_claims(|claims| {
        claims.insert(claim_names::USER_ID, "mallory");
    });
    let forged = format!(
        "{}.{}.{}",
        parts(&token)[0],
        parts(&other)[1],
        parts(&token)[2]
    );
    assert_eq!(verify_client(&forged), Err(JwtError::BadSignature));
}

#[test]
fn tampered_signature_is_bad_signature() {
    let token = sign(&client_claims(), KEY, Algorithm::Hs256);
    let (input, signature) = token.rsplit_once('.').unwrap();
    let mut chars: Vec<char> = signature.chars().collect();
    chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
    let forged = format!("{input}.{}", chars.into_iter().collect::<String>());
    assert_eq!(verify_client(&forged), Err(JwtError::BadSignature));
    // A truncated signature is just as wrong.
    let truncated = format!("{input}.{}", &signature[..20]);
    assert_eq!(verify_client(&truncated), Err(JwtError::BadSignature));
}

#[test]
fn wrong_key_is_bad_signature() {
    let token = sign(&client_claims(), b"another-key", Algorithm::Hs256);
    assert_eq!(verify_client(&token), Err(JwtError::BadSignature));
}

#[test]
fn alg_none_is_rejected() {
    let payload = URL_SAFE_NO_PAD.encode(json!({"exp": NOW + 60, "aud": CLIENT_AUD}).to_string());
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.AAAA"),
    ] {
        assert_eq!(
            verify_client(&token),
            Err(JwtError::UnsupportedAlgorithm("none".to_owned()))
        );
    }
    // Case variants are not HS256 either.
    let token = raw_token(r#"{"alg":"hs256"}"#, &payload, KEY);
    assert_eq!(
        verify_client(&token),
        Err(JwtError::UnsupportedAlgorithm("hs256".to_owned()))
    );
}

#[test]
fn alg_rs256_is_rejected() {
    let token = raw_token(
        r#"{"alg":"RS256","typ":"JWT"}"#,
        parts(&sign(&client_claims(), KEY, Algorithm::Hs256))[1],
        KEY,
    );
    assert_eq!(
        verify_client(&token),
        Err(JwtError::UnsupportedAlgorithm("RS256".to_owned()))
    );
}

#[test]
fn long_alg_is_shortened_in_the_error() {
    let alg = "X".repeat(500);
    let token = raw_token(&format!(r#"{{"alg":"{alg}"}}"#), "e30", KEY);
    let Err(JwtError::UnsupportedAlgorithm(quoted)) = verify_client(&token) else {
        panic!("expected UnsupportedAlgorithm");
    };
    assert_eq!(quoted, format!("{}...", "X".repeat(40)));
}

#[test]
fn missing_alg_is_malformed() {
    let token = raw_token(r#"{"typ":"JWT"}"#, "e30", KEY);
    assert_eq!(
        verify_client(&token),
        Err(JwtError::Malformed(MalformedToken::MissingAlgorithm))
    );
    let token = raw_token(r#"{"alg":256}"#, "e30", KEY);
    assert_eq!(
        verify_client(&token),
        Err(JwtError::Malformed(MalformedToken::MissingAlgorithm))
    );
}

#[test]
fn expired_token_is_rejected() {
    let token = with_claims(|claims| claims.exp = Some(NOW - 100));
    assert_eq!(verify_client(&token), Err(JwtError::Expired));
    // Expired exactly at `exp`.
    let token = with_claims(|claims| claims.exp = Some(NOW));
    assert_eq!(verify_client(&token), Err(JwtError::Expired));
}

#[test]
fn leeway_accepts_small_clock_skew() {
    let expired = with_claims(|claims| claims.exp = Some(NOW - 30));
    let early = with_claims(|claims| claims.nbf = Some(NOW + 30));
    let lenient = client_validation().with_leeway_secs(60);
    assert!(verify(&expired, &[KEY], NOW, &lenient).is_ok());
    assert!(verify(&early, &[KEY], NOW, &lenient).is_ok());
    assert_eq!(Validation::new().leeway_secs, DEFAULT_LEEWAY_SECS);
}

#[test]
fn not_yet_valid_token_is_rejected() {
    let token = with_claims(|claims| claims.nbf = Some(NOW + 120));
    assert_eq!(verify_client(&token), Err(JwtError::NotYetValid));
}

#[test]
fn missing_exp_is_rejected() {
    let token = with_claims(|claims| claims.exp = None);
    assert_eq!(verify_client(&token), Err(JwtError::MissingExpiry));
    let lenient = client_validation().with_require_exp(false);
    assert!(verify(&token, &[KEY], NOW, &lenient).is_ok());
}

#[test]
fn wrong_audience_is_rejected() {
    for aud in [
        "http://127.0.0.1/server/?hub=chat",       // path
        "http://127.0.0.1/client/?hub=other",      // hub
        "http://127.0.0.1/client/",                // no hub
        "https://127.0.0.1/client/?hub=chat",      // scheme
        "http://10.0.0.1/client/?hub=chat",        // host
        "http://127.0.0.1/client/?hub=chat&hub=x", // a second, different hub
        "not a url",
    ] {
        let token = with_claims(|claims| claims.aud = vec![aud.to_owned()]);
        assert_eq!(verify_client(&token), Err(JwtError::WrongAudience), "{aud}");
    }
}

#[test]
fn missing_audience_is_rejected() {
    let token = with_claims(|claims| claims.aud.clear());
    assert_eq!(verify_client(&token), Err(JwtError::MissingAudience));
    // Without an audience check it passes.
    let no_check = Validation::new();
    assert!(verify(&token, &[KEY], NOW, &no_check).is_ok());
}

#[test]
fn audience_ignores_port_and_matches_loosely() {
    for aud in [
        "http://127.0.0.1:8080/client/?hub=chat",
        "http://127.0.0.1/client?hub=chat",
        "http://127.0.0.1/client/?hub=CHAT",
        "HTTP://127.0.0.1/client/?hub=chat&asrs.op=x#frag",
        "http://127.0.0.1/client/?hub=%63hat",
    ] {
        let token = with_claims(|claims| claims.aud = vec![aud.to_owned()]);
        assert!(verify_client(&token).is_ok(), "{aud}");
    }
    // The expected side may carry a port too.
    let cs = ConnectionString::parse("Endpoint=http://127.0.0.1:8080;AccessKey=k").unwrap();
    assert!(cs.client_audience("Chat").matches(CLIENT_AUD));
}

#[test]
fn audience_array_passes_when_any_matches() {
    let token = with_claims(|claims| {
        claims.aud = vec!["http://elsewhere/".to_owned(), CLIENT_AUD.to_owned()];
    });
    let claims = verify_client(&token).unwrap();
    assert_eq!(claims.aud.len(), 2);
}

#[test]
fn exact_audience_check() {
    let exact = Validation::new().with_audience(AudienceCheck::Exact(CLIENT_AUD.to_owned()));
    let token = sign(&client_claims(), KEY, Algorithm::Hs256);
    assert!(verify(&token, &[KEY], NOW, &exact).is_ok());
    let with_port = with_claims(|claims| {
        claims.aud = vec!["http://127.0.0.1:8080/client/?hub=chat".to_owned()];
    });
    assert_eq!(
        verify(&with_port, &[KEY], NOW, &exact),
        Err(JwtError::WrongAudience)
    );
}

#[test]
fn too_long_token_is_rejected_before_decoding() {
    let token = "a".repeat(DEFAULT_MAX_TOKEN_LEN + 1);
    assert_eq!(
        verify_client(&token),
        Err(JwtError::TooLong {
            len: DEFAULT_MAX_TOKEN_LEN + 1,
            max: DEFAULT_MAX_TOKEN_LEN
        })
    );
    let token = sign(&client_claims(), KEY, Algorithm::Hs256);
    let small = client_validation().with_max_token_len(token.len() - 1);
    assert!(matches!(
        verify(&token, &[KEY], NOW, &small),
        Err(JwtError::TooLong { .. })
    ));
}

#[test]
fn token_without_three_parts_is_malformed() {
    let token = sign(&client_claims(), KEY, Algorithm::Hs256);
    for bad in [
        String::new(),
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{token}.extra"),
        "a.b.c.d.e".to_owned(),
    ] {
        assert_eq!(
            verify_client(&bad),
            Err(JwtError::Malformed(MalformedToken::NotThreeParts)),
            "{bad}"
        );
    }
}

#[test]
fn bad_base64_is_malformed() {
    let token = sign(&client_claims(), KEY, Algorithm::Hs256);
    let p = parts(&token);
    let padded_header = format!("{}=.{}.{}", p[0], p[1], p[2]);
    let bad_signature = format!("{}.{}.{}!", p[0], p[1], &p[2][1..]);
    let standard_alphabet = format!("{}.{}.{}", p[0], p[1], "ab+/");
    assert_eq!(
        verify_client(&padded_header),
        Err(JwtError::Malformed(MalformedToken::Base64(
            TokenPart::Header
        )))
    );
    assert_eq!(
        verify_client(&bad_signature),
        Err(JwtError::Malformed(MalformedToken::Base64(
            TokenPart::Signature
        )))
    );
    assert_eq!(
        verify_client(&standard_alphabet),
        Err(JwtError::Malformed(MalformedToken::Base64(
            TokenPart::Signature
        )))
    );
    // The payload is decoded only after the signature checks out.
    let payload = raw_token(r#"{"alg":"HS256"}"#, "e30*", KEY);
    assert_eq!(
        verify_client(&payload),
        Err(JwtError::Malformed(MalformedToken::Base64(
            TokenPart::Payload
        )))
    );
}

#[test]
fn non_json_header_is_malformed() {
    for header in ["not json", "[1,2]", "\"HS256\"", ""] {
        let token = raw_token(header, "e30", KEY);
        assert_eq!(
            verify_client(&token),
            Err(JwtError::Malformed(MalformedToken::Json(TokenPart::Header))),
            "{header}"
        );
    }
}

#[test]
fn non_json_payload_is_malformed() {
    let token = raw_token(
        r#"{"alg":"HS256"}"#,
        &URL_SAFE_NO_PAD.encode("{\"exp\":"),
        KEY,
    );
    assert_eq!(
        verify_client(&token),
        Err(JwtError::Malformed(MalformedToken::Json(
            TokenPart::Payload
        )))
    );
}

#[test]
fn wrong_claim_types_are_malformed() {
    let cases = [
        (json!({"exp": "1700003600", "aud": CLIENT_AUD}), "exp"),
        (
            json!({"exp": NOW + 60, "nbf": -5, "aud": CLIENT_AUD}),
            "nbf",
        ),
        (
            json!({"exp": NOW + 60, "iat": true, "aud": CLIENT_AUD}),
            "iat",
        ),
        (json!({"exp": NOW + 60, "aud": 42}), "aud"),
        (json!({"exp": NOW + 60, "aud": [CLIENT_AUD, 1]}), "aud"),
        (json!({"exp": 1e30, "aud": CLIENT_AUD}), "exp"),
    ];
    for (payload, claim) in cases {
        assert_eq!(
            verify_client(&hs256_token(&payload)),
            Err(JwtError::Malformed(MalformedToken::ClaimType(claim))),
            "{payload}"
        );
    }
}

#[test]
fn error_messages_are_fit_for_a_401_body() {
    let token = with_claims(|claims| claims.exp = Some(NOW - 100));
    let message = verify_client(&token).unwrap_err().to_string();
    assert_eq!(message, "access token has expired");
    let message = JwtError::Malformed(MalformedToken::ClaimType("exp")).to_string();
    assert_eq!(
        message,
        "malformed access token: claim `exp` has the wrong type"
    );
    let message = verify(&token, &[b"secret-key-bytes"], NOW, &client_validation())
        .unwrap_err()
        .to_string();
    assert_eq!(message, "invalid access token signature");
}

// ---------------------------------------------------------------------------------------
// Claims

#[test]
fn claims_json_mapping() {
    let payload = json!({
        "aud": [CLIENT_AUD],
        "exp": 1_700_003_600.9,
        "nbf": null,
        "iat": 1_700_000_000,
        "role": ["admin", "user"],
        "asrs.s.uid": "alice",
        "asrs.s.ssticky": "Required",
        "custom": {"nested": [1, 2]},
    });
    let serde_json::Value::Object(object) = payload else {
        unreachable!()
    };
    let claims = Claims::from_json_object(object).unwrap();
    assert_eq!(claims.aud, [CLIENT_AUD]);
    assert_eq!(claims.exp, Some(1_700_003_600));
    assert_eq!(claims.nbf, None);
    assert_eq!(claims.get("role"), Some(&json!(["admin", "user"])));
    let system: Vec<&str> = claims.system_claims().map(|(name, _)| name).collect();
    assert_eq!(system, ["asrs.s.ssticky", "asrs.s.uid"]);

    let written = claims.to_json_object();
    assert_eq!(written.get("aud"), Some(&json!(CLIENT_AUD)));
    assert_eq!(written.get("exp"), Some(&json!(1_700_003_600u64)));
    assert!(!written.contains_key("nbf"));
    assert_eq!(Claims::from_json_object(written), Ok(claims));
}

#[test]
fn typed_claims_win_over_extra_when_writing() {
    let mut claims = Claims::issued_at(NOW, 60);
    claims.insert("exp", "not a number");
    claims.insert("nameid", json!(["a", "b"]));
    let written = claims.to_json_object();
    assert_eq!(written.get("exp"), Some(&json!(NOW + 60)));
    assert_eq!(written.get("nameid"), Some(&json!(["a", "b"])));
    claims.nameid = Some("server".to_owned());
    assert_eq!(
        claims.to_json_object().get("nameid"),
        Some(&json!("server"))
    );
}

#[test]
fn non_string_nameid_stays_in_extra() {
    let token = hs256_token(&json!({"exp": NOW + 60, "nameid": ["a", "b"]}));
    let claims = verify(&token, &[KEY], NOW, &Validation::new()).unwrap();
    assert_eq!(claims.nameid, None);
    assert_eq!(claims.get("nameid"), Some(&json!(["a", "b"])));
    assert_eq!(claims.user_id(), None);
}

#[test]
fn user_id_prefers_uid_then_nameid_then_sub() {
    let mut claims = Claims::new();
    assert_eq!(claims.user_id(), None);
    claims.insert("sub", "from-sub");
    assert_eq!(claims.user_id(), Some("from-sub"));
    claims.nameid = Some("from-nameid".to_owned());
    assert_eq!(claims.user_id(), Some("from-nameid"));
    claims.insert(claim_names::USER_ID, "");
    assert_eq!(claims.user_id(), Some("from-nameid"));
    claims.insert(claim_names::USER_ID, "from-uid");
    assert_eq!(claims.user_id(), Some("from-uid"));
}

// ---------------------------------------------------------------------------------------
// Connection strings

#[test]
fn connection_string_full() {
    let cs = ConnectionString::parse(
        "Endpoint=https://Name.Service.SignalR.net/;AccessKey=abc/def+ghi=;Version=1.0;Port=8443;\
         ClientEndpoint=https://proxy.example.com/signalr;ServerEndpoint=http://internal:9000/;",
    )
    .unwrap();
    assert_eq!(cs.access_key(), "abc/def+ghi=");
    assert_eq!(cs.version(), Some("1.0"));
    assert_eq!(cs.port(), Some(8443));
    assert_eq!(cs.endpoint_url().host(), "name.service.signalr.net");
    assert_eq!(cs.endpoint(), "https://name.service.signalr.net:8443");
    assert_eq!(cs.client_endpoint(), "https://proxy.example.com/signalr/");
    assert_eq!(cs.server_endpoint(), "http://internal:9000/");
    assert_eq!(cs.audience_base(), "https://name.service.signalr.net/");
    assert_eq!(
        cs.server_audience("Chat").to_string(),
        "https://name.service.signalr.net/server/?hub=chat"
    );
    assert_eq!(
        cs.client_audience("chat").to_string(),
        "https://name.service.signalr.net/client/?hub=chat"
    );
}

#[test]
fn connection_string_minimal_and_defaults() {
    let cs = ConnectionString::parse("Endpoint=http://127.0.0.1:8080;AccessKey=key").unwrap();
    assert_eq!(cs.version(), None);
    assert_eq!(cs.endpoint(), "http://127.0.0.1:8080");
    assert_eq!(cs.server_endpoint(), "http://127.0.0.1:8080/");
    assert_eq!(cs.client_endpoint(), "http://127.0.0.1:8080/");
    assert_eq!(cs.audience_base(), "http://127.0.0.1/");

    let cs = ConnectionString::parse("Endpoint=https://host;AccessKey=key").unwrap();
    assert_eq!(cs.endpoint(), "https://host:443");
    assert_eq!(cs.server_endpoint(), "https://host/");
}

#[test]
fn connection_string_port_replaces_endpoint_port() {
    let cs =
        ConnectionString::parse("Endpoint=http://localhost:80;Port=8888;AccessKey=k;").unwrap();
    assert_eq!(cs.endpoint(), "http://localhost:8888");
    assert_eq!(cs.server_endpoint(), "http://localhost:8888/");
    assert_eq!(cs.audience_base(), "http://localhost/");
}

#[test]
fn connection_string_ipv6_endpoint() {
    let cs = ConnectionString::parse("Endpoint=http://[::1]:8080/;AccessKey=k").unwrap();
    assert_eq!(cs.endpoint_url().host(), "[::1]");
    assert_eq!(cs.endpoint(), "http://[::1]:8080");
    assert_eq!(cs.audience_base(), "http://[::1]/");
    assert_eq!(
        cs.server_audience("chat").to_string(),
        "http://[::1]/server/?hub=chat"
    );
}

#[test]
fn connection_string_keys_are_case_insensitive_and_trimmed() {
    let cs = ConnectionString::parse(
        " ENDPOINT = http://h:1 ; accesskey =  the key  ;;  ;vErSiOn=1.1-preview;\nUnknown=x;\n",
    )
    .unwrap();
    assert_eq!(cs.endpoint(), "http://h:1");
    assert_eq!(cs.access_key(), "the key");
    assert_eq!(cs.version(), Some("1.1-preview"));
}

#[test]
fn connection_string_accepted_versions() {
    for version in ["1.0", "1.1", "1.10", "1.0-preview", "1.0.0_beta.2"] {
        let input = format!("Endpoint=http://h;AccessKey=k;Version={version}");
        let cs = ConnectionString::parse(&input).unwrap();
        assert_eq!(cs.version(), Some(version));
    }
}

#[test]
fn connection_string_render_round_trips() {
    for input in [
        "Endpoint=http://127.0.0.1:8080;AccessKey=key;Version=1.0;",
        "endpoint=HTTPS://Host.Example/base/;accesskey=a=b;port=8443;clientendpoint=http://c;serverendpoint=http://[::1]:1/x",
        "Endpoint=http://h;AccessKey=k;Unknown=dropped",
    ] {
        let cs = ConnectionString::parse(input).unwrap();
        let rendered = cs.to_string();
        assert_eq!(ConnectionString::parse(&rendered), Ok(cs.clone()), "{rendered}");
    }
    let cs = ConnectionString::parse(
        "Endpoint=HTTP://H/;AccessKey=k;Port=99;ServerEndpoint=http://s/p/;",
    )
    .unwrap();
    assert_eq!(
        cs.to_string(),
        "Endpoint=http://h;AccessKey=k;Port=99;ServerEndpoint=http://s/p;"
    );
    assert_eq!(
        "Endpoint=http://h;AccessKey=k"
            .parse::<ConnectionString>()
            .map(|cs| cs.port()),
        Ok(None)
    );
}

#[test]
fn connection_string_debug_redacts_the_key() {
    let cs = ConnectionString::parse("Endpoint=http://h;AccessKey=super-secret").unwrap();
    let debug = format!("{cs:?}");
    assert!(!debug.contains("super-secret"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn connection_string_missing_endpoint() {
    for input in ["", "AccessKey=k", "Endpoint=;AccessKey=k", ";;;"] {
        assert_eq!(
            ConnectionString::parse(input),
            Err(ConnectionStringError::MissingEndpoint),
            "{input}"
        );
    }
}

#[test]
fn connection_string_duplicate_key() {
    assert_eq!(
        ConnectionString::parse("Endpoint=http://a;AccessKey=k;ENDPOINT=http://b"),
        Err(ConnectionStringError::DuplicateKey("endpoint".to_owned()))
    );
}

#[test]
fn connection_string_bad_port() {
    for port in ["0", "70000", "abc", "+80", "-1", "8080.5"] {
        let input = format!("Endpoint=http://h;AccessKey=k;Port={port}");
        assert_eq!(
            ConnectionString::parse(&input),
            Err(ConnectionStringError::InvalidPort(port.to_owned())),
            "{port}"
        );
    }
    assert_eq!(
        ConnectionString::parse("Endpoint=http://h:0;AccessKey=k"),
        Err(ConnectionStringError::InvalidUrl {
            key: "Endpoint",
            source: UrlError::InvalidPort
        })
    );
}

#[test]
fn connection_string_bad_version() {
    for version in ["2.0", "1", "1.", "1.x", "1.0 beta", "v1.0"] {
        let input = format!("Endpoint=http://h;AccessKey=k;Version={version}");
        assert_eq!(
            ConnectionString::parse(&input),
            Err(ConnectionStringError::InvalidVersion(version.to_owned())),
            "{version}"
        );
    }
}

#[test]
fn connection_string_missing_access_key() {
    for input in [
        "Endpoint=http://h",
        "Endpoint=http://h;AccessKey=  ;Version=1.0",
    ] {
        assert_eq!(
            ConnectionString::parse(input),
            Err(ConnectionStringError::MissingAccessKey),
            "{input}"
        );
    }
}

#[test]
fn connection_string_unsupported_auth_type() {
    for auth_type in ["aad", "azure", "azure.app", "azure.msi", "Azure.MSI"] {
        let input = format!("Endpoint=https://h;AuthType={auth_type};ClientId=x;Version=1.0");
        let error = ConnectionString::parse(&input).unwrap_err();
        assert_eq!(
            error,
            ConnectionStringError::UnsupportedAuthType(auth_type.to_owned())
        );
        assert!(error
            .to_string()
            .contains("this relay only supports AccessKey auth"));
    }
}

#[test]
fn connection_string_bad_urls() {
    let cases = [
        (
            "Endpoint=ftp://h;AccessKey=k",
            "Endpoint",
            UrlError::UnsupportedScheme("ftp".to_owned()),
        ),
        (
            "Endpoint=ws://h;AccessKey=k",
            "Endpoint",
            UrlError::UnsupportedScheme("ws".to_owned()),
        ),
        (
            "Endpoint=localhost:8080;AccessKey=k",
            "Endpoint",
            UrlError::NotAbsolute,
        ),
        (
            "Endpoint=127.0.0.1;AccessKey=k",
            "Endpoint",
            UrlError::NotAbsolute,
        ),
        (
            "Endpoint=http://;AccessKey=k",
            "Endpoint",
            UrlError::InvalidHost,
        ),
        (
            "Endpoint=http://a b;AccessKey=k",
            "Endpoint",
            UrlError::InvalidHost,
        ),
        (
            "Endpoint=http://[::g]/;AccessKey=k",
            "Endpoint",
            UrlError::InvalidHost,
        ),
        (
            "Endpoint=http://u:p@h;AccessKey=k",
            "Endpoint",
            UrlError::UserInfo,
        ),
        (
            "Endpoint=http://h/a b;AccessKey=k",
            "Endpoint",
            UrlError::InvalidCharacter,
        ),
        (
            "Endpoint=http://h/?x=1;AccessKey=k",
            "Endpoint",
            UrlError::QueryNotAllowed,
        ),
        (
            "Endpoint=http://h;AccessKey=k;ClientEndpoint=h2",
            "ClientEndpoint",
            UrlError::NotAbsolute,
        ),
        (
            "Endpoint=http://h;AccessKey=k;ServerEndpoint=http://s:x",
            "ServerEndpoint",
            UrlError::InvalidPort,
        ),
    ];
    for (input, key, source) in cases {
        assert_eq!(
            ConnectionString::parse(input),
            Err(ConnectionStringError::InvalidUrl { key, source }),
            "{input}"
        );
    }
}

#[test]
fn connection_string_entry_without_equals() {
    let error = ConnectionString::parse("Endpoint=http://h;;secretkeywithoutequals;").unwrap_err();
    assert_eq!(error, ConnectionStringError::MissingEquals { index: 2 });
    assert!(!error.to_string().contains("secret"));
}

// ---------------------------------------------------------------------------------------
// Audiences and URLs

#[test]
fn audience_parse_and_render() {
    let audience = Audience::parse("HTTPS://Host:8443/Client/?x=1&Hub=Chat#f").unwrap();
    assert_eq!(audience.scheme(), Scheme::Https);
    assert_eq!(audience.host(), "host");
    assert_eq!(audience.path(), "/Client/");
    assert_eq!(audience.hub(), Some("chat"));
    assert_eq!(audience.to_string(), "https://host/Client/?hub=chat");
    let classic = Audience::new(Scheme::Http, "h", "aspnetclient", None);
    assert_eq!(classic.to_string(), "http://h/aspnetclient");
    assert!(classic.matches("http://h:81/aspnetclient?anything"));
    assert!(!classic.matches("http://h/aspnetclient/extra"));
}

#[test]
fn http_url_parse_and_render() {
    let url = HttpUrl::parse("http://[2001:DB8::1]:8080/a/b?q=1#frag").unwrap();
    assert_eq!(url.host(), "[2001:db8::1]");
    assert_eq!(url.port(), Some(8080));
    assert_eq!(url.path(), "/a/b");
    assert_eq!(url.query(), Some("q=1"));
    assert_eq!(url.fragment(), Some("frag"));
    assert_eq!(url.to_string(), "http://[2001:db8::1]:8080/a/b?q=1#frag");
    assert_eq!(url.to_string().parse::<HttpUrl>(), Ok(url));
    let url = HttpUrl::parse("https://h").unwrap();
    assert_eq!(
        (url.port(), url.port_or_default(), url.path()),
        (None, 443, "")
    );
}

// ---------------------------------------------------------------------------------------
// Fuzz entry point

#[test]
fn fuzz_jwt_handles_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/jwt");
    let mut seen = 0;
    let keys: [&[u8]; 2] = [FUZZ_OLD_KEY, FUZZ_KEY];
    let validation = Validation::new().with_audience(AudienceCheck::Endpoint(
        Audience::parse(FUZZ_AUDIENCE).unwrap(),
    ));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        fuzz_jwt(&data);
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("valid_") {
            let token = std::str::from_utf8(&data).unwrap();
            assert!(
                verify(token, &keys, FUZZ_NOW, &validation).is_ok(),
                "{name}"
            );
        }
        seen += 1;
    }
    assert!(seen >= 8, "expected a seed corpus in {}", dir.display());
}

#[test]
fn fuzz_jwt_handles_edge_inputs() {
    let valid = sign(&client_claims(), KEY, Algorithm::Hs256);
    let inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"..".to_vec(),
        vec![0xff, 0xfe, b'.', 0x00],
        valid.into_bytes(),
        br#"{"exp":1.5e300,"aud":[]}"#.to_vec(),
        br#"{"exp":5,"nbf":10,"x":[1.25,{"y":null}],"nameid":7}"#.to_vec(),
        br#"{"aud":null,"exp":null}"#.to_vec(),
        b"Endpoint=http://[::1];AccessKey=k;Port=1;".to_vec(),
        b"http://h/?hub=%FF%FE&hub=%ff%fe".to_vec(),
        "http://h/?hub=\u{130}".as_bytes().to_vec(),
        b"http://h/?hub=%C4%B0".to_vec(),
    ];
    for input in inputs {
        fuzz_jwt(&input);
    }
}

/// A remembered token's audiences are parsed once ([`AudienceParts`]); they must name exactly
/// the endpoints that [`Audience::matches`] accepts, as the relay checked them before.
#[test]
fn audience_parts_name_what_an_audience_matches() {
    let auds = [
        "http://localhost/client/?hub=chat",
        "https://Relay.Example:8443/client?hub=Chat",
        "http://localhost/client//?hub=chat&hub=CHAT",
        "http://localhost/client/?hub=chat&hub=other",
        "http://localhost/client/?hub=chat&hub=chat&hub=Chat",
        "http://localhost/client/?hub=chat&hub=chat&hub=other",
        "http://localhost/client/?hub=",
        "http://localhost/client/?hub=&hub=",
        "http://localhost/client/?hub=&hub=chat",
        "http://localhost/client/?HUB=ch%61t",
        "http://localhost/client/",
        "http://localhost/Client/?hub=chat",
        "http://localhost/aspnetclient?hub=%C3%84rger",
        "http://localhost/aspnetclient",
        "http://localhost/server/?hub=chat#frag",
        "http://localhost?hub=chat",
        "ftp://localhost/client/?hub=chat",
        "not a url",
        "",
    ];
    let paths = [
        "/client/",
        "/client",
        "/aspnetclient",
        "/server/",
        "/api/status",
        "/",
    ];
    let hubs = [
        None,
        Some("chat"),
        Some("CHAT"),
        Some("other"),
        Some("ärger"),
        Some(""),
    ];
    let mut named = 0;
    for aud in auds {
        let parts = AudienceParts::parse(aud);
        for path in paths {
            for hub in hubs {
                let expected = Audience::parse(aud)
                    .is_ok_and(|a| Audience::new(a.scheme(), a.host(), path, hub).matches(aud));
                let got = parts.as_ref().is_some_and(|p| p.names(path, hub));
                assert_eq!(got, expected, "{aud:?} for {path} {hub:?}");
                named += usize::from(got);
            }
        }
    }
    // Not vacuous: many pairs are named, and many are not.
    assert!(named > 20, "{named}");
}
