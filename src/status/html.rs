//! The status page's HTML: one function per view, from the same structs the
//! JSON API serializes. maud escapes every value it is given, in text and
//! in attributes; nothing here may bypass that (a test greps for maud's one way
//! around it).
//! No inline script or style (the Content-Security-Policy forbids both):
//! sizes in charts are SVG attributes, colours come from the stylesheet.
//!
//! Every figure a test or a script may want is a `<data value=…>` with a
//! `data-figure` name: exact integers beside their human form.

use maud::{html, Markup, DOCTYPE};

use super::model::{
    ImageDetail, Images, Overview, Problems, SyncView, Traffic, UpstreamView, PER_PAGE,
};
use super::{assets, svg, Page};

/// `1536` → `1.5 KiB` (as `wharf sync` prints sizes).
pub use crate::sync::human_bytes as bytes;

/// Unix milliseconds as `2026-11-30 12:00:00 UTC`.
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn ago(now_ms: u64, ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// `42 s`, `12 min`, `3 h`.
pub fn span(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7199 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| format!("{:.1} %", r * 100.0))
}

/// A figure: its exact value for machines, its human form for people.
fn fig(name: &str, value: u64, shown: String) -> Markup {
    html! { data data-figure=(name) value=(value) { (shown) } }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// The page around a view.
pub fn layout(page: &Page, title: &str, now_ms: u64, content: Markup) -> Markup {
    let base = page.base;
    let nav = [
        ("overview", "", "Overview"),
        ("upstreams", "/upstreams", "Upstreams"),
        ("images", "/images", "Images"),
        ("sync", "/sync", "Sync"),
        ("problems", "/problems", "Problems"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { "wharf · " (title) }
                link rel="stylesheet" href={ (base) "/static/" (assets::CSS.name()) };
                script defer src={ (base) "/static/" (assets::JS.name()) } {}
            }
            body data-refresh="10" {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "wharf" }
                    nav aria-label="Views" {
                        @for (id, path, label) in nav {
                            @if id == page.view {
                                a href={ (base) (path) "/" } aria-current="page" { (label) }
                            } @else {
                                a href={ (base) (path) "/" } { (label) }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
                footer {
                    span #updated aria-live="polite" { "As of " (when(now_ms)) }
                    " "
                    button #pause type="button" hidden { "Pause updates" }
                }
            }
        }
    }
}

pub fn overview(page: &Page, o: &Overview) -> Markup {
    let u = &o.usage;
    let used_pct = if u.budget > 0 {
        u.bytes as f64 * 100.0 / u.budget as f64
    } else {
        0.0
    };
    let body = html! {
        section aria-labelledby="cache-h" {
            h2 #cache-h { "Cache" }
            (svg::usage_bar(u))
            p {
                (fig("cache-bytes", u.bytes, bytes(u.bytes))) " used of "
                (fig("cache-budget", u.budget, bytes(u.budget)))
                @if u.max_size.is_none() { " (the filesystem)" }
                " (" (format!("{used_pct:.1} %")) "). Eviction starts past "
                (fig("cache-high", u.high, bytes(u.high))) " and stops at "
                (fig("cache-low", u.low, bytes(u.low))) "."
            }
            dl.figures {
                div { dt { "Pinned" } dd { (fig("cache-pinned", u.pinned_bytes, bytes(u.pinned_bytes))) } }
                div { dt { "Blobs" } dd { (fig("cache-blobs", u.blobs, u.blobs.to_string())) } }
                div { dt { "Manifests" } dd { (fig("cache-manifests", u.manifests, u.manifests.to_string())) } }
                div { dt { "Images" } dd { (fig("cache-images", u.images, u.images.to_string())) } }
                div { dt { "Repositories" } dd { (fig("cache-repositories", u.repositories, u.repositories.to_string())) } }
                div { dt { "Disk free" } dd { (fig("disk-available", u.disk_available, bytes(u.disk_available))) " of " (bytes(u.disk_size)) } }
            }
            @if !u.upstreams.is_empty() {
                table {
                    caption { "Cached content by upstream (content two upstreams share counts in each)" }
                    thead { tr { th scope="col" { "Upstream" } th scope="col" { "Size" } } }
                    tbody {
                        @for (name, size) in &u.upstreams {
                            tr { th scope="row" { (name) } td.num { (fig("upstream-size", *size, bytes(*size))) } }
                        }
                    }
                }
            }
            p.note { "Inventory as of " (when(o.catalog_built_ms)) " (generation " (o.generation) ")." }
        }
        section aria-labelledby="traffic-h" {
            h2 #traffic-h { "Traffic" }
            (traffic_table(&o.since_start, &o.last_hour))
            (svg::series(&o.series))
            p.note { "Served: blob bytes sent to clients. Fetched: blob bytes received from upstreams. Saved: served minus fetched (sync and prefetch fetch without serving, so it is a lower bound)." }
        }
        section aria-labelledby="fills-h" {
            h2 #fills-h { "Downloads in flight" }
            @if o.fills.is_empty() {
                p { "None." }
            } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Blob" } th scope="col" { "From" } th scope="col" { "Progress" } th scope="col" { "Readers" } th scope="col" { "For" } } }
                    tbody {
                        @for f in &o.fills {
                            tr data-fill=(f.digest) {
                                td { code title=(f.digest) { (short(&f.digest)) } }
                                td { (f.upstream) "/" (f.repository) }
                                td {
                                    @match f.size {
                                        Some(size) => { progress value=(f.written) max=(size) {} " " (fig("fill-written", f.written, bytes(f.written))) " of " (bytes(size)) }
                                        None => { (fig("fill-written", f.written, bytes(f.written))) " (size not known yet)" }
                                    }
                                }
                                td.num { (f.readers) }
                                td.num { (format!("{:.0} s", f.seconds)) }
                            }
                        }
                    }
                } }
            }
            p { (fig("coalesced", o.coalesced, o.coalesced.to_string())) " requests joined a download already in flight instead of starting their own." }
        }
        section aria-labelledby="evict-h" {
            h2 #evict-h { "Evictions" }
            p {
                (fig("evicted-blobs", o.evictions.blobs, o.evictions.blobs.to_string())) " blobs ("
                (fig("evicted-bytes", o.evictions.bytes, bytes(o.evictions.bytes))) ") evicted in "
                (fig("eviction-runs", o.evictions.runs, o.evictions.runs.to_string())) " passes since start."
                @if let (Some(at), Some(n), Some(b)) = (o.evictions.last_ms, o.evictions.last_blobs, o.evictions.last_bytes) {
                    " The last one removed " (n) " blobs (" (bytes(b)) ") " (ago(o.now_ms, at)) "."
                }
            }
        }
    };
    layout(page, "Overview", o.now_ms, body)
}

