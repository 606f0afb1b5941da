//! The built-in secret detectors: vendor formats first (a fixed prefix or
//! shape), then secrets known by their context (a flag, a header, a name).
//!
//! Each detector names the substrings that must occur (lowercased) for it to
//! match at all: one Aho-Corasick pass over the text decides which regexes
//! run. A regex with groups named `s`, `s2`, `s3`, `s4` replaces the first
//! of them that took part in the match, keeping the rest (a key name, the
//! quotes around a value); without such groups the whole match goes.
//! Order matters: a span replaced by one detector is not seen by the next.

/// A built-in detector.
pub struct Builtin {
    /// The name in `[REDACTED:<kind>]`, in `redaction.disable` and in
    /// `parse --explain`.
    pub kind: &'static str,
    /// Lowercase substrings, one of which occurs in any match.
    pub triggers: &'static [&'static str],
    /// The triggers are case-sensitive and looked for in the text as it is:
    /// for a short prefix whose lowercase form is everywhere (`SK`, `SG.`).
    pub exact: bool,
    /// Also runs when a word of [`SECRET_WORDS`] occurs.
    pub by_name: bool,
    pub pattern: &'static str,
    /// The secret must hold a digit: it tells a random key from a word
    /// with the same prefix (`sk-learn-compatible-estimators`).
    pub needs_digit: bool,
    /// A value known by its context only: kept when it is a placeholder
    /// (`$VAR`, `****`, `<password>`, an identifier of code).
    pub contextual: bool,
}

const fn vendor(
    kind: &'static str,
    triggers: &'static [&'static str],
    pattern: &'static str,
) -> Builtin {
    Builtin {
        kind,
        triggers,
        exact: false,
        by_name: false,
        pattern,
        needs_digit: false,
        contextual: false,
    }
}

/// A value known by its context (placeholders kept), woken by a secret's
/// name as well as by its own triggers.
const fn context(
    kind: &'static str,
    triggers: &'static [&'static str],
    pattern: &'static str,
) -> Builtin {
    Builtin {
        by_name: true,
        contextual: true,
        ..vendor(kind, triggers, pattern)
    }
}

/// A value after a flag or a name: double-quoted (JSON escapes allowed),
/// single-quoted, quoted with escaped quotes (JSON inside a JSON string),
/// or bare up to a space or a delimiter. Quoted values go whole.
macro_rules! value {
    () => {
        r#"(?:"(?P<s>(?:[^"\\\n]|\\.)*)"|'(?P<s2>[^'\n]*)'|\\"(?P<s3>(?:[^"\\\n]|\\[^"\n])*)\\"|(?P<s4>[^\s"'\\&;<>=(),][^\s"'\\&;<>]*))"#
    };
}

/// Names that say their value is a secret, as the end of a longer name
/// (`DB_PASSWORD`, `aws_secret_access_key`, `clientSecret`, `_authToken`).
macro_rules! secret_name {
    () => {
        r"(?i:passw(?:or)?d|passphrase|[_\-]pwd|[_\-]pass|secret|credentials?|(?:api|secret|access|private|signing|encryption|master|client|account|auth|app|service|license|subscription|storage|webhook|deploy|ssh|shared)[_\-]?key|token)|(?-i:[A-Z0-9]_KEY)"
    };
}

pub const SECRET_NAME: &str = concat!(r"^[A-Za-z0-9_.\-]*?(?:", secret_name!(), r")$");

