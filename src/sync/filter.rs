//! Which of a repository's tags a sync rule takes: the tag filter of one
//! `[[sync.repo]]`.
//!
//! Two steps, because the second may need the network and the first never
//! does:
//!
//! 1. [`TagFilter::candidates`]: a tag is a candidate when it matches at least
//!    one `include` regex (or there are none), no `exclude` regex, and the
//!    `semver` range when one is given. Regexes are unanchored as written
//!    (`^...$` anchors them). Cosign's signature and attestation tags
//!    (`sha256-<hex>.sig`, `.att`, `.sbom`) are never candidates: they travel
//!    with the digest they sign ([`signature_tags`]).
//! 2. [`TagFilter::keep_newest`]: with `keep_last = N`, the newest N
//!    candidates. When every candidate reads as a version ([`parse_version`])
//!    that is semver precedence, decided here; otherwise the caller fetches
//!    each candidate's created time and calls [`TagFilter::by_created`].
//!
//! Versions are read leniently, as tags are written: an optional `v`/`V`, and
//! missing minor or patch numbers count as 0 (`3.19` is 3.19.0, `v3` is
//! 3.0.0). Everything after the first `-` is a pre-release, as semver says,
//! so `1.27.3-alpine` is a pre-release of 1.27.3: a range matches such tags
//! only when it names a pre-release of the same version (the `semver` crate's
//! rules, which are Cargo's). A tag that is no version never matches a
//! `semver` range. Build metadata does not order versions.
//!
//! No I/O, no clock: the created times come from the caller.

use std::cmp::Ordering;
use std::num::NonZeroUsize;
use std::time::SystemTime;

use regex::Regex;
use semver::{Version, VersionReq};

use crate::registry::{Digest, Tag};

/// The tag filter of one repository in a sync rule.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    /// A tag must match one of these (empty: every tag).
    pub include: Vec<Regex>,
    /// A tag matching any of these is left out.
    pub exclude: Vec<Regex>,
    /// A tag must be a version in this range.
    pub semver: Option<VersionReq>,
    /// Keep only the newest N candidates.
    pub keep_last: Option<NonZeroUsize>,
}

/// What [`TagFilter::keep_newest`] could decide without the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepLast {
    /// These tags are the rule's choice: every candidate (no `keep_last`, or
    /// no more candidates than it keeps), or the newest by semver precedence,
    /// newest first.
    Chosen(Vec<Tag>),
    /// These candidates are not all versions: fetch each one's created time
    /// and pass them to [`TagFilter::by_created`].
    NeedCreated(Vec<Tag>),
}

impl TagFilter {
    /// Whether `tag` passes include, exclude and the semver range.
    pub fn matches(&self, tag: &Tag) -> bool {
        let t = tag.as_str();
        if is_signature_tag(t) {
            return false;
        }
        if !self.include.is_empty() && !self.include.iter().any(|r| r.is_match(t)) {
            return false;
        }
        if self.exclude.iter().any(|r| r.is_match(t)) {
            return false;
        }
        match &self.semver {
            None => true,
            Some(req) => parse_version(t).is_some_and(|v| req.matches(&v)),
        }
    }

    /// The tags that pass [`TagFilter::matches`], in the order given.
    pub fn candidates(&self, tags: impl IntoIterator<Item = Tag>) -> Vec<Tag> {
        tags.into_iter().filter(|t| self.matches(t)).collect()
    }

    /// Applies `keep_last` as far as it can be without created times.
    pub fn keep_newest(&self, candidates: Vec<Tag>) -> KeepLast {
        let Some(n) = self.keep_last else {
            return KeepLast::Chosen(candidates);
        };
        if candidates.len() <= n.get() {
            return KeepLast::Chosen(candidates);
        }
        let versions: Option<Vec<(Version, Tag)>> = candidates
            .iter()
            .map(|t| parse_version(t.as_str()).map(|v| (v, t.clone())))
            .collect();
        let Some(mut versions) = versions else {
            return KeepLast::NeedCreated(candidates);
        };
        versions.sort_by(|(va, ta), (vb, tb)| {
            precedence(vb, va).then_with(|| tb.as_str().cmp(ta.as_str()))
        });
        versions.truncate(n.get());
        KeepLast::Chosen(versions.into_iter().map(|(_, t)| t).collect())
    }

