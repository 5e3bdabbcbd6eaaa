//! Pipeline secrets: the dotenv format of secrets files (`orch ci --secret-file`, the
//! server's `secrets_file`).
//!
//! A parse error gives a line and column only, never the text around it: a malformed line
//! may be half of a secret.

use std::collections::HashMap;

use crate::pipeline::interp;

/// Secret values shorter than this are not masked in logs (masking `1` would hide every
/// `1`); [`crate::sched::execute`] warns about each.
pub const MIN_MASKED: usize = 4;

/// Reads a dotenv file: `NAME=value` lines, `#` comments, an optional `export `. A value in
/// double quotes may span lines and knows the escapes `\n`, `\t`, `\"` and `\\`; one in
/// single quotes may span lines and is taken as written. So a private key fits:
/// `KEY="-----BEGIN ...` up to the closing quote. A name set twice is an error.
pub fn parse_dotenv(text: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected NAME=value", i + 1));
        };
        let k = k.trim();
        if !interp::is_identifier(k) {
            return Err(format!(
                "line {}: the name before `=` is not a valid name (letters, digits and `_`, not starting with a digit)",
                i + 1
            ));
        }
        let v = v.trim();
        let value = match v.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let mut value = String::new();
                let mut rest = v[1..].to_string();
                let mut at = i;
                loop {
                    if let Some(after) = unquote(&rest, quote, &mut value) {
                        let after = after.trim();
                        if !(after.is_empty() || after.starts_with('#')) {
                            return Err(format!(
                                "line {}: unexpected text after the closing quote of `{k}`'s value",
                                at + 1
                            ));
                        }
                        break;
                    }
                    match lines.next() {
                        Some((j, next)) => {
                            value.push('\n');
                            rest = next.to_string();
                            at = j;
                        }
                        None => return Err(format!("line {}: the quoted value of `{k}` is never closed", i + 1)),
                    }
                }
                value
            }
            _ => v.to_string(),
        };
        if let Some(first) = first_line.insert(k.to_string(), i + 1) {
            return Err(format!("line {}: `{k}` is set again (first on line {first})", i + 1));
        }
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

/// Appends `text` up to the closing `quote` to `value` (escapes read in double quotes);
/// returns what follows the quote, or `None` when the line ends first.
fn unquote<'a>(text: &'a str, quote: char, value: &mut String) -> Option<&'a str> {
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c == quote => return Some(&text[at + 1..]),
            '\\' if quote == '"' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, e @ ('"' | '\\'))) => value.push(e),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            },
            c => value.push(c),
        }
    }
    None
}

/// The names of secrets too short to be masked.
pub fn too_short<'a>(secrets: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    let mut names: Vec<String> = secrets
        .into_iter()
        .filter(|(_, v)| {
            let v = v.trim_end_matches(['\r', '\n']);
            !v.is_empty() && !v.contains('\n') && v.chars().count() < MIN_MASKED
        })
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv() {
        let m = parse_dotenv("# c\nA=1\nexport B=\"two words\"\nC='x=y'\n\n").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "x=y");
        assert!(parse_dotenv("nope").is_err());
        // Values over several lines, escapes, comments after a quoted value.
        let m = parse_dotenv(
            "KEY=\"-----BEGIN\nabc\n-----END\"  # a key\nESC=\"a\\nb \\\"q\\\" c:\\\\\"\nRAW='x\\ny\nz'\nN=2\n",
        )
        .unwrap();
        assert_eq!(m["KEY"], "-----BEGIN\nabc\n-----END");
        assert_eq!(m["ESC"], "a\nb \"q\" c:\\");
        assert_eq!(m["RAW"], "x\\ny\nz");
        assert_eq!(m["N"], "2");
        assert!(parse_dotenv("K=\"open\nmore\n").unwrap_err().contains("never closed"));
        assert!(parse_dotenv("K=\"a\" b\n").unwrap_err().contains("unexpected text"));
        assert!(parse_dotenv("1A=x").is_err());
    }

    #[test]
    fn errors_never_quote_the_file() {
        // Each of these lines could be (part of) a secret value: no error shows it.
        for text in [
            "hunter2-secret-part\n",
            "hunter2 secret=part\n",
            "K=\"hunter2\" hunter2-tail\n",
            "K='hunter2\nhunter2-second' hunter2-tail\n",
            "9hunter2=x\n",
            "K=\"hunter2-never-closed\n",
        ] {
            let e = parse_dotenv(text).unwrap_err();
            assert!(!e.contains("hunter2"), "{text:?} gave {e}");
            assert!(e.starts_with("line "), "{e}");
        }
        assert_eq!(
            parse_dotenv("K='a\nb' tail\n").unwrap_err(),
            "line 2: unexpected text after the closing quote of `K`'s value"
        );
    }

    #[test]
    fn a_name_set_twice_is_an_error() {
        let e = parse_dotenv("TOKEN=one\nOTHER=x\nexport TOKEN=two\n").unwrap_err();
        assert_eq!(e, "line 3: `TOKEN` is set again (first on line 1)");
    }

    #[test]
    fn short_values_are_named() {
        let s: HashMap<String, String> = [("A", "1"), ("B", "abcd"), ("C", "ab\n"), ("D", ""), ("E", "x\nlonger")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(too_short(&s), ["A", "C"]);
    }
}
