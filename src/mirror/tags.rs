//! `tags/list`: asked of the upstream every time (tags move), then answered
//! as the spec says whatever the upstream did (distribution 2.8 ignores `n`
//! and `last`; others paginate on their own): tags in lexical order, at most
//! `n`, starting after `last`, and whether more remain (the server's `Link`).
//! Spec: distribution-spec `spec.md#listing-tags`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::upstream::UpstreamError;

use super::{CacheStatus, Mirror, MirrorError, Routed};

/// Most pages followed through an upstream's own `Link` headers: a hostile
/// or broken upstream cannot keep wharf paging forever.
const MAX_UPSTREAM_PAGES: usize = 100;

/// One page of a repository's tags, ready to send.
#[derive(Debug)]
pub struct TagPage {
    /// `{"name": ..., "tags": [...]}`.
    pub body: Bytes,
    /// The last tag of this page when more remain: the next page starts after it.
    pub next: Option<String>,
    pub status: CacheStatus,
}

#[derive(Deserialize, Serialize)]
struct TagList {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Sorts and de-duplicates `tags`, keeps those after `last`, then at most
/// `n`; says whether more remain.
pub fn paginate(mut tags: Vec<String>, n: Option<u32>, last: Option<&str>) -> (Vec<String>, bool) {
    tags.sort_unstable();
    tags.dedup();
    if let Some(last) = last {
        let start = tags.partition_point(|t| t.as_str() <= last);
        tags.drain(..start);
    }
    let n = n.map_or(usize::MAX, |n| n as usize);
    let more = tags.len() > n;
    tags.truncate(n);
    (tags, more)
}

impl Mirror {
    /// A page of the repository's tags (never cached: they change).
    pub async fn tags_list(
        &self,
        r: &Routed,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<TagPage, MirrorError> {
        let (name, all) = self.all_tags(r).await?;
        let (tags, more) = paginate(all, n, last);
        let next = if more { tags.last().cloned() } else { None };
        let body = serde_json::to_vec(&TagList {
            name,
            tags: Some(tags),
        })
        .expect("a tag list serializes");
        Ok(TagPage {
            body: body.into(),
            next,
            status: CacheStatus::Pass,
        })
    }

    /// Every tag the upstream lists, following its own pages.
    async fn all_tags(&self, r: &Routed) -> Result<(String, Vec<String>), MirrorError> {
        let up = self.upstream(r.upstream);
        let mut tags = Vec::new();
        let mut name = r.repo.to_string();
        let mut cursor: Option<(Option<u32>, String)> = None;
        for _ in 0..MAX_UPSTREAM_PAGES {
            let (n, last) = match &cursor {
                Some((n, last)) => (*n, Some(last.as_str())),
                None => (None, None),
            };
            let (body, link) = up.client.tags_list(&r.repo, n, last).await?;
            let page: TagList =
                serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol {
                    upstream: up.cfg.name.clone(),
                    what: format!("tags/list is not a tag list: {e}"),
                })?;
            name = page.name;
            let got = page.tags.unwrap_or_default();
            let progress = got.last().cloned();
            tags.extend(got);
            // Follow the upstream's next page only by its `last` (and `n`),
            // never its URL: the upstream cannot send wharf elsewhere.
            match (link.as_deref().and_then(next_cursor), progress) {
                (Some((n, last)), Some(_)) if cursor.as_ref().is_none_or(|c| c.1 < last) => {
                    cursor = Some((n, last))
                }
                _ => return Ok((name, tags)),
            }
        }
        tracing::warn!(
            upstream = %up.cfg.name, repo = %r.repo, pages = MAX_UPSTREAM_PAGES,
            "tags/list: the upstream kept paging; answering with the tags so far"
        );
        Ok((name, tags))
    }
}

/// `n` and `last` of a `Link: <...?n=..&last=..>; rel="next"` header.
fn next_cursor(link: &str) -> Option<(Option<u32>, String)> {
    if !link.contains("rel=\"next\"") && !link.contains("rel=next") {
        return None;
    }
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?')?.1;
    let (mut n, mut last) = (None, None);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
        match k {
            "n" => n = v.parse().ok(),
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    Some((n, last?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_are_lexical_bounded_and_start_after_last() {
        let all = tags(&["b", "a", "d", "c", "a"]);
        assert_eq!(
            paginate(all.clone(), None, None),
            (tags(&["a", "b", "c", "d"]), false)
        );
        assert_eq!(
            paginate(all.clone(), Some(2), None),
            (tags(&["a", "b"]), true)
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            (tags(&["c", "d"]), false)
        );
        assert_eq!(
            paginate(all.clone(), Some(1), Some("b")),
            (tags(&["c"]), true)
        );
        // `last` need not be a tag that exists.
        assert_eq!(
            paginate(all.clone(), None, Some("bb")),
            (tags(&["c", "d"]), false)
        );
        assert_eq!(paginate(all, Some(0), None), (vec![], true));
    }

    #[test]
    fn upstream_links_give_only_a_cursor() {
        assert_eq!(
            next_cursor("</v2/a/tags/list?last=x&n=50>; rel=\"next\""),
            Some((Some(50), "x".to_owned()))
        );
        assert_eq!(
            next_cursor("<https://evil.example/v2/a/tags/list?last=1.0>; rel=\"next\""),
            Some((None, "1.0".to_owned()))
        );
        assert_eq!(next_cursor("</v2/a/tags/list?n=5>; rel=\"next\""), None);
        assert_eq!(next_cursor("</v2/a/tags/list?last=x>; rel=\"prev\""), None);
    }
}
