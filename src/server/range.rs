//! `Range: bytes=…` on cached blobs (RFC 9110 §14). One range only: a
//! multi-range request gets the whole blob, which the RFC allows and which is all
//! registry clients use ranges for (resuming a layer download).

#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No usable Range header: send everything.
    Full,
    /// Send `len` bytes from `start`.
    Part { start: u64, len: u64 },
    /// 416.
    Unsatisfiable,
}

pub fn parse(header: Option<&str>, size: u64) -> RangeReq {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => match num(b) {
            Some(0) => RangeReq::Unsatisfiable,
            Some(n) if size > 0 => {
                let n = n.min(size);
                RangeReq::Part {
                    start: size - n,
                    len: n,
                }
            }
            Some(_) => RangeReq::Unsatisfiable,
            None => RangeReq::Full,
        },
        // bytes=S-
        (false, true) => match num(a) {
            Some(s) if s < size => RangeReq::Part {
                start: s,
                len: size - s,
            },
            Some(_) => RangeReq::Unsatisfiable,
            None => RangeReq::Full,
        },
        // bytes=S-E (inclusive)
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e && s < size => RangeReq::Part {
                start: s,
                len: e.min(size - 1) - s + 1,
            },
            (Some(s), Some(e)) if s <= e => RangeReq::Unsatisfiable,
            _ => RangeReq::Full,
        },
        (true, true) => RangeReq::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeReq::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10), Full);
        assert_eq!(parse(Some("bytes=0-4"), 10), Part { start: 0, len: 5 });
        assert_eq!(parse(Some("bytes=5-"), 10), Part { start: 5, len: 5 });
        assert_eq!(parse(Some("bytes=-3"), 10), Part { start: 7, len: 3 });
        assert_eq!(parse(Some("bytes=-30"), 10), Part { start: 0, len: 10 });
        assert_eq!(parse(Some("bytes=8-100"), 10), Part { start: 8, len: 2 });
        assert_eq!(parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=10-12"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse(Some("items=0-1"), 10), Full);
        assert_eq!(parse(Some("bytes=x-y"), 10), Full);
    }
}
