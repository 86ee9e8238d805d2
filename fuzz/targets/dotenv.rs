//! Mastodon's `.env.production` (dotenv syntax), read by `mailer check --mastodon-env`.
//!
//! Invariants: every error names a line of the text; every variable name is a valid dotenv
//! name; the variables written back double-quoted (escaping `\`, `"`, CR and LF), and again
//! single-quoted with `export` where the value allows it, parse to the same variables. Errors
//! cannot echo the text: their reason is a `&'static str`.

use mailer_core::check::mastodon::parse;

fn double_quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = match parse(text) {
        Ok(env) => env,
        Err(errors) => {
            let lines = text.split('\n').count();
            assert!(!errors.is_empty(), "failure without an error");
            for e in &errors {
                assert!(e.line >= 1 && e.line <= lines, "{e} outside the text");
            }
            return;
        }
    };
    let mut written = String::new();
    let mut single = String::new();
    for (key, value) in env.vars() {
        assert!(
            !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
            "invalid name {key:?} from {text:?}"
        );
        written.push_str(&format!("{key}={}\r\n", double_quoted(value)));
        if !value.contains(['\'', '\n', '\r']) {
            single.push_str(&format!("export {key}='{value}' # comment\n"));
        } else {
            single.push_str(&format!("{key} = {}\n", double_quoted(value)));
        }
    }
    assert_eq!(
        parse(&written).as_ref(),
        Ok(&env),
        "written back as {written:?}"
    );
    assert_eq!(
        parse(&single).as_ref(),
        Ok(&env),
        "written back as {single:?}"
    );
}
