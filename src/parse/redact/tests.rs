//! The detectors one by one; the corpus test is `tests/it/redaction_corpus.rs`.

use super::*;

fn r(s: &str) -> String {
    Redactor::builtin().redact(s).into_owned()
}

fn unchanged(s: &str) {
    assert!(
        matches!(Redactor::builtin().redact(s), Cow::Borrowed(_)),
        "changed: {s} -> {}",
        r(s)
    );
}

#[test]
fn thoth_keys() {
    assert_eq!(
        r("key=thoth_live_AbC123xyz789QQ end"),
        "key=[REDACTED:thoth-key] end"
    );
    assert_eq!(r("thoth_test_0123456789abcdef"), "[REDACTED:thoth-key]");
    unchanged("see thoth_live_docs for the key format");
    unchanged("mythoth_live_ is a prefix");
}

#[test]
fn aws_access_keys() {
    assert_eq!(
        r("aws AKIAIOSFODNN7EXAMPLE ok"),
        "aws [REDACTED:aws-access-key] ok"
    );
    assert_eq!(r("ASIAY34FZKBOKMUTVV7A"), "[REDACTED:aws-access-key]");
    unchanged("AKIA is the prefix of access keys");
    unchanged("XAKIAIOSFODNN7EXAMPLE1");
    unchanged("akiaiosfodnn7example");
}

#[test]
fn github_tokens() {
    let t = format!("ghp_{}", "a1B2".repeat(9));
    assert_eq!(r(&format!("token {t}")), "token [REDACTED:github-token]");
    let pat = format!("github_pat_{}", "x".repeat(30));
    assert_eq!(r(&pat), "[REDACTED:github-token]");
    unchanged("ghp_short");
    unchanged("the ghs_ prefix marks server tokens");
}

#[test]
fn slack_tokens() {
    assert_eq!(
        r("xoxb-123456789012-abcdefABCDEF1234"),
        "[REDACTED:slack-token]"
    );
    unchanged("xoxo hugs and kisses");
    unchanged("xoxb-");
}

#[test]
fn jwts() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    assert_eq!(r(&format!("jwt={jwt};")), "jwt=[REDACTED:jwt];");
    unchanged("eyJ alone is not a token");
    unchanged("eyJhbGciOiJIUzI1NiJ9 without the other parts");
}

#[test]
fn bearer_tokens() {
    assert_eq!(
        r("Authorization: Bearer abcDEF123456789.xyz"),
        "Authorization: Bearer [REDACTED:bearer]"
    );
    assert_eq!(r("bearer 0123456789abcdef=="), "bearer [REDACTED:bearer]");
    unchanged("the bearer of bad news");
    unchanged("Bearer token authentication");
}

#[test]
fn case_insensitive_detectors_see_any_case_through_the_lowercase_screen() {
    assert_eq!(r("BEARER abcDEF123456789.xyz"), "BEARER [REDACTED:bearer]");
    assert_eq!(
        r("PassWord=hunter2"),
        "PassWord=[REDACTED:secret-assignment]"
    );
    assert_eq!(r("DB_PWD: s3cr3t"), "DB_PWD: [REDACTED:secret-assignment]");
    assert_eq!(
        r("X-Api-Key=abcdef"),
        "X-Api-Key=[REDACTED:secret-assignment]"
    );
    // Case-sensitive detectors get a lowercase candidate, and their own
    // regex still decides.
    unchanged("akiaiosfodnn7example is not a key in lowercase");
}

