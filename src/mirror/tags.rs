//! `tags/list`: asked of the upstream every time (tags move), then answered
//! as the spec says whatever the upstream did (distribution 2.8 ignores `n`
//! and `last`; others paginate on their own): tags in lexical order, at most
//! `n`, starting after `last`, and whether more remain (the server's `Link`).
//! Spec: distribution-spec `spec.md#listing-tags`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::registry::Tag;
use crate::upstream::UpstreamError;

use super::{CacheStatus, Mirror, MirrorError, Routed, UpstreamId};

/// Most pages followed through an upstream's own `Link` headers.
const MAX_UPSTREAM_PAGES: usize = 100;
/// Most tags (all pages together) taken from an upstream for one
/// repository: Docker Hub's largest repositories have a few thousand.
const MAX_TAGS: usize = 100_000;
/// How long listing one repository may take, all pages together.
const LIST_DEADLINE: Duration = Duration::from_secs(60);
/// How long a listing answers its later pages (`last=`): a client paging
/// with a small `n` costs the upstream one listing, not one per page.
pub(super) const LIST_TTL: Duration = Duration::from_secs(10);

/// A repository's full tag list as the upstream gave it (name, sorted tags).
pub(super) type FullList = Arc<(String, Vec<Tag>)>;
pub(super) type ListKey = (UpstreamId, String);

/// One page of a repository's tags, ready to send.
#[derive(Debug)]
pub struct TagPage {
    /// `{"name": ..., "tags": [...]}`.
    pub body: Bytes,
    /// The last tag of this page when more remain: the next page starts after it.
    pub next: Option<Tag>,
    pub status: CacheStatus,
}

#[derive(Deserialize)]
struct UpstreamList {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<&'a str>,
}

/// The page of sorted, de-duplicated `tags` after `last`, at most `n`;
/// says whether more remain.
pub fn paginate<'a>(tags: &'a [Tag], n: Option<u32>, last: Option<&str>) -> (&'a [Tag], bool) {
    let start = last.map_or(0, |last| tags.partition_point(|t| t.as_str() <= last));
    let rest = &tags[start..];
    let n = n.map_or(usize::MAX, |n| n as usize);
    (&rest[..rest.len().min(n)], rest.len() > n)
}