fn traffic_table(start: &Traffic, hour: &Traffic) -> Markup {
    let cols = [("since start", "start", start), ("last hour", "hour", hour)];
    html! {
        div.scroll { table {
            thead { tr {
                th scope="col" { span.vh { "Measure" } }
                @for (label, _, t) in &cols { th scope="col" { (label) " (" (span(t.seconds)) ")" } }
            } }
            tbody {
                tr { th scope="row" { "Hit ratio" } @for (_, id, t) in &cols { td.num data-figure={ "hit-ratio-" (id) } { (percent(t.hit_ratio)) " (" (fig(&format!("hits-{id}"), t.hits, t.hits.to_string())) " of " (fig(&format!("lookups-{id}"), t.lookups, t.lookups.to_string())) ")" } } }
                tr { th scope="row" { "Served from cache" } @for (_, id, t) in &cols { td.num { (fig(&format!("served-cache-{id}"), t.served_cache, bytes(t.served_cache))) } } }
                tr { th scope="row" { "Served while fetching" } @for (_, id, t) in &cols { td.num { (fig(&format!("served-upstream-{id}"), t.served_upstream, bytes(t.served_upstream))) } } }
                tr { th scope="row" { "Fetched from upstreams" } @for (_, id, t) in &cols { td.num { (fig(&format!("fetched-{id}"), t.fetched, bytes(t.fetched))) } } }
                tr { th scope="row" { "Upstream bytes saved" } @for (_, id, t) in &cols { td.num { (fig(&format!("saved-{id}"), t.saved, bytes(t.saved))) } } }
            }
        } }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.0} ms"))
}

