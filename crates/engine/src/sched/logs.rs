//! Step output: raw chunks become masked lines, written to the step's log file and sent on
//! as events. Memory is bounded by the longest line kept (`MAX_LINE`), whatever the output.

use std::io::Write;

use crate::exec::Stream;

/// A line longer than this is cut into pieces (no output line waits forever for `\n`).
pub const MAX_LINE: usize = 64 * 1024;
pub const MASK: &str = "***";

/// The shortest secret (or line of a multi-line secret) that is masked: shorter ones (`1`,
/// a lone `}`) carry no secret and would mask ordinary output everywhere.
pub const MIN_LINE: usize = crate::secrets::MIN_MASKED;

/// Replaces secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<Vec<u8>>,
}

impl Masker {
    /// Output is masked line by line, so a secret of several lines (a private key) is
    /// masked line by line too: each of its lines of [`MIN_LINE`] characters or more.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .flat_map(|v| {
                // Output never holds a line's end: a value's trailing newline is no part of
                // what is printed (`echo "$TOKEN"` of `TOKEN=abc\n` prints `abc`).
                let lines: Vec<&str> = v.lines().map(|l| l.trim_end_matches('\r')).collect();
                if lines.len() > 1 {
                    lines.into_iter().filter(|l| l.trim().chars().count() >= MIN_LINE).collect()
                } else {
                    lines.into_iter().filter(|l| l.chars().count() >= MIN_LINE).collect::<Vec<_>>()
                }
            })
            .map(|v| v.as_bytes().to_vec())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker { secrets }
    }

    /// Bytes a split secret can leave at the end of a buffer.
    fn overlap(&self) -> usize {
        self.secrets.first().map_or(0, |s| s.len() - 1)
    }

    pub fn mask(&self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'outer: while i < data.len() {
            for s in &self.secrets {
                if data[i..].starts_with(s) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += s.len();
                    continue 'outer;
                }
            }
            out.push(data[i]);
            i += 1;
        }
        out
    }
}

/// Splits one stream's chunks into lines. Secrets are masked on whole lines, so a secret
/// split across two chunks is still caught.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds a chunk; calls `emit` with each finished (masked) line, without its newline.
    pub fn push(&mut self, chunk: &[u8], masker: &Masker, mut emit: impl FnMut(Vec<u8>)) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buf[start..start + nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            emit(masker.mask(line));
            start += nl + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            // Mask first, then keep back what could be the start of a secret that the next
            // chunk completes.
            let masked = masker.mask(&self.buf);
            let keep = masker.overlap().min(masked.len());
            let cut = masked.len() - keep;
            emit(masked[..cut].to_vec());
            self.buf = masked[cut..].to_vec();
        }
    }

    /// The last line, when the output did not end with a newline.
    pub fn finish(&mut self, masker: &Masker, mut emit: impl FnMut(Vec<u8>)) {
        if !self.buf.is_empty() {
            emit(masker.mask(&self.buf));
            self.buf.clear();
        }
    }
}

/// Both streams of a step attempt.
#[derive(Debug, Default)]
pub struct StepLines {
    out: LineSplitter,
    err: LineSplitter,
}

impl StepLines {
    pub fn splitter(&mut self, s: Stream) -> &mut LineSplitter {
        match s {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        }
    }
}

/// Appends a line to a log file (buffered by the caller's `BufWriter`).
pub fn write_line(w: &mut impl Write, line: &[u8]) -> std::io::Result<()> {
    w.write_all(line)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], secrets: &[&str]) -> Vec<String> {
        let m = Masker::new(secrets.iter().copied());
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &m, |l| out.push(String::from_utf8(l).unwrap()));
        }
        s.finish(&m, |l| out.push(String::from_utf8(l).unwrap()));
        out
    }

    #[test]
    fn splits_and_masks() {
        assert_eq!(lines(&[b"a\nb", b"c\r\nd"], &[]), ["a", "bc", "d"]);
        assert_eq!(lines(&[b"token=hunter2\n"], &["hunter2"]), ["token=***"]);
    }

    #[test]
    fn secret_split_across_chunks_is_masked() {
        assert_eq!(lines(&[b"x hun", b"ter2 y\n"], &["hunter2"]), ["x *** y"]);
        assert_eq!(lines(&[b"h", b"u", b"nter2"], &["hunter2"]), ["***"]);
    }

    #[test]
    fn long_lines_are_cut_without_leaking_a_secret() {
        let secret = "s3cr3t-value";
        let mut first = vec![b'x'; MAX_LINE + 10];
        first.extend_from_slice(&secret.as_bytes()[..5]);
        let out = lines(&[&first, &secret.as_bytes()[5..], b"\n"], &[secret]);
        let all = out.concat();
        assert!(!all.contains(secret), "secret leaked");
        assert!(all.ends_with(MASK));
        assert!(out.len() >= 2);
    }

    #[test]
    fn a_secret_ending_in_a_newline_is_masked() {
        assert_eq!(lines(&[b"x abc123 y\n"], &["abc123\n"]), ["x *** y"]);
        assert_eq!(lines(&[b"x abc123 y\n"], &["abc123\r\n"]), ["x *** y"]);
    }

    #[test]
    fn multi_line_secrets_are_masked_line_by_line() {
        let key = "-----BEGIN KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\r\nQyNTUxOQAAACCl\n}\n-----END KEY-----\n";
        let out = lines(
            &[b"key:\n-----BEGIN KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQyNTUxOQAAACCl\n}\n-----END KEY-----\n"],
            &[key],
        );
        assert_eq!(out, ["key:", "***", "***", "***", "}", "***"]);
    }

    #[test]
    fn a_secret_too_short_to_mask_masks_nothing() {
        // `1` would turn every 1 of every log into `***`; the run warns about it instead.
        assert_eq!(lines(&[b"build 1 of 10\n"], &["1", "ab"]), ["build 1 of 10"]);
        assert_eq!(lines(&[b"pin 1234\n"], &["1234"]), ["pin ***"]);
    }

    #[test]
    fn longest_secret_wins() {
        assert_eq!(lines(&[b"abcdef\n"], &["abc", "abcdef"]), ["***"]);
    }
}
