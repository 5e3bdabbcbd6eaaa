//! GitHub Actions expressions (`${{ ... }}`), the small part of them that has an orch
//! equivalent: context references, string literals, `==`, `!=`, `!`, `&&`, `||` and a few
//! functions. Anything else does not parse, and the caller reports it.

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A context reference, `matrix.python-version`, `github.ref`.
    Ref(String),
    /// A literal; numbers and booleans keep their text.
    Lit(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    /// `a == b` (`true`) or `a != b` (`false`).
    Eq(Box<Expr>, Box<Expr>, bool),
    Call(String, Vec<Expr>),
}

/// One piece of a string that may hold `${{ ... }}`.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Text(String),
    /// The text between `${{` and `}}`, trimmed.
    Expr(String),
}

/// Splits `s` into text and expressions. An unclosed `${{` is text.
pub fn segments(s: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${{") {
        let Some(j) = rest[i + 3..].find("}}") else { break };
        if i > 0 {
            out.push(Segment::Text(rest[..i].to_string()));
        }
        out.push(Segment::Expr(rest[i + 3..i + 3 + j].trim().to_string()));
        rest = &rest[i + 3 + j + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest.to_string()));
    }
    out
}

/// The expression of an `if:`: GitHub accepts it with or without `${{ }}`.
pub fn condition_text(s: &str) -> String {
    let t = s.trim();
    match t.strip_prefix("${{").and_then(|r| r.strip_suffix("}}")) {
        Some(inner) if !inner.contains("${{") => inner.trim().to_string(),
        _ => t.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Lit(String),
    Op(&'static str),
}

fn tokens(s: &str) -> Option<Vec<Tok>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            // '' is a quote inside a string.
            let mut text = String::new();
            i += 1;
            loop {
                let rest = s.get(i..)?;
                let q = rest.find('\'')?;
                text.push_str(&rest[..q]);
                i += q + 1;
                if b.get(i) == Some(&b'\'') {
                    text.push('\'');
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Tok::Lit(text));
        } else if let Some(op) = ["==", "!=", "&&", "||"].into_iter().find(|op| s[i..].starts_with(op)) {
            out.push(Tok::Op(op));
            i += 2;
        } else if let Some(op) = ["!", "(", ")", ","].into_iter().find(|op| s[i..].starts_with(op)) {
            out.push(Tok::Op(op));
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'-' | b'.')) {
                i += 1;
            }
            let word = &s[start..i];
            let numeric = word.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.');
            if numeric || matches!(word, "true" | "false" | "null") {
                out.push(Tok::Lit(if word == "null" { String::new() } else { word.to_string() }));
            } else {
                out.push(Tok::Ident(word.to_string()));
            }
        } else {
            // `<`, `>`, `[...]`, `*`: not part of what orch can express.
            return None;
        }
    }
    Some(out)
}

/// Parses an expression (without `${{ }}`); `None` when it uses anything beyond the subset.
pub fn parse(s: &str) -> Option<Expr> {
    let toks = tokens(s)?;
    let mut p = Parser { toks, at: 0 };
    let e = p.or()?;
    (p.at == p.toks.len()).then_some(e)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.at += 1;
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Option<Expr> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Some(e)
    }
    fn and(&mut self) -> Option<Expr> {
        let mut e = self.cmp()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.cmp()?));
        }
        Some(e)
    }
    fn cmp(&mut self) -> Option<Expr> {
        let a = self.unary()?;
        for (op, eq) in [("==", true), ("!=", false)] {
            if self.eat(op) {
                return Some(Expr::Eq(Box::new(a), Box::new(self.unary()?), eq));
            }
        }
        Some(a)
    }
    fn unary(&mut self) -> Option<Expr> {
        if self.eat("!") {
            return Some(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            return self.eat(")").then_some(e);
        }
        match self.toks.get(self.at).cloned()? {
            Tok::Lit(l) => {
                self.at += 1;
                Some(Expr::Lit(l))
            }
            Tok::Ident(name) => {
                self.at += 1;
                if !self.eat("(") {
                    return Some(Expr::Ref(name));
                }
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        args.push(self.or()?);
                        if self.eat(")") {
                            break;
                        }
                        if !self.eat(",") {
                            return None;
                        }
                    }
                }
                Some(Expr::Call(name, args))
            }
            Tok::Op(_) => None,
        }
    }
}