pub fn upstreams(page: &Page, now_ms: u64, ups: &[UpstreamView]) -> Markup {
    let body = html! {
        @for u in ups {
            section.upstream aria-labelledby={ "up-" (u.name) } data-upstream=(u.name) {
                h2 id={ "up-" (u.name) } { (u.name) " " span class={ "state " (u.health.state.as_str()) } data-figure="state" { (u.health.state.as_str()) } }
                @if let Some(s) = u.health.retry_in_s { p { "Could not be reached: serving from cache only; retrying in " (s) " s." } }
                @if let Some(s) = u.health.backoff_s { p { "Answered 429 Too Many Requests (" (u.health.strikes) " in a row): backing off for " (s) " s more." } }
                dl.figures {
                    div { dt { "Fetched" } dd { (fig("fetched", u.fetched, bytes(u.fetched))) } }
                    div { dt { "Requests" } dd { (fig("requests", u.requests, u.requests.to_string())) } }
                    div { dt { "Latency p50 / p90 / p99" } dd { (ms(u.p50_ms)) " / " (ms(u.p90_ms)) " / " (ms(u.p99_ms)) } }
                    div { dt { "Tokens fetched" } dd { (fig("token-fetches", u.token_fetches, u.token_fetches.to_string())) @if u.metadata_tokens > 0 { " (+" (u.metadata_tokens) " from the metadata server)" } } }
                    div { dt { "Rate limit" } dd {
                        @match u.health.ratelimit_remaining {
                            Some(r) => { (fig("ratelimit-remaining", r.max(0) as u64, r.to_string())) @if let Some(l) = u.health.ratelimit_limit { " of " (l) } " left" @if let Some(w) = u.health.ratelimit_window_s { " per " (w / 3600) " h" } }
                            None => { "not announced" }
                        }
                    } }
                    div { dt { "429s, requests held back" } dd { (fig("throttled", u.throttled, u.throttled.to_string())) ", " (fig("backoff-skipped", u.backoff_skipped, u.backoff_skipped.to_string())) } }
                }
                @if u.errors.is_empty() && u.refused.is_empty() {
                    p { "No errors." }
                } @else {
                    table {
                        caption { "Errors and refused answers" }
                        thead { tr { th scope="col" { "Kind" } th scope="col" { "Count" } } }
                        tbody {
                            @for (kind, n) in &u.errors { tr { th scope="row" { (kind) } td.num { (fig(&format!("error-{kind}"), *n, n.to_string())) } } }
                            @for (reason, n) in &u.refused { tr { th scope="row" { "refused: " (reason) } td.num { (fig(&format!("refused-{reason}"), *n, n.to_string())) } } }
                        }
                    }
                }
            }
        }
    };
    layout(page, "Upstreams", now_ms, body)
}