    /// The newest `keep_last` tags by created time, newest first (all of them
    /// without `keep_last`). Tags without a created time are the oldest; ties
    /// go to the greater tag name.
    pub fn by_created(&self, mut tags: Vec<(Tag, Option<SystemTime>)>) -> Vec<Tag> {
        // `None < Some(_)`, so reversing puts unknown times last.
        tags.sort_by(|(ta, ca), (tb, cb)| cb.cmp(ca).then_with(|| tb.as_str().cmp(ta.as_str())));
        if let Some(n) = self.keep_last {
            tags.truncate(n.get());
        }
        tags.into_iter().map(|(t, _)| t).collect()
    }
}

/// Semver precedence: major, minor, patch, pre-release; build metadata
/// ignored (SemVer 2.0.0 §11), unlike `Version`'s `Ord`.
fn precedence(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| a.pre.cmp(&b.pre))
}

/// A tag read as a version: an optional leading `v` or `V`, one to three
/// dot-separated numbers (missing ones are 0), then an optional `-pre-release`
/// and `+build` as semver writes them. `None` for anything else.
pub fn parse_version(tag: &str) -> Option<Version> {
    let s = tag.strip_prefix(['v', 'V']).unwrap_or(tag);
    let end = s.find(['-', '+']).unwrap_or(s.len());
    let (core, rest) = s.split_at(end);
    let numbers: Vec<&str> = core.split('.').collect();
    if numbers.len() > 3
        || numbers
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut full = core.to_owned();
    for _ in numbers.len()..3 {
        full.push_str(".0");
    }
    full.push_str(rest);
    Version::parse(&full).ok()
}