pub const BUILTINS: &[Builtin] = &[
    vendor(
        "private-key",
        &["-----begin"],
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)",
    ),
    vendor(
        "thoth-key",
        &["thoth_"],
        r"\bthoth_(?:live|test)_[A-Za-z0-9_\-]{8,}",
    ),
    vendor(
        "aws-access-key",
        &["akia", "asia"],
        r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    ),
    vendor(
        "anthropic-key",
        &["sk-ant-"],
        r"\bsk-ant-[A-Za-z0-9_\-]{20,}",
    ),
    Builtin {
        needs_digit: true,
        ..vendor(
            "openai-key",
            &["sk-"],
            r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}",
        )
    },
    vendor(
        "stripe-key",
        &["k_live_", "k_test_", "whsec_"],
        r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,})",
    ),
    vendor(
        "github-token",
        &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
    ),
    vendor(
        "gitlab-token",
        &["glpat-", "gldt-", "glrt-", "glptt-", "gloas-", "gr1348941"],
        r"\b(?:gl(?:pat|dt|rt|ptt|oas)-[A-Za-z0-9_\-]{20,}|GR1348941[A-Za-z0-9_\-]{20,})",
    ),
    vendor(
        "google-api-key",
        &["aiza", "ya29.", "gocspx-"],
        r"\b(?:AIza[0-9A-Za-z_\-]{35}|ya29\.[0-9A-Za-z_\-]{20,}|GOCSPX-[0-9A-Za-z_\-]{20,})",
    ),
    vendor(
        "slack-token",
        &["xox", "xapp-"],
        r"\b(?:xox[abposre]-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{10,})",
    ),
    vendor(
        "slack-webhook",
        &["hooks.slack.com"],
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>[A-Za-z0-9_/\-]{8,})",
    ),
    vendor(
        "discord-webhook",
        &["/api/webhooks/"],
        r"discord(?:app)?\.com/api/webhooks/(?P<s>[0-9]+/[A-Za-z0-9_\-]{20,})",
    ),
    vendor("npm-token", &["npm_"], r"\bnpm_[A-Za-z0-9]{36}\b"),
    vendor("huggingface-token", &["hf_"], r"\bhf_[A-Za-z0-9]{30,}\b"),
    Builtin {
        exact: true,
        ..vendor(
            "sendgrid-key",
            &["SG."],
            r"\bSG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{30,50}",
        )
    },
    vendor(
        "digitalocean-token",
        &["_v1_"],
        r"\bdo[por]_v1_[a-f0-9]{64}\b",
    ),
    vendor(
        "databricks-token",
        &["dapi"],
        r"\bdapi[a-f0-9]{32}(?:-[0-9]+)?\b",
    ),
    vendor(
        "azure-storage-key",
        &["accountkey", "sharedaccesskey"],
        r"(?i:AccountKey|SharedAccessKey)\s*=\s*(?P<s>[A-Za-z0-9+/]{20,}={0,2})",
    ),
    Builtin {
        exact: true,
        ..vendor("twilio-key", &["SK"], r"\bSK[0-9a-fA-F]{32}\b")
    },
    vendor("mailgun-key", &["key-"], r"\bkey-[0-9a-f]{32}\b"),
    vendor(
        "jwt",
        &["eyj"],
        r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    ),
    vendor(
        "basic-auth",
        &["authorization"],
        r#"(?i:authorization)["']?\s*[:=]\s*["']?(?i:basic)\s+(?P<s>[A-Za-z0-9+/]{6,}={0,2})"#,
    ),
    vendor(
        "bearer",
        &["bearer"],
        r"(?i:\bbearer)\s+(?P<s>[A-Za-z0-9\-._~+/]{12,}=*)",
    ),
    vendor(
        "url-password",
        &["://"],
        r#"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@"'<>]+:(?P<s>[^\s@/"'<>]+)@"#,
    ),
    context(
        "url-secret-param",
        &[
            "sig=",
            "signature=",
            "token=",
            "secret=",
            "password=",
            "passwd=",
            "pwd=",
            "key=",
            "credential=",
            "auth=",
        ],
        r#"[?&;](?i:[A-Za-z0-9_.\-]*(?:sig|signature|token|secret|password|passwd|pwd|key|credential|auth))=(?P<s>[^&#\s"'<>\\]+)"#,
    ),
    Builtin {
        by_name: false,
        ..context(
            "cookie",
            &["cookie"],
            r#"(?i:\b(?:set-)?cookie)["']?\s*:\s*["']?(?P<s>[^\r\n"']+)"#,
        )
    },
    Builtin {
        by_name: false,
        ..context(
            "mysql-password",
            &["mysql", "mariadb"],
            r#"\b(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)\b[^\n|;&]*?\s-p(?:"(?P<s>[^"\n]*)"|'(?P<s2>[^'\n]*)'|(?P<s3>[^\s"']+))"#,
        )
    },
    Builtin {
        by_name: false,
        ..context(
            "sshpass-password",
            &["sshpass"],
            r#"\bsshpass\b[^\n|;&]*?\s-p\s*(?:"(?P<s>[^"\n]*)"|'(?P<s2>[^'\n]*)'|(?P<s3>[^\s"']+))"#,
        )
    },
    Builtin {
        by_name: false,
        ..context(
            "curl-user",
            &["curl"],
            r#"\bcurl\b[^\n|;&]*?\s(?:-u|--user)(?:\s+|=)?["']?[^\s:"']*:(?P<s>[^\s"']+)"#,
        )
    },
    context(
        "cli-password",
        &[
            "-pass",
            "-token",
            "-api-key",
            "-apikey",
            "-secret",
            "-client-secret",
            "-auth-token",
            "-access-token",
        ],
        concat!(
            r"(?:^|\s)--?(?i:password|passwd|pass|db-password|token|api-key|apikey|secret|client-secret|auth-token|access-token)(?:=|\s+)",
            value!()
        ),
    ),
    context(
        "secret-assignment",
        &[],
        concat!(
            r#"\b[A-Za-z0-9_.\-]*?(?:"#,
            secret_name!(),
            r#")\\?["']?\s*(?:=>|:=|[=:])\s*"#,
            value!()
        ),
    ),
];

/// Words of the names secrets go by (lowercase): where one occurs, the
/// detectors marked `by_name` run. Kept apart from the other triggers so
/// that each automaton stays small enough for its SIMD prefilter.
pub const SECRET_WORDS: &[&str] = &[
    "passw",
    "passphrase",
    "pwd",
    "_pass",
    "-pass",
    "secret",
    "credential",
    "token",
    "_key",
    "-key",
    "apikey",
    "accesskey",
    "privatekey",
    "secretkey",
    "signingkey",
    "accountkey",
    "sshkey",
];
