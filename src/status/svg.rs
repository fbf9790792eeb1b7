//! The overview's two pictures, drawn on the server as inline SVG: the
//! cache against its budget and watermarks, and an hour of traffic. Sizes
//! are SVG attributes and colours CSS classes (no `style`: the CSP forbids
//! inline styles); each picture has a text alternative with its figures.

use maud::{html, Markup};

use super::html::bytes;
use super::model::{Rate, UsageView};

const W: f64 = 600.0;

/// A bar: used (and within it pinned) against the budget, with the low and
/// high watermarks marked.
pub fn usage_bar(u: &UsageView) -> Markup {
    let budget = u.budget.max(1) as f64;
    let x = |v: u64| (v as f64 / budget * W).clamp(0.0, W);
    let label = format!(
        "{} used of {}, {} pinned; eviction from {} down to {}",
        bytes(u.bytes),
        bytes(u.budget),
        bytes(u.pinned_bytes),
        bytes(u.high),
        bytes(u.low)
    );
    html! {
        svg.bar viewBox={ "0 0 " (W) " 28" } width="100%" height="28" role="img" aria-label=(label) preserveAspectRatio="none" {
            title { (label) }
            rect.track x="0" y="4" width=(W) height="20" rx="3" {}
            rect.used x="0" y="4" width=(format!("{:.1}", x(u.bytes))) height="20" rx="3" {}
            rect.pinned x="0" y="4" width=(format!("{:.1}", x(u.pinned_bytes.min(u.bytes)))) height="20" rx="3" {}
            line.mark x1=(format!("{:.1}", x(u.low))) x2=(format!("{:.1}", x(u.low))) y1="0" y2="28" {}
            line.mark.high x1=(format!("{:.1}", x(u.high))) x2=(format!("{:.1}", x(u.high))) y1="0" y2="28" {}
        }
    }
}

/// Served and fetched bytes per second over the samples (oldest left), on
/// one scale, with the peak written on the axis.
pub fn series(points: &[Rate]) -> Markup {
    const H: f64 = 120.0;
    if points.len() < 2 {
        return html! { p.note { "The traffic chart appears once two samples (20 s) are taken." } };
    }
    let peak = points
        .iter()
        .map(|p| p.served.max(p.fetched))
        .fold(0.0, f64::max)
        .max(1.0);
    // Wall-clock samples: a clock stepped back must not wrap.
    let (t0, t1) = (
        points[0].at_ms,
        points[points.len() - 1].at_ms.max(points[0].at_ms),
    );
    let span = (t1 - t0).max(1) as f64;
    let line = |f: &dyn Fn(&Rate) -> f64| {
        points
            .iter()
            .map(|p| {
                let x = (p.at_ms.saturating_sub(t0) as f64 / span * W).min(W);
                let y = H - f(p) / peak * (H - 4.0);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let over = super::html::span((t1 - t0) / 1000);
    let label = format!(
        "Bytes per second over the last {over}: served to clients and fetched from upstreams; peak {}/s",
        bytes(peak as u64)
    );
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (W) " " (H) } width="100%" height=(H) role="img" aria-label=(label) preserveAspectRatio="none" {
                title { (label) }
                line.axis x1="0" x2=(W) y1=(H) y2=(H) {}
                polyline.served points=(line(&|p: &Rate| p.served)) {}
                polyline.fetched points=(line(&|p: &Rate| p.fetched)) {}
            }
            figcaption {
                span.key.served { "served" } " " span.key.fetched { "fetched" }
                " · per second, last " (over) " · peak " (bytes(peak as u64)) "/s"
            }
        }
    }
}