/// The suffixes cosign (and tools that follow it) tag signatures,
/// attestations and SBOMs of `sha256:<hex>` with: `sha256-<hex>.<suffix>`.
const SIGNATURE_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Whether `tag` is a cosign-style `sha256-<hex>.sig` (`.att`, `.sbom`) tag.
pub fn is_signature_tag(tag: &str) -> bool {
    let Some((hex, suffix)) = tag
        .strip_prefix("sha256-")
        .and_then(|rest| rest.split_once('.'))
    else {
        return false;
    };
    SIGNATURE_SUFFIXES.contains(&suffix)
        && hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The tags under which cosign stores the signature, attestations and SBOM
/// of `digest` (none for digests other than sha256, which cosign does not
/// tag this way).
pub fn signature_tags(digest: &Digest) -> Vec<Tag> {
    if digest.algorithm() != crate::registry::Algorithm::Sha256 {
        return Vec::new();
    }
    SIGNATURE_SUFFIXES
        .iter()
        .filter_map(|s| format!("sha256-{}.{s}", digest.hex()).parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tags(list: &[&str]) -> Vec<Tag> {
        list.iter().map(|t| t.parse().unwrap()).collect()
    }

    fn names(list: &[Tag]) -> Vec<&str> {
        list.iter().map(Tag::as_str).collect()
    }

    fn filter(include: &[&str], exclude: &[&str], semver: Option<&str>) -> TagFilter {
        TagFilter {
            include: include.iter().map(|r| Regex::new(r).unwrap()).collect(),
            exclude: exclude.iter().map(|r| Regex::new(r).unwrap()).collect(),
            semver: semver.map(|s| VersionReq::parse(s).unwrap()),
            keep_last: None,
        }
    }

    #[test]
    fn lenient_versions() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>)] = &[
            ("1.2.3", Some("1.2.3")),
            ("v1.2.3", Some("1.2.3")),
            ("V1.2.3", Some("1.2.3")),
            ("1.2", Some("1.2.0")),
            ("3.19", Some("3.19.0")),
            ("3", Some("3.0.0")),
            ("v3", Some("3.0.0")),
            ("3.20.0-rc1", Some("3.20.0-rc1")),
            ("3.20-rc.1", Some("3.20.0-rc.1")),
            ("1.27.3-alpine", Some("1.27.3-alpine")),
            ("1.2.3+build.5", Some("1.2.3+build.5")),
            ("latest", None),
            ("stable-alpine", None),
            ("vv1.2.3", None),
            ("1.2.3.4", None),
            ("1..2", None),
            ("01.2.3", None),
            ("1.2.3_alpine", None),
            ("1.2.3-", None),
            ("", None),
            ("v", None),
            ("-1", None),
            ("sha256-abc.sig", None),
        ];
        for (tag, want) in cases {
            let got = parse_version(tag).map(|v| v.to_string());
            assert_eq!(got.as_deref(), *want, "{tag:?}");
        }
    }

    #[test]
    fn include_exclude_and_semver_table() {
        let all = tags(&[
            "latest",
            "stable-alpine",
            "1.2",
            "v1.2.3",
            "3.19.0",
            "3.19",
            "3.20.0-rc1",
            "3.20.0",
            "v3.21.2",
            "4.0.0",
            "1.26.1-alpine",
            "1.27.3-alpine",
            "1.27.3-alpine-perl",
            "1.27.3",
            "sha256-0000000000000000000000000000000000000000000000000000000000000000.sig",
        ]);
        #[rustfmt::skip]
        let cases: &[(TagFilter, &[&str])] = &[
            // Nothing set: every tag but signatures.
            (filter(&[], &[], None), &["latest", "stable-alpine", "1.2", "v1.2.3", "3.19.0", "3.19",
                "3.20.0-rc1", "3.20.0", "v3.21.2", "4.0.0", "1.26.1-alpine", "1.27.3-alpine",
                "1.27.3-alpine-perl", "1.27.3"]),
            // The issue's example: anchored regexes.
            (filter(&[r"^1\.2[6-9]\.\d+-alpine$"], &["-perl$"], None), &["1.26.1-alpine", "1.27.3-alpine"]),
            // Unanchored as written: "alpine" anywhere.
            (filter(&["alpine"], &["perl"], None), &["stable-alpine", "1.26.1-alpine", "1.27.3-alpine"]),
            // Any include suffices; any exclude removes.
            (filter(&["^latest$", "^4"], &[], None), &["latest", "4.0.0"]),
            (filter(&[], &["."], None), &[]),
            // Semver: v-prefixes and short forms count, pre-releases do not.
            (filter(&[], &[], Some(">=3.19, <4")), &["3.19.0", "3.19", "3.20.0", "v3.21.2"]),
            (filter(&[], &[], Some(">=1.2, <1.3")), &["1.2", "v1.2.3"]),
            (filter(&[], &[], Some("=1.2.0")), &["1.2"]),
            // A range naming a pre-release admits that version's pre-releases.
            (filter(&[], &[], Some(">=3.20.0-rc0, <4")), &["3.20.0-rc1", "3.20.0", "v3.21.2"]),
            (filter(&[], &[], Some(">=1.27.3-alpine, <1.28")), &["1.27.3-alpine", "1.27.3-alpine-perl", "1.27.3"]),
            // Regex and semver together.
            (filter(&["^v"], &[], Some(">=1")), &["v1.2.3", "v3.21.2"]),
            (filter(&[], &[], Some("*")), &["1.2", "v1.2.3", "3.19.0", "3.19", "3.20.0", "v3.21.2",
                "4.0.0", "1.27.3"]),
        ];
        for (i, (f, want)) in cases.iter().enumerate() {
            assert_eq!(names(&f.candidates(all.clone())), *want, "case {i}: {f:?}");
        }
    }

    fn keep(n: usize) -> TagFilter {
        TagFilter {
            keep_last: NonZeroUsize::new(n),
            ..TagFilter::default()
        }
    }

    #[test]
    fn keep_last_by_semver_precedence() {
        #[rustfmt::skip]
        let cases: &[(usize, &[&str], KeepLast)] = &[
            (2, &["3.18.0", "3.19", "v3.20.1", "3.20.0", "3.9.9"], KeepLast::Chosen(tags(&["v3.20.1", "3.20.0"]))),
            // A release is newer than its pre-releases; rc.10 newer than rc.9.
            (3, &["3.20.0-rc.9", "3.20.0", "3.20.0-rc.10", "3.19.9"],
                KeepLast::Chosen(tags(&["3.20.0", "3.20.0-rc.10", "3.20.0-rc.9"]))),
            // Equal precedence (v-prefix, short form): the greater name first.
            (2, &["1.2.0", "v1.2", "1.2", "1.1"], KeepLast::Chosen(tags(&["v1.2", "1.2.0"]))),
            // Build metadata does not order (tags cannot hold '+'; parse_version can).
            // Not all versions: the created times decide.
            (1, &["3.19", "latest"], KeepLast::NeedCreated(tags(&["3.19", "latest"]))),
            // No more candidates than kept: no need to know anything.
            (5, &["latest", "edge"], KeepLast::Chosen(tags(&["latest", "edge"]))),
        ];
        for (n, given, want) in cases {
            assert_eq!(&keep(*n).keep_newest(tags(given)), want, "{n} of {given:?}");
        }
        let none = TagFilter::default();
        assert_eq!(
            none.keep_newest(tags(&["b", "a"])),
            KeepLast::Chosen(tags(&["b", "a"]))
        );
    }

    #[test]
    fn build_metadata_does_not_order() {
        let a = parse_version("1.2.3+zzz").unwrap();
        let b = parse_version("1.2.3+aaa").unwrap();
        assert_ne!(a.cmp(&b), Ordering::Equal, "Version's Ord looks at build");
        assert_eq!(precedence(&a, &b), Ordering::Equal);
    }

    #[test]
    fn keep_last_by_created_time() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s: u64| Some(t0 + Duration::from_secs(s));
        let given = |list: &[(&str, Option<SystemTime>)]| -> Vec<(Tag, Option<SystemTime>)> {
            list.iter().map(|(t, c)| (t.parse().unwrap(), *c)).collect()
        };
        let list = given(&[
            ("latest", at(30)),
            ("edge", at(40)),
            ("old", at(1)),
            ("unknown", None),
            ("b-same", at(20)),
            ("a-same", at(20)),
            ("z-unknown", None),
        ]);
        assert_eq!(names(&keep(2).by_created(list.clone())), ["edge", "latest"]);
        assert_eq!(
            names(&keep(4).by_created(list.clone())),
            ["edge", "latest", "b-same", "a-same"]
        );
        assert_eq!(
            names(&TagFilter::default().by_created(list)),
            [
                "edge",
                "latest",
                "b-same",
                "a-same",
                "old",
                "z-unknown",
                "unknown"
            ],
            "no keep_last: all, newest first, unknown times last"
        );
    }

    #[test]
    fn signature_tags_of_a_digest() {
        let d = Digest::sha256_of(b"image");
        let t = signature_tags(&d);
        assert_eq!(
            names(&t),
            [
                format!("sha256-{}.sig", d.hex()),
                format!("sha256-{}.att", d.hex()),
                format!("sha256-{}.sbom", d.hex())
            ]
        );
        assert!(t.iter().all(|t| is_signature_tag(t.as_str())));
        for not in [
            "sha256-abc.sig",
            "latest",
            "sha256-.sig",
            &format!("sha256-{}.sig2", d.hex()),
            &format!("sha512-{}.sig", d.hex()),
            &format!("sha256-{}.sig", d.hex().to_uppercase()),
        ] {
            assert!(!is_signature_tag(not), "{not}");
        }
        let d512 = Digest::of(crate::registry::Algorithm::Sha512, b"image");
        assert!(signature_tags(&d512).is_empty());
    }
}
