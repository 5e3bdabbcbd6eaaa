//! Annotations from compiler-style lines in failed logs.

use super::*;

/// line (a line past 64 KiB is skipped), so memory stays flat whatever its size.
/// Annotations from compiler-style lines in a failed step's log:
/// `path:line:col: error: message`, `path:line: warning: message`. The log is read line by
pub fn annotations_from_log(mut log: impl std::io::BufRead, limit: usize) -> Vec<Annotation> {
    use std::io::BufRead;
    const MAX: u64 = 64 * 1024;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while out.len() < limit {
        buf.clear();
        match std::io::Read::take(&mut log, MAX).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !buf.ends_with(b"\n") && buf.len() as u64 == MAX {
            // The rest of an overlong line.
            let mut skip = Vec::new();
            while matches!(std::io::Read::take(&mut log, MAX).read_until(b'\n', &mut skip), Ok(n) if n > 0)
                && !skip.ends_with(b"\n")
            {
                skip.clear();
            }
            continue;
        }
        let line = String::from_utf8_lossy(&buf);
        if let Some(a) = parse_annotation(line.trim())
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

fn parse_annotation(line: &str) -> Option<Annotation> {
    let mut parts = line.splitn(5, ':');
    let path = parts.next()?.trim();
    // Absolute container paths become relative to the workspace.
    let path = path.strip_prefix("/workspace/").unwrap_or(path);
    if path.is_empty() || path.contains(char::is_whitespace) || path.starts_with('/') {
        return None;
    }
    let line_no: u32 = parts.next()?.trim().parse().ok()?;
    let rest: Vec<&str> = parts.collect();
    let (col, level, msg) = match rest.as_slice() {
        [c, l, m] if c.trim().parse::<u32>().is_ok() => (c.trim().parse().ok(), l.trim(), m.trim().to_string()),
        [c, l] if c.trim().parse::<u32>().is_ok() => {
            let (l, m) = l.trim().split_once(' ')?;
            (c.trim().parse().ok(), l, m.to_string())
        }
        [l, m] => (None, l.trim(), m.trim().to_string()),
        [l, m, more] => (None, l.trim(), format!("{}:{}", m.trim(), more)),
        _ => return None,
    };
    let level = match level.to_ascii_lowercase().as_str() {
        "error" | "fatal" | "fatal error" => "failure",
        "warning" | "warn" => "warning",
        "note" | "info" => "notice",
        _ => return None,
    };
    if msg.is_empty() {
        return None;
    }
    Some(Annotation {
        path: path.to_string(),
        start_line: line_no,
        end_line: line_no,
        start_column: col,
        end_column: col,
        annotation_level: level.to_string(),
        message: truncate(&msg, 60_000),
        title: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compiler_lines() {
        let log = "compiling\nsrc/main.rs:12:5: error: expected `;`\n/workspace/lib/a.c:3: warning: unused x\nnot: an: annotation\nsrc/main.rs:12:5: error: expected `;`\n";
        let a = annotations_from_log(log.as_bytes(), 50);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].path.as_str(), a[0].start_line, a[0].start_column), ("src/main.rs", 12, Some(5)));
        assert_eq!(a[0].annotation_level, "failure");
        assert_eq!(a[0].message, "expected `;`");
        assert_eq!((a[1].path.as_str(), a[1].annotation_level.as_str()), ("lib/a.c", "warning"));
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let mut log = format!("a.rs:1: error: {}", "x".repeat(200_000)).into_bytes();
        log.extend_from_slice(b"\nb.rs:2: error: real\n");
        let a = annotations_from_log(&log[..], 50);
        assert_eq!(a.iter().map(|a| a.path.as_str()).collect::<Vec<_>>(), ["b.rs"]);
    }
}