impl Mirror {
    /// A page of the repository's tags. A first page (no `last`) asks the
    /// upstream; later pages within [`LIST_TTL`] read the same listing, so
    /// a client paging with a small `n` costs one listing and sees one
    /// snapshot. Concurrent askers share one listing.
    pub async fn tags_list(
        &self,
        r: &Routed,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<TagPage, MirrorError> {
        if self.is_offline(r.upstream) {
            return self.offline_tags(r, n, last);
        }
        let key = (r.upstream, r.repo.to_string());
        let snapshot = last.and_then(|_| self.inner.tag_lists.get(&key));
        let (list, status) = match snapshot {
            Some(list) => (list, CacheStatus::Hit),
            None => {
                let this = self.clone();
                let r2 = r.clone();
                let (res, joined) = self
                    .inner
                    .tag_listings
                    .run(key.clone(), move || async move {
                        let list = Arc::new(this.all_tags(&r2).await?);
                        this.inner.tag_lists.insert(key, list.clone());
                        Ok(list)
                    })
                    .await;
                let status = if joined {
                    CacheStatus::Coalesced
                } else {
                    CacheStatus::Pass
                };
                (res?, status)
            }
        };
        let (name, tags) = &*list;
        Ok(page_of(name, tags, n, last, status))
    }

    /// An offline upstream's tags are what this cache holds (synced,
    /// imported or pulled before), paged the same way.
    fn offline_tags(
        &self,
        r: &Routed,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<TagPage, MirrorError> {
        let tags: Vec<Tag> = self.cached_tags(r)?.into_iter().map(|(t, _)| t).collect();
        if tags.is_empty() {
            return Err(MirrorError::OfflineUnknownRepo {
                upstream: self.upstream_name(r.upstream).to_owned(),
                repo: r.repo.to_string(),
            });
        }
        Ok(page_of(r.repo.as_str(), &tags, n, last, CacheStatus::Hit))
    }

    /// Every tag the upstream lists, following its own pages by their
    /// `last` only, within [`MAX_UPSTREAM_PAGES`], [`MAX_TAGS`] and
    /// [`LIST_DEADLINE`]; past any of them the answer is an error, never a
    /// list that looks complete. Tags that are not valid tags are dropped.
    pub(super) async fn all_tags(&self, r: &Routed) -> Result<(String, Vec<Tag>), MirrorError> {
        let up = self.upstream(r.upstream);
        let fail = |what: String| UpstreamError::Protocol {
            upstream: up.cfg.name.clone(),
            what,
        };
        let started = Instant::now();
        let (mut tags, mut invalid) = (Vec::new(), 0usize);
        let mut cursor: Option<(Option<u32>, String)> = None;
        for _ in 0..MAX_UPSTREAM_PAGES {
            let (n, last) = match &cursor {
                Some((n, last)) => (*n, Some(last.as_str())),
                None => (None, None),
            };
            let left = LIST_DEADLINE.saturating_sub(started.elapsed());
            let (body, link) = tokio::time::timeout(left, up.client.tags_list(&r.repo, n, last))
                .await
                .map_err(|_| fail(format!("tags/list took over {LIST_DEADLINE:?}")))??;
            let page: UpstreamList = serde_json::from_slice(&body)
                // serde's message can quote the upstream's bytes: give the
                // client where the JSON broke, never what it said.
                .map_err(|e| {
                    fail(format!(
                        "tags/list is not a tag list ({:?} error at line {} column {})",
                        e.classify(),
                        e.line(),
                        e.column()
                    ))
                })?;
            let name = page.name;
            let got = page.tags.unwrap_or_default();
            let progress = got.last().cloned();
            for t in got {
                match t.parse::<Tag>() {
                    Ok(t) => tags.push(t),
                    Err(_) => invalid += 1,
                }
            }
            if tags.len() > MAX_TAGS {
                return Err(fail(format!("tags/list has over {MAX_TAGS} tags")).into());
            }
            let next = match link.as_deref() {
                None => None,
                Some(l) if !l.contains("rel=\"next\"") && !l.contains("rel=next") => None,
                Some(l) => Some(next_cursor(l).ok_or_else(|| {
                    fail("tags/list pages with a cursor other than `last`".into())
                })?),
            };
            // Only forward progress: the upstream cannot keep wharf paging
            // in a circle.
            match (next, progress) {
                (Some((n, last)), Some(_)) if cursor.as_ref().is_none_or(|c| c.1 < last) => {
                    cursor = Some((n, last))
                }
                (Some(_), _) => return Err(fail("tags/list pages without progress".into()).into()),
                (None, _) => return Ok((name, finish(tags, invalid, &up.cfg.name, r))),
            }
        }
        Err(fail(format!("tags/list has over {MAX_UPSTREAM_PAGES} pages")).into())
    }
}

/// The page of sorted `tags` after `last`, ready to send.
fn page_of(
    name: &str,
    tags: &[Tag],
    n: Option<u32>,
    last: Option<&str>,
    status: CacheStatus,
) -> TagPage {
    let (page, more) = paginate(tags, n, last);
    let body = serde_json::to_vec(&TagList {
        name,
        tags: page.iter().map(Tag::as_str).collect(),
    })
    .expect("a tag list serializes");
    TagPage {
        body: body.into(),
        next: if more { page.last().cloned() } else { None },
        status,
    }
}

/// Sorts and de-duplicates a listing; says what was dropped.
fn finish(mut tags: Vec<Tag>, invalid: usize, upstream: &str, r: &Routed) -> Vec<Tag> {
    if invalid > 0 {
        tracing::warn!(%upstream, repo = %r.repo, invalid, "tags/list: dropped names that are not valid tags");
    }
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// `n` and `last` of a `Link: <...?n=..&last=..>; rel="next"` header.
fn next_cursor(link: &str) -> Option<(Option<u32>, String)> {
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

    fn tags(v: &[&str]) -> Vec<Tag> {
        let mut t: Vec<Tag> = v.iter().map(|s| s.parse().unwrap()).collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    #[test]
    fn pages_are_lexical_bounded_and_start_after_last() {
        let all = tags(&["b", "a", "d", "c", "a"]);
        let p = |n, last| {
            let (page, more) = paginate(&all, n, last);
            (page.iter().map(|t| t.as_str()).collect::<Vec<_>>(), more)
        };
        assert_eq!(p(None, None), (vec!["a", "b", "c", "d"], false));
        assert_eq!(p(Some(2), None), (vec!["a", "b"], true));
        assert_eq!(p(Some(2), Some("b")), (vec!["c", "d"], false));
        assert_eq!(p(Some(1), Some("b")), (vec!["c"], true));
        // `last` need not be a tag that exists.
        assert_eq!(p(None, Some("bb")), (vec!["c", "d"], false));
        assert_eq!(p(Some(0), None), (vec![], true));
        assert_eq!(p(Some(u32::MAX), Some("d")), (vec![], false));
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
        assert_eq!(
            next_cursor("</v2/a/tags/list?next_page=opaque>; rel=\"next\""),
            None
        );
    }
}