#[test]
fn private_keys() {
    let pem =
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----";
    assert_eq!(r(&format!("x {pem} y")), "x [REDACTED:private-key] y");
    assert_eq!(
        r("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r (cut)"),
        "[REDACTED:private-key]"
    );
    unchanged("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    unchanged("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----");
}

#[test]
fn passwords_in_urls() {
    assert_eq!(
        r("postgres://app:s3cr3t@db.internal:5432/app"),
        "postgres://app:[REDACTED:url-password]@db.internal:5432/app"
    );
    unchanged("https://example.com:8443/path?q=1");
    unchanged("https://user@example.com/path");
    unchanged("see https://docs.rs/regex/latest/regex/");
}

#[test]
fn password_pairs() {
    assert_eq!(
        r("password=hunter2 next"),
        "password=[REDACTED:secret-assignment] next"
    );
    assert_eq!(
        r(r#"{"password": "hunter2", "user": "bob"}"#),
        r#"{"password": "[REDACTED:secret-assignment]", "user": "bob"}"#
    );
    assert_eq!(
        r("DB_PASSWD: abc&x=1"),
        "DB_PASSWD: [REDACTED:secret-assignment]&x=1"
    );
    assert_eq!(
        r("client_secret=abc123"),
        "client_secret=[REDACTED:secret-assignment]"
    );
    assert_eq!(r("API_KEY=zzz"), "API_KEY=[REDACTED:secret-assignment]");
    assert_eq!(
        r(r#"{\"password\":\"x\"}"#),
        r#"{\"password\":\"[REDACTED:secret-assignment]\"}"#
    );
    unchanged("reset your password via the link");
    unchanged("passwordless login");
    unchanged("password=");
    unchanged("the secret sauce");
}

#[test]
fn user_patterns_add_to_the_builtins() {
    let red = Redactor::new(&[UserPattern {
        name: "employee-id".into(),
        regex: r"\bEMP-\d{6}\b".into(),
    }])
    .unwrap();
    assert_eq!(
        red.redact("EMP-123456 AKIAIOSFODNN7EXAMPLE"),
        "[REDACTED:employee-id] [REDACTED:aws-access-key]"
    );
    assert!(matches!(red.redact("EMP-12"), Cow::Borrowed(_)));
    let bad = Redactor::new(&[UserPattern {
        name: "broken".into(),
        regex: "(".into(),
    }]);
    assert!(bad.unwrap_err().to_string().contains("broken"));
}

#[test]
fn json_values_are_redacted_inside() {
    let raw: Box<RawValue> = serde_json::from_str(
        r#"{"env":{"TOKEN":"ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},"n":1}"#,
    )
    .unwrap();
    match Redactor::builtin().redact_json("", &raw) {
        Some(RedactedJson::Value(v)) => {
            assert_eq!(v["env"]["TOKEN"], "[REDACTED:secret-assignment]");
            assert_eq!(v["n"], 1);
        }
        _ => panic!("expected a redacted value"),
    }
    let clean: Box<RawValue> = serde_json::from_str(r#"{"a":"b"}"#).unwrap();
    assert!(Redactor::builtin().redact_json("", &clean).is_none());
}

#[test]
fn a_detector_can_be_disabled_by_name_and_an_unknown_name_is_refused() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let without = Redactor::with_disabled(&[], &["jwt".to_string()]).unwrap();
    assert_eq!(without.redact(jwt), jwt);
    assert_eq!(
        without.redact("AKIAIOSFODNN7EXAMPLE"),
        "[REDACTED:aws-access-key]",
        "the others still run"
    );
    let e = Redactor::with_disabled(&[], &["jwtt".to_string()]).unwrap_err();
    assert!(e.to_string().contains("`jwtt`"), "{e}");
}

#[test]
fn escapes_do_not_hide_a_secret() {
    let token = format!("ghp_{}", "a1B2".repeat(9));
    let escaped = format!("token \\u0067{}", &token[1..]);
    assert_eq!(r(&escaped), "token [REDACTED:github-token]");
    assert_eq!(
        r("postgres:\\/\\/app:s3cr3t@db\\/app"),
        "postgres://app:[REDACTED:url-password]@db/app"
    );
    unchanged("a path C:\\\\Users\\\\u0000 with no secret");
}

#[test]
fn quoted_values_go_whole_and_placeholders_stay() {
    assert_eq!(
        r(r#"{"password": "two words, and a comma"}"#),
        r#"{"password": "[REDACTED:secret-assignment]"}"#
    );
    assert_eq!(
        r("export CLIENT_SECRET='a b c'"),
        "export CLIENT_SECRET='[REDACTED:secret-assignment]'"
    );
    unchanged("export API_TOKEN=$VAULT_TOKEN");
    unchanged("return authenticate(user=user, password=password)");
    unchanged("PWD=/home/ana/project");
    unchanged("error: invalid token: signature mismatch");
}

#[test]
fn each_screen_stays_small_enough_for_its_simd_prefilter() {
    // Past 64 patterns aho-corasick gives up Teddy, and the screen that
    // every string goes through gets several times slower.
    let red = Redactor::builtin();
    assert!(
        red.screen.patterns_len() <= 64,
        "{}",
        red.screen.patterns_len()
    );
    assert!(red.names.patterns_len() <= 64);
}

#[test]
fn many_keys_redacted_alike_all_stay() {
    let keys: Vec<String> = (0..20_000)
        .map(|i| format!("\"AKIA{:016}\": {i}", i))
        .collect();
    let raw: Box<RawValue> = serde_json::from_str(&format!("{{{}}}", keys.join(","))).unwrap();
    let Some(RedactedJson::Value(v)) = Redactor::builtin().redact_json("", &raw) else {
        panic!("expected a redacted tree");
    };
    assert_eq!(v.as_object().unwrap().len(), 20_000, "no entry lost");
    assert!(v.get("[REDACTED:aws-access-key]").is_some());
}
