//! How orch writes sizes and durations for people, one way everywhere: the terminal, the
//! dashboard, GitHub's descriptions, `orch runs`, `orch doctor`.

use std::time::Duration;

/// `0.4s`, `12.3s`, `2m03s`, `1h15m`: short, fixed precision.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        let m = (s / 60.0).floor();
        // 59.6 s past a minute rounds to the next one, not to `1m60s`.
        let rest = (s - m * 60.0).round() as u64;
        if rest == 60 { format!("{}m00s", m as u64 + 1) } else { format!("{}m{rest:02}s", m as u64) }
    } else {
        let m = (s / 60.0).round() as u64;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// [`duration`] of whole seconds (negative counts as zero).
pub fn secs(s: i64) -> String {
    duration(Duration::from_secs(s.max(0) as u64))
}

/// `456 B`, `2.0 KiB`, `11.7 MiB`, `59.3 GiB`: powers of 1024.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// The innermost error's message: "Connection refused (os error 111)", not an HTTP
/// client's wrapping of it.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut at = e;
    while let Some(inner) = at.source() {
        at = inner;
    }
    at.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(duration(Duration::from_secs(123)), "2m03s");
        assert_eq!(duration(Duration::from_secs_f64(119.7)), "2m00s");
        assert_eq!(duration(Duration::from_secs(4500)), "1h15m");
        assert_eq!(secs(-5), "0.0s");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(456), "456 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(12_300_000), "11.7 MiB");
        assert_eq!(size(59_300_000_000), "55.2 GiB");
    }
}