/// The conjuncts of `a && b && c`.
pub fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::And(a, b) => {
            let mut v = conjuncts(a);
            v.extend(conjuncts(b));
            v
        }
        other => vec![other],
    }
}

/// The disjuncts of `a || b || c`.
pub fn disjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Or(a, b) => {
            let mut v = disjuncts(a);
            v.extend(disjuncts(b));
            v
        }
        other => vec![other],
    }
}

/// orch's name of a GitHub event, for `when.event`.
pub fn event_name(github: &str) -> Option<&'static str> {
    match github {
        "push" => Some("push"),
        "pull_request" | "pull_request_target" => Some("pull_request"),
        "workflow_dispatch" => Some("manual"),
        _ => None,
    }
}

/// The built-in variable a `github.*` (or `runner.*`) reference maps to, from the table of
/// docs/translate.md. `github.ref_name` is the branch or the tag: only the shell can say
/// which, so it is left to [`shell_builtin`].
pub fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        "github.sha" => "ORCH_COMMIT",
        "github.head_ref" => "ORCH_BRANCH",
        "github.base_ref" => "ORCH_BASE_BRANCH",
        "github.event_name" => "ORCH_EVENT",
        "github.repository" => "ORCH_REPO",
        "github.run_id" | "github.run_number" => "ORCH_RUN_ID",
        "github.job" => "ORCH_STEP",
        "github.workspace" => "ORCH_WORKSPACE",
        "github.event.pull_request.number" | "github.event.number" => "ORCH_PR",
        _ => return None,
    })
}

/// The shell text of a `github.*` reference that needs the shell.
pub fn shell_builtin(name: &str) -> Option<&'static str> {
    match name {
        "github.ref_name" => Some("${ORCH_TAG:-$ORCH_BRANCH}"),
        "runner.os" => Some("Linux"),
        "runner.temp" => Some("/tmp"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Box<Expr> {
        Box::new(Expr::Ref(s.into()))
    }
    fn l(s: &str) -> Box<Expr> {
        Box::new(Expr::Lit(s.into()))
    }

    #[test]
    fn splits_text_and_expressions() {
        assert_eq!(
            segments("a-${{ matrix.x }}-${{hashFiles('b')}}"),
            [
                Segment::Text("a-".into()),
                Segment::Expr("matrix.x".into()),
                Segment::Text("-".into()),
                Segment::Expr("hashFiles('b')".into())
            ]
        );
        assert_eq!(segments("${{ open"), [Segment::Text("${{ open".into())]);
        assert_eq!(condition_text("${{ github.ref == 'x' }}"), "github.ref == 'x'");
        assert_eq!(condition_text("always()"), "always()");
    }

    #[test]
    fn parses_the_subset() {
        assert_eq!(
            parse("github.event_name == 'push' && github.ref == 'refs/heads/main'"),
            Some(Expr::And(
                Box::new(Expr::Eq(r("github.event_name"), l("push"), true)),
                Box::new(Expr::Eq(r("github.ref"), l("refs/heads/main"), true))
            ))
        );
        assert_eq!(
            parse("!cancelled() || contains(matrix.env_vars, 'it''s')"),
            Some(Expr::Or(
                Box::new(Expr::Not(Box::new(Expr::Call("cancelled".into(), vec![])))),
                Box::new(Expr::Call(
                    "contains".into(),
                    vec![Expr::Ref("matrix.env_vars".into()), Expr::Lit("it's".into())]
                ))
            ))
        );
        assert_eq!(parse("matrix.x != 3.10"), Some(Expr::Eq(r("matrix.x"), l("3.10"), false)));
        assert_eq!(parse("(a || b) && c").map(|e| conjuncts(&e).len()), Some(2));
        for bad in ["matrix.x >= 3", "fromJson(x)[0]", "a ==", "(a", "'open", "a b"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