fn query(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

fn image_href(page: &Page, upstream: &str, repo: &str, digest: &str) -> String {
    format!(
        "{}/image/?{}",
        page.base,
        query(&[("upstream", upstream), ("repo", repo), ("digest", digest)])
    )
}

pub fn images(page: &Page, now_ms: u64, v: &Images) -> Markup {
    let pager = |p: usize| {
        let n = p.to_string();
        format!(
            "{}/images/?{}",
            page.base,
            query(&[("q", v.q.as_str()), ("page", n.as_str())])
        )
    };
    let body = html! {
        form.search role="search" method="get" action={ (page.base) "/images/" } {
            label {
                "Search repositories and tags "
                input type="search" name="q" value=(v.q) maxlength="128" autocomplete="off";
            }
            button type="submit" { "Search" }
        }
        p {
            (fig("repos-matched", v.matched as u64, v.matched.to_string())) " of "
            (fig("repos-total", v.total as u64, v.total.to_string())) " repositories"
            @if v.pages > 1 { ", page " (v.page) " of " (v.pages) " (" (PER_PAGE) " per page)" }
            ". Inventory as of " (when(v.catalog_built_ms)) "."
        }
        div.scroll { table.images {
            thead { tr {
                th scope="col" { "Image" } th scope="col" { "Digest" } th scope="col" { "Size" }
                th scope="col" { "Blobs cached" } th scope="col" { "Last pulled" } th scope="col" { "Pinned" } th scope="col" { "Platforms" }
            } }
            @for r in &v.repos {
                tbody data-repo={ (r.upstream) "/" (r.repository) } {
                    tr.repo { th scope="rowgroup" colspan="2" { (r.upstream) "/" (r.repository) } td.num { (fig("repo-size", r.size, bytes(r.size))) } td colspan="4" {} }
                    @for i in &r.images {
                        tr data-digest=(i.digest) {
                            th scope="row" { @match &i.tag { Some(t) => { ":" (t) } None => { span.muted { "(by digest)" } } } }
                            td { a href=(image_href(page, &r.upstream, &r.repository, &i.digest)) { code title=(i.digest) { (short(&i.digest)) } } }
                            td.num { (fig("image-size", i.size, bytes(i.size))) }
                            td.num { (i.cached_blobs) " / " (i.total_blobs) }
                            td { (ago(now_ms, i.last_access_ms)) }
                            td { @if i.pinned { "pinned" } }
                            td { @for (n, p) in i.platforms.iter().enumerate() { @if n > 0 { ", " } (p) } }
                        }
                    }
                }
            }
        } }
        @if v.pages > 1 {
            nav.pager aria-label="Pages" {
                @if v.page > 1 { a rel="prev" href=(pager(v.page - 1)) { "← Previous" } }
                " "
                @if v.page < v.pages { a rel="next" href=(pager(v.page + 1)) { "Next →" } }
            }
        }
    };
    layout(page, "Images", now_ms, body)
}

pub fn image(page: &Page, now_ms: u64, d: &ImageDetail) -> Markup {
    let body = html! {
        dl.figures {
            div { dt { "Repository" } dd { (d.upstream) "/" (d.repository) } }
            div { dt { "Digest" } dd { code { (d.digest) } } }
            div { dt { "Tags" } dd { @if d.tags.is_empty() { "none (cached by digest)" } @for (n, t) in d.tags.iter().enumerate() { @if n > 0 { ", " } (t) } } }
            div { dt { "Type" } dd { (d.media_type.as_deref().unwrap_or("unknown")) } }
            div { dt { "Size in the cache" } dd { (fig("image-size", d.size, bytes(d.size))) } }
            div { dt { "Last pulled" } dd { (ago(now_ms, d.last_access_ms)) } }
            div { dt { "Pinned" } dd { @if d.pinned { "yes" } @else { "no" } } }
        }
        @if !d.children.is_empty() {
            div.scroll { table {
                caption { "Platforms" }
                thead { tr { th scope="col" { "Platform" } th scope="col" { "Manifest" } th scope="col" { "Cached" } } }
                tbody {
                    @for c in &d.children {
                        tr {
                            th scope="row" { (c.platform.as_deref().unwrap_or("(none)")) }
                            td { a href=(image_href(page, &d.upstream, &d.repository, &c.digest)) { code title=(c.digest) { (short(&c.digest)) } } }
                            td { @if c.cached { "yes" } @else { "no" } }
                        }
                    }
                }
            } }
        }
        @if !d.blobs.is_empty() {
            div.scroll { table {
                caption { "Config and layers" }
                thead { tr { th scope="col" { "Blob" } th scope="col" { "Size" } th scope="col" { "Cached" } } }
                tbody {
                    @for b in &d.blobs {
                        tr data-digest=(b.digest) {
                            td { code title=(b.digest) { (short(&b.digest)) } }
                            td.num { (fig("blob-size", b.size, bytes(b.size))) }
                            td { @if b.cached { "yes" } @else { "no" } }
                        }
                    }
                }
            } }
        }
        @if d.more > 0 { p.note { "… and " (d.more) " more not shown." } }
        @if let Some(m) = &d.manifest {
            details { summary { "Manifest" } pre { code { (m) } } }
        }
    };
    layout(page, "Image", now_ms, body)
}

pub fn sync(page: &Page, now_ms: u64, v: &SyncView) -> Markup {
    let body = html! {
        section aria-labelledby="rules-h" {
            h2 #rules-h { "Sync rules" }
            @if v.rules.is_empty() {
                p { "No [[sync]] rule is configured." }
            }
            @for r in &v.rules {
                article.rule data-rule=(r.name) {
                    h3 { (r.name) " " span.muted { "from " (r.upstream) } }
                    p {
                        @match &r.schedule { Some(s) => { "Schedule: " (s) "." } None => { "No schedule: runs by `wharf sync`." } }
                        @if r.running { " " strong { "Running now." } }
                        @if let Some(n) = r.next_run { " Next run: " (when(n * 1000)) "." }
                    }
                    @match &r.last {
                        None => { p { "Never ran." } }
                        Some(s) => {
                            p {
                                "Last run " (when(s.started * 1000)) ", " (s.finished.saturating_sub(s.started)) " s: "
                                (fig("synced", s.synced, s.synced.to_string())) " synced, "
                                (fig("unchanged", s.unchanged, s.unchanged.to_string())) " unchanged, "
                                (fig("failed", s.failed.len() as u64, s.failed.len().to_string())) " failed; "
                                (bytes(s.bytes_fetched)) " fetched"
                                @if s.paused_seconds > 0 { ", " (s.paused_seconds) " s paused for rate limits" } "."
                            }
                            @if !s.failed.is_empty() {
                                ul.failures { @for f in &s.failed { li { code { (f.reference) } ": " (f.reason) } } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="imports-h" {
            h2 #imports-h { "Bundle imports" }
            @for p in &v.imports_running {
                p {
                    "Importing " code { (p.bundle) } " since " (when(p.started_ms)) ": "
                    progress value=(p.copied) max=(p.bytes.max(1)) {} " "
                    (fig("import-copied", p.copied, bytes(p.copied))) " of " (bytes(p.bytes))
                    " (" (p.blobs) " blobs; " (p.present) " already here)."
                }
            }
            @if v.imports.is_empty() && v.imports_running.is_empty() {
                p { "No bundle imported since start." }
            } @else if !v.imports.is_empty() {
                div.scroll { table {
                    thead { tr { th scope="col" { "Bundle" } th scope="col" { "Finished" } th scope="col" { "Result" } } }
                    tbody {
                        @for i in &v.imports {
                            tr {
                                th scope="row" { code { (i.bundle) } }
                                td { (when(i.finished_ms)) }
                                td { @if i.ok { "imported" } @else { "failed: " } (import_summary(&i.report)) }
                            }
                        }
                    }
                } }
            }
        }
    };
    layout(page, "Sync and imports", now_ms, body)
}

fn import_summary(report: &serde_json::Value) -> String {
    if let Some(e) = report.get("error").and_then(|e| e.as_str()) {
        return e.to_owned();
    }
    let n = |k: &str| report.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    format!(
        " {} refs, {} blobs written ({}), {} present, {} tags moved",
        n("refs"),
        n("blobs_written"),
        bytes(n("bytes_written")),
        n("blobs_present"),
        n("tags_moved")
    )
}

pub fn problems(page: &Page, v: &Problems) -> Markup {
    let body = html! {
        p { "The last " (super::record::PROBLEMS) " failed requests, newest first, as their clients were answered." }
        @if v.problems.is_empty() {
            p { "None since start." }
        } @else {
            div.scroll { table.problems {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Request" } th scope="col" { "Status" }
                    th scope="col" { "Code" } th scope="col" { "Blame" } th scope="col" { "Message" } th scope="col" { "Client" }
                } }
                tbody {
                    @for p in &v.problems {
                        tr data-status=(p.status) data-blame=(p.blame) {
                            td { (ago(v.now_ms, p.at_ms)) }
                            td { (p.method) " " code { (p.path) } br; span.muted { (p.endpoint) @if let Some(u) = &p.upstream { " via " (u) } } }
                            td.num { (p.status) }
                            td { code { (p.code) } }
                            td { span class={ "blame " (p.blame) } { (p.blame) } }
                            td { (p.message) }
                            td { (p.client.as_deref().unwrap_or("")) }
                        }
                    }
                }
            } }
        }
    };
    layout(page, "Recent problems", v.now_ms, body)
}

/// A plain error page (404 for a view or image that does not exist).
pub fn not_found(page: &Page, now_ms: u64, what: &str) -> Markup {
    layout(page, "Not found", now_ms, html! { p { (what) } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(ago(70_000, 10_000), "1 min ago");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn the_stylesheet_and_script_load_nothing() {
        for a in [&super::assets::CSS, &super::assets::JS] {
            for word in ["url(", "@import", "http:", "https:", "//cdn", "eval("] {
                assert!(!a.body().contains(word), "{} holds {word}", a.name());
            }
        }
    }

    #[test]
    fn no_template_bypasses_escaping() {
        // maud's escape hatch (Pre…Escaped) is the only way around its escaping: the status
        // module never uses it.
        for (name, text) in [
            ("html.rs", include_str!("html.rs")),
            ("svg.rs", include_str!("svg.rs")),
            ("mod.rs", include_str!("mod.rs")),
        ] {
            let needle = ["Pre", "Escaped"].concat();
            assert!(!text.contains(&needle), "{name} uses {needle}");
        }
    }
}
