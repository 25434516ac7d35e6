//! Charts drawn on the server as inline SVG (no script runs in the
//! console): leads, sent and delivered per hour over 48 hours; the queue
//! now; the funnel of the last 24 hours and 7 days. Each chart has a text
//! label and every bar a `<title>`, so a screen reader and a hover say the
//! figures.
//!
//! The rule this room keeps: a chart is laid out from its content. Its width
//! makes room for its longest label at any count (measured generously by
//! `text_width`), and it scales down on a narrow screen (`viewBox`), so no
//! figure is ever cut off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};

// the escape the pages use, from where they take it: charts stand below
// the pages
use crate::messages::templates::html_escape as esc;

/// Leads that arrived, emails and SMS sent (each on its own) and of those
/// the delivered ones, per hour over the last 48 (the current hour last). The
/// leads come from `landing_leads_created_at_idx`, the sends from
/// `notification_jobs_sent_at_idx`: two ranges of 48 hours.
pub const HOURLY: &str = concat!(
    "
with hours as (
  select generate_series(date_trunc('hour', now()) - interval '47 hours', date_trunc('hour', now()), interval '1 hour') as h
), leads as (
  select date_trunc('hour', created_at) as h, count(*) as n
  from public.landing_leads
  where created_at >= date_trunc('hour', now()) - interval '47 hours'
  group by 1
), sends as (
  select date_trunc('hour', sent_at) as h,
         count(*) filter (where channel = 'email') as email_sent,
         count(*) filter (where channel = 'sms') as sms_sent,
         count(*) filter (where channel in ('email', 'sms')
                            and delivery_status in (",
    crate::domain::arrived_states_sql!(),
    ")) as delivered
  from public.notification_jobs
  where sent_at >= date_trunc('hour', now()) - interval '47 hours'
  group by 1
)
select hours.h, coalesce(leads.n, 0), coalesce(sends.email_sent, 0), coalesce(sends.sms_sent, 0),
       coalesce(sends.delivered, 0)
from hours left join leads using (h) left join sends using (h)
order by hours.h"
);

/// The last 24 hours and 7 days: leads that arrived, and messages sent in
/// that time with how far they got (delivered, opened, clicked). Counting
/// sends by when they were sent rather than by their lead's arrival keeps it
/// two index ranges (the leads' `created_at`, the jobs' covering `sent_at`
/// index), not a join of a week of leads with their jobs.
pub const FUNNEL: &str = concat!(
    "
with leads as (
  select count(*) filter (where created_at > now() - interval '24 hours') as day, count(*) as week
  from public.landing_leads
  where created_at > now() - interval '7 days'
), sends as (
  select sent_at > now() - interval '24 hours' as day, channel,
         delivery_status in (",
    crate::domain::arrived_states_sql!(),
    ") as delivered,
         delivery_status in ('opened', 'clicked') as opened,
         delivery_status = 'clicked' as clicked
  from public.notification_jobs
  where sent_at > now() - interval '7 days' and channel in ('email', 'sms')
)
select (select day from leads), (select week from leads),
       count(*) filter (where day and channel = 'email'), count(*) filter (where channel = 'email'),
       count(*) filter (where day and channel = 'email' and delivered), count(*) filter (where channel = 'email' and delivered),
       count(*) filter (where day and channel = 'email' and opened), count(*) filter (where channel = 'email' and opened),
       count(*) filter (where day and channel = 'email' and clicked), count(*) filter (where channel = 'email' and clicked),
       count(*) filter (where day and channel = 'sms'), count(*) filter (where channel = 'sms'),
       count(*) filter (where day and channel = 'sms' and delivered), count(*) filter (where channel = 'sms' and delivered)
from sends"
);

/// The charts as last drawn, reused for `ttl` (CONSOLE_CHART_TTL, 10 s by
/// default): their queries are most of the front page's cost, and operators
/// reloading it should not take the worker's CPU. One request draws while
/// the others wait for its result.
#[derive(Clone)]
pub struct ChartCache {
    ttl: Duration,
    last: Arc<tokio::sync::Mutex<Option<(Instant, String)>>>,
}

impl ChartCache {
    pub fn new(ttl: Duration) -> ChartCache {
        ChartCache {
            ttl,
            last: Default::default(),
        }
    }

    pub async fn get_or_draw<F, Fut, E>(&self, draw: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
    {
        let mut slot = self.last.lock().await;
        if let Some((at, html)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(html.clone());
        }
        let html = draw().await?;
        *slot = Some((Instant::now(), html.clone()));
        Ok(html)
    }
}

/// The funnel's steps, in order.
pub const FUNNEL_STEPS: [&str; 7] = [
    "Leads",
    "Email sent",
    "Email delivered",
    "Email opened",
    "Email clicked",
    "SMS sent",
    "SMS delivered",
];

/// How wide `text` is at `size` px, generously: digits and the lower-case
/// Latin and Cyrillic letters of a sans-serif face (DejaVu Sans, Arial) are
/// at most about 0.65 em wide on average over a word.
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.7
}

/// The `<svg>` element of a chart of `width` × `height`: that size on a wide
/// screen, scaled down to fit a narrow one.
fn svg(label: &str, width: f64, height: f64) -> String {
    format!(
        "<svg role=img aria-label=\"{label}\" width={w} height={h} viewBox=\"0 0 {w} {h}\" style=\"max-width:100%;height:auto\">",
        label = esc(label),
        w = width.ceil(),
        h = height.ceil()
    )
}

/// Horizontal bars, one per funnel step, each with its figure after it.
pub fn funnel(title: &str, steps: &[(&str, i64)]) -> String {
    const BARS_AT: f64 = 130.0;
    const BAR_MAX: f64 = 260.0;
    let max = steps.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let mut bars = String::new();
    let mut right = text_width(title, 14.0);
    for (i, (label, n)) in steps.iter().enumerate() {
        let y = 28 + i * 30;
        let width = (*n as f64 / max * BAR_MAX).round();
        let tx = BARS_AT + 6.0 + width;
        right = right.max(tx + text_width(&n.to_string(), 12.0));
        bars.push_str(&format!(
            "<text x=0 y={ty} font-size=12>{label}</text><rect x={BARS_AT} y={y} width={width} height=20 fill=#2f6fed rx=3><title>{label}: {n}</title></rect>\
<text x={tx} y={ty} font-size=12>{n}</text>",
            ty = y + 14,
            label = esc(label),
        ));
    }
    let height = 28 + steps.len() * 30;
    format!(
        "<div class=chart>{}<text x=0 y=16 font-size=14 font-weight=600>{t}</text>{bars}</svg></div>",
        svg(title, (right + 10.0).max(440.0), height as f64),
        t = esc(title)
    )
}

/// One hour's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hour {
    pub at: DateTime<Utc>,
    pub leads: i64,
    pub email_sent: i64,
    pub sms_sent: i64,
    pub delivered: i64,
}

const SERIES: [(&str, &str); 4] = [
    ("Leads", "#6b7280"),
    ("Emails sent", "#2f6fed"),
    ("SMS sent", "#8a4fd6"),
    ("Delivered", "#16794c"),
];

/// The ticks of an axis from 0 to at least `max`: 1, 2 or 5 times a power
/// of ten apart, four or five of them.
pub fn ticks(max: i64) -> Vec<i64> {
    let max = max.max(1);
    let mut step = 1i64;
    loop {
        for m in [1, 2, 5] {
            let candidate = step.saturating_mul(m);
            let steps = (max + candidate - 1) / candidate;
            if steps <= 4 {
                return (0..=steps).map(|k| k * candidate).collect();
            }
        }
        step = step.saturating_mul(10);
    }
}

/// A tick's figure, short: 950, 12k, 1.5M.
fn tick_label(n: i64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

/// The label under every sixth hour: day of the month and hour.
fn hour_label(at: DateTime<Utc>) -> String {
    at.format("%d %H:00").to_string()
}

/// Four bars per hour (leads, emails sent, SMS sent, delivered), a value
/// axis with ticks, a label every 6 hours.
pub fn hourly(hours: &[Hour]) -> String {
    const BAR: usize = 4;
    const GROUP: usize = 4 * BAR + 4;
    const HEIGHT: f64 = 160.0;
    const TOP: f64 = 40.0;
    let max = hours
        .iter()
        .map(|h| h.leads.max(h.email_sent).max(h.sms_sent))
        .max()
        .unwrap_or(0);
    let ticks = ticks(max);
    let scale = *ticks.last().unwrap_or(&1) as f64;
    let left = ticks
        .iter()
        .map(|t| text_width(&tick_label(*t), 10.0))
        .fold(0.0, f64::max)
        .ceil()
        + 8.0;
    let bars_end = left + (hours.len() * GROUP) as f64 + 10.0;
    // The hour labels start at their group, so the last one (when the
    // current hour is a multiple of 6) reaches past the bars: the chart
    // makes room for it.
    let right = hours
        .iter()
        .enumerate()
        .filter(|(_, h)| h.at.hour() % 6 == 0)
        .map(|(i, h)| left + (i * GROUP) as f64 + text_width(&hour_label(h.at), 10.0))
        .fold(bars_end, f64::max);
    let mut axis = String::new();
    for t in &ticks {
        let y = TOP + HEIGHT - *t as f64 / scale * HEIGHT;
        axis.push_str(&format!(
            "<line x1={left} x2={bars_end} y1={y} y2={y} stroke=#e5e7eb></line><text x={tx} y={ty} font-size=10 fill=#6b7280 text-anchor=end>{}</text>",
            tick_label(*t),
            tx = left - 4.0,
            ty = y + 3.0,
        ));
    }
    let mut bars = String::new();
    for (i, h) in hours.iter().enumerate() {
        let x0 = left + (i * GROUP) as f64;
        for (k, (value, (name, colour))) in [h.leads, h.email_sent, h.sms_sent, h.delivered]
            .iter()
            .zip(SERIES)
            .enumerate()
        {
            let height = (*value as f64 / scale * HEIGHT).round();
            bars.push_str(&format!(
                "<rect x={x} y={y} width={BAR} height={height} fill={colour}><title>{at} UTC · {name}: {value}</title></rect>",
                x = x0 + (k * BAR) as f64,
                y = TOP + HEIGHT - height,
                at = h.at.format("%m-%d %H:00"),
            ));
        }
        if h.at.hour() % 6 == 0 {
            bars.push_str(&format!(
                "<text x={x0} y={y} font-size=10 fill=#6b7280>{}</text>",
                hour_label(h.at),
                y = TOP + HEIGHT + 14.0
            ));
        }
    }
    let mut legend = String::new();
    let mut x = 0.0;
    for (name, colour) in SERIES {
        legend.push_str(&format!(
            "<rect x={x} y=24 width=10 height=10 fill={colour}></rect><text x={tx} y=33 font-size=12>{name}</text>",
            tx = x + 14.0
        ));
        x += 14.0 + text_width(name, 12.0) + 14.0;
    }
    let title = "Per hour, last 48 hours (UTC)";
    let width = right.max(x).max(text_width(title, 14.0));
    format!(
        "<div class=chart>{}<text x=0 y=16 font-size=14 font-weight=600>{title}</text>{legend}{axis}{bars}</svg></div>",
        svg("Per hour, last 48 hours", width, TOP + HEIGHT + 22.0),
    )
}

/// The queue now: per channel, stacked scheduled / due / sending / failed,
/// with every count written under its bar (never after it, where a long bar
/// would push it out).
pub fn queue(counts: &[(String, [i64; 4])]) -> String {
    const KINDS: [(&str, &str); 4] = [
        ("scheduled", "#c5ccd6"),
        ("due", "#8a6d00"),
        ("sending", "#2f6fed"),
        ("failed", "#b42318"),
    ];
    const BARS_AT: f64 = 110.0;
    const BAR_MAX: f64 = 280.0;
    const ROW: usize = 52;
    let max = counts
        .iter()
        .map(|(_, c)| c.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut rows = String::new();
    let mut right = BARS_AT + BAR_MAX;
    for (i, (channel, c)) in counts.iter().enumerate() {
        let y = 44 + i * ROW;
        rows.push_str(&format!(
            "<text x=0 y={ty} font-size=12>{}</text>",
            esc(channel),
            ty = y + 15
        ));
        let mut x = BARS_AT;
        for (n, (kind, colour)) in c.iter().zip(KINDS) {
            let width = (*n as f64 / max * BAR_MAX).round();
            rows.push_str(&format!(
                "<rect x={x} y={y} width={width} height=22 fill={colour}><title>{channel} {kind}: {n}</title></rect>",
                channel = esc(channel),
            ));
            x += width;
        }
        let label = c
            .iter()
            .zip(KINDS)
            .map(|(n, (k, _))| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(" · ");
        right = right.max(BARS_AT + text_width(&label, 12.0));
        rows.push_str(&format!(
            "<text x={BARS_AT} y={ty} font-size=12 class=queue-{ch}>{label}</text>",
            ty = y + 38,
            ch = esc(channel),
        ));
    }
    let mut legend = String::new();
    let mut x = 0.0;
    for (kind, colour) in KINDS {
        legend.push_str(&format!(
            "<rect x={x} y=22 width=10 height=10 fill={colour}></rect><text x={tx} y=31 font-size=11>{kind}</text>",
            tx = x + 14.0
        ));
        x += 14.0 + text_width(kind, 11.0) + 16.0;
    }
    format!(
        "<div class=chart>{}<text x=0 y=14 font-size=14 font-weight=600>Queue now</text>{legend}{rows}</svg></div>",
        svg(
            "Queue now",
            right.max(x) + 10.0,
            (48 + counts.len() * ROW) as f64
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drawn_charts_are_reused_for_their_ttl_only() {
        let draws = std::sync::atomic::AtomicUsize::new(0);
        let draw = || async {
            let n = draws.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(format!("drawing {n}"))
        };
        let cache = ChartCache::new(Duration::from_millis(200));
        assert_eq!(cache.get_or_draw(draw).await, Ok("drawing 0".into()));
        assert_eq!(cache.get_or_draw(draw).await, Ok("drawing 0".into()));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(cache.get_or_draw(draw).await, Ok("drawing 1".into()));
        let never = ChartCache::new(Duration::ZERO);
        assert_eq!(never.get_or_draw(draw).await, Ok("drawing 2".into()));
        assert_eq!(never.get_or_draw(draw).await, Ok("drawing 3".into()));
        // a failed drawing is not kept
        assert_eq!(
            never.get_or_draw(|| async { Err::<String, ()>(()) }).await,
            Err(())
        );
    }

    #[test]
    fn charts_escape_labels_and_survive_zeroes() {
        let svg = funnel("<b>", &[("Leads", 0), ("x<y", 0)]);
        assert!(svg.contains("&lt;b&gt;") && svg.contains("x&lt;y") && !svg.contains("<b>"));
        let hours: Vec<Hour> = (0..48)
            .map(|i| Hour {
                at: Utc::now() - chrono::Duration::hours(47 - i),
                leads: 0,
                email_sent: 0,
                sms_sent: 0,
                delivered: 0,
            })
            .collect();
        let svg = hourly(&hours);
        assert_eq!(svg.matches("<rect").count(), 48 * 4 + 4);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let svg = queue(&[("email".into(), [0, 0, 0, 0]), ("sms".into(), [3, 1, 0, 2])]);
        assert!(svg.contains("scheduled 3 · due 1 · sending 0 · failed 2"));
    }

    /// The chart's width, and every `<text>`'s x, font size, whether it is
    /// anchored at its end, and content.
    fn texts(svg: &str) -> (f64, Vec<(f64, f64, bool, String)>) {
        let attr = |tag: &str, name: &str| -> Option<f64> {
            let at = tag.find(&format!(" {name}="))? + name.len() + 2;
            tag[at..]
                .trim_start_matches('"')
                .split([' ', '"', '>'])
                .next()?
                .parse()
                .ok()
        };
        let width = attr(&svg[svg.find("<svg").unwrap()..], "width").unwrap();
        let mut out = Vec::new();
        for piece in svg.split("<text").skip(1) {
            let (tag, rest) = piece.split_once('>').unwrap();
            let content = rest.split("</text>").next().unwrap().to_string();
            out.push((
                attr(tag, "x").unwrap_or(0.0),
                attr(tag, "font-size").unwrap_or(12.0),
                tag.contains("text-anchor=end"),
                content,
            ));
        }
        (width, out)
    }

    /// No label runs past the chart's right edge, nor starts before its left
    /// one (ends measured as `text_width` does).
    fn every_label_fits(svg: &str) {
        let (width, texts) = texts(svg);
        for (x, size, anchored_at_end, content) in texts {
            let (start, end) = if anchored_at_end {
                (x - text_width(&content, size), x)
            } else {
                (x, x + text_width(&content, size))
            };
            assert!(
                start >= 0.0 && end <= width,
                "{content:?} spans {start}–{end}, outside 0–{width}"
            );
        }
    }

    #[test]
    fn every_count_of_the_queue_fits_in_its_chart_at_any_size() {
        for counts in [
            [500, 0, 0, 3],
            [32, 0, 0, 1],
            [1_234_567, 98_765, 4_321, 123_456],
            [0, 0, 0, 0],
        ] {
            let svg = queue(&[
                ("email".into(), counts),
                ("sms".into(), [3, 1, 0, 2]),
                ("lead_tracking".into(), counts),
            ]);
            every_label_fits(&svg);
            assert!(svg.contains(&format!("failed {}", counts[3])), "{svg}");
            assert!(svg.contains("viewBox=") && svg.contains("max-width:100%"));
        }
    }

    #[test]
    fn funnel_figures_fit_at_any_count() {
        let svg = funnel(
            "Last 7 days",
            &[
                ("Leads", 9_876_543),
                ("Email sent", 9_000_000),
                ("SMS delivered", 1),
            ],
        );
        every_label_fits(&svg);
        assert!(svg.contains(">9876543</text>"));
    }

    /// 48 hours ending at `last`, each with the same figures.
    fn day_and_a_half(last: DateTime<Utc>) -> Vec<Hour> {
        (0..48)
            .map(|i| Hour {
                at: last - chrono::Duration::hours(47 - i),
                leads: 58,
                email_sent: 55,
                sms_sent: 55,
                delivered: 100,
            })
            .collect()
    }

    #[test]
    fn the_hour_labels_fit_whatever_the_current_hour() {
        let midnight = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for hour in 0..24 {
            let svg = hourly(&day_and_a_half(midnight + chrono::Duration::hours(hour)));
            every_label_fits(&svg);
        }
    }

    #[test]
    fn the_hourly_chart_splits_sent_by_channel_and_has_readable_ticks() {
        let svg = hourly(&day_and_a_half(Utc::now()));
        assert!(svg.contains("Emails sent: 55") && svg.contains("SMS sent: 55"));
        assert!(
            !svg.contains("Sent: 110"),
            "never emails and SMS added together"
        );
        for tick in [">0<", ">20<", ">40<", ">60<"] {
            assert!(svg.contains(tick), "tick {tick} in {svg}");
        }
        every_label_fits(&svg);
        assert_eq!(ticks(58), [0, 20, 40, 60]);
        assert_eq!(ticks(0), [0, 1]);
        assert_eq!(ticks(1_234_567), [0, 500_000, 1_000_000, 1_500_000]);
        assert_eq!(tick_label(1_500_000), "1.5M");
        assert_eq!(tick_label(20_000), "20k");
    }
}
