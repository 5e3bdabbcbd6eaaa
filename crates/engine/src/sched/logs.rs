//! Step output: raw chunks become masked lines, written to the step's log file and sent on
//! as events. Memory is bounded by the longest line kept (`MAX_LINE`), whatever the output.
//!
//! The work is per chunk, not per line: a chunk's finished lines are found with one
//! backwards scan, masked with one automaton pass (which skips text holding no secret's
//! first byte) and handed on as one buffer. A flood of short lines costs what its bytes
//! cost.

use aho_corasick::{AhoCorasick, MatchKind};

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
    /// Leftmost-longest: where two secrets start at the same byte, the longer is masked
    /// whole. None when there is no secret.
    finder: Option<AhoCorasick>,
    /// The longest secret's length.
    longest: usize,
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
        let longest = secrets.first().map_or(0, Vec::len);
        // Building fails only past the automaton's size limits, far beyond any set of
        // secrets; masking nothing is never the fallback, so the plain search is.
        let finder = (!secrets.is_empty()).then(|| {
            AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&secrets).unwrap_or_else(|_| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .kind(Some(aho_corasick::AhoCorasickKind::NoncontiguousNFA))
                    .build(&secrets)
                    // The NFA fails only past 2^31 states: secrets of gigabytes.
                    .expect("a noncontiguous automaton of the secrets")
            })
        });
        Masker { finder, longest }
    }

    /// Bytes a split secret can leave at the end of a buffer.
    fn overlap(&self) -> usize {
        self.longest.saturating_sub(1)
    }

    /// Appends `data` to `out` with every secret replaced.
    pub fn mask_into(&self, data: &[u8], out: &mut Vec<u8>) {
        let Some(finder) = &self.finder else {
            out.extend_from_slice(data);
            return;
        };
        let mut last = 0;
        for m in finder.find_iter(data) {
            out.extend_from_slice(&data[last..m.start()]);
            out.extend_from_slice(MASK.as_bytes());
            last = m.end();
        }
        out.extend_from_slice(&data[last..]);
    }

    pub fn mask(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        self.mask_into(data, &mut out);
        out
    }
}

/// Splits one stream's chunks into lines. Secrets are masked on whole lines, so a secret
/// split across two chunks is still caught.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The line begun and not finished yet.
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds a chunk; appends the lines it finishes to `out`, masked, each ending with
    /// `\n` (a `\r` before it dropped).
    pub fn push(&mut self, mut chunk: &[u8], masker: &Masker, out: &mut Vec<u8>) {
        if !self.buf.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', chunk) else {
                self.buf.extend_from_slice(chunk);
                self.cut_long(masker, out);
                return;
            };
            self.buf.extend_from_slice(&chunk[..=nl]);
            finished(&self.buf, masker, out);
            self.buf.clear();
            chunk = &chunk[nl + 1..];
        }
        match memchr::memrchr(b'\n', chunk) {
            Some(nl) => {
                finished(&chunk[..=nl], masker, out);
                self.buf.extend_from_slice(&chunk[nl + 1..]);
            }
            None => self.buf.extend_from_slice(chunk),
        }
        self.cut_long(masker, out);
    }

    /// A line longer than [`MAX_LINE`] goes out in pieces. Mask first, then keep back what
    /// could be the start of a secret that the next chunk completes.
    fn cut_long(&mut self, masker: &Masker, out: &mut Vec<u8>) {
        if self.buf.len() <= MAX_LINE {
            return;
        }
        let masked = masker.mask(&self.buf);
        let keep = masker.overlap().min(masked.len());
        let cut = masked.len() - keep;
        out.extend_from_slice(&masked[..cut]);
        out.push(b'\n');
        self.buf = masked[cut..].to_vec();
    }

    /// The last line, when the output did not end with a newline.
    pub fn finish(&mut self, masker: &Masker, out: &mut Vec<u8>) {
        if !self.buf.is_empty() {
            masker.mask_into(&self.buf, out);
            out.push(b'\n');
            self.buf.clear();
        }
    }
}

/// Appends whole lines (`text` ends with `\n`) masked, with `\r\n` made `\n`. Secrets hold
/// no `\n` and never end with `\r`, so a match never spans lines nor a dropped `\r`, and
/// masking the whole text is masking each line.
fn finished(text: &[u8], masker: &Masker, out: &mut Vec<u8>) {
    let start = out.len();
    masker.mask_into(text, out);
    if memchr::memchr(b'\r', &out[start..]).is_none() {
        return;
    }
    let mut w = start;
    let mut r = start;
    while let Some(i) = memchr::memmem::find(&out[r..], b"\r\n") {
        out.copy_within(r..r + i, w);
        w += i;
        r += i + 1; // the `\n` is copied with the next segment
    }
    let rest = out.len() - r;
    out.copy_within(r.., w);
    out.truncate(w + rest);
}

/// The lines of a text of whole lines, without their `\n`.
pub fn lines_of(text: &str) -> impl Iterator<Item = &str> {
    text.strip_suffix('\n').unwrap_or(text).split('\n').filter(move |_| !text.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], secrets: &[&str]) -> Vec<String> {
        let m = Masker::new(secrets.iter().copied());
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &m, &mut out);
        }
        s.finish(&m, &mut out);
        lines_of(&String::from_utf8(out).unwrap()).map(String::from).collect()
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

    /// The per-line reference: split on `\n`, drop a `\r` before it, at each byte the
    /// longest secret that starts there.
    fn reference(input: &[u8], secrets: &[&str]) -> Vec<String> {
        let mut secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = Vec::new();
        let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        if parts.last().is_some_and(|l| l.is_empty()) {
            parts.pop();
        }
        let n = parts.len();
        for (k, mut line) in parts.into_iter().enumerate() {
            let ended = k + 1 < n || input.ends_with(b"\n");
            if ended && line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let mut masked = Vec::new();
            let mut i = 0;
            'outer: while i < line.len() {
                for s in &secrets {
                    if line[i..].starts_with(s) {
                        masked.extend_from_slice(MASK.as_bytes());
                        i += s.len();
                        continue 'outer;
                    }
                }
                masked.push(line[i]);
                i += 1;
            }
            out.push(String::from_utf8(masked).unwrap());
        }
        out
    }

    #[test]
    fn any_chunking_gives_the_lines_of_the_per_line_reference() {
        let secrets = ["hunter2", "hunter22x", "abcd", "a\rbc"];
        let alphabet = b"hunter2x abcd\r\n\n";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 200) as usize;
            let input: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < input.len() {
                let n = 1 + (next() % 12) as usize;
                chunks.push(&input[at..(at + n).min(input.len())]);
                at += n;
            }
            assert_eq!(lines(&chunks, &secrets), reference(&input, &secrets), "{:?}", String::from_utf8_lossy(&input));
        }
    }

    #[test]
    fn longest_secret_wins() {
        assert_eq!(lines(&[b"abcdef\n"], &["abc", "abcdef"]), ["***"]);
    }
}
