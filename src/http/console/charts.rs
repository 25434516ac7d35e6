//! Charts drawn on the server as inline SVG (no script runs in the
//! console): leads, sent and delivered per hour over 48 hours; the queue
//! now; the funnel of the last 24 hours and 7 days. Each chart has a text
//! label and every bar a `<title>`, so a screen reader and a hover say the
//! figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};

use super::page::esc;

/// Leads that arrived, messages sent (email and SMS) and of those the
/// delivered ones, per hour over the last 48 (the current hour last). The
/// leads come from `landing_leads_created_at_idx`, the sends from
/// `notification_jobs_sent_at_idx`: two ranges of 48 hours.
pub const HOURLY: &str = "
with hours as (
  select generate_series(date_trunc('hour', now()) - interval '47 hours', date_trunc('hour', now()), interval '1 hour') as h
), leads as (
  select date_trunc('hour', created_at) as h, count(*) as n
  from public.landing_leads
  where created_at >= date_trunc('hour', now()) - interval '47 hours'
  group by 1
), sends as (
  select date_trunc('hour', sent_at) as h,
         count(*) filter (where channel in ('email', 'sms')) as sent,
         count(*) filter (where channel in ('email', 'sms')
                            and delivery_status in ('delivered', 'opened', 'clicked')) as delivered
  from public.notification_jobs
  where sent_at >= date_trunc('hour', now()) - interval '47 hours'
  group by 1
)
select hours.h, coalesce(leads.n, 0), coalesce(sends.sent, 0), coalesce(sends.delivered, 0)
from hours left join leads using (h) left join sends using (h)
order by hours.h";

/// The last 24 hours and 7 days: leads that arrived, and messages sent in
/// that time with how far they got (delivered, opened, clicked). Counting
/// sends by when they were sent rather than by their lead's arrival keeps it
/// two index ranges (the leads' `created_at`, the jobs' covering `sent_at`
/// index), not a join of a week of leads with their jobs.
pub const FUNNEL: &str = "
with leads as (
  select count(*) filter (where created_at > now() - interval '24 hours') as day, count(*) as week
  from public.landing_leads
  where created_at > now() - interval '7 days'
), sends as (
  select sent_at > now() - interval '24 hours' as day, channel,
         delivery_status in ('delivered', 'opened', 'clicked') as delivered,
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
from sends";

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

/// Horizontal bars, one per funnel step.
pub fn funnel(title: &str, steps: &[(&str, i64)]) -> String {
    let max = steps.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let mut bars = String::new();
    for (i, (label, n)) in steps.iter().enumerate() {
        let y = 28 + i * 30;
        let width = (*n as f64 / max * 260.0).round();
        bars.push_str(&format!(
            "<text x=0 y={ty} font-size=12>{label}</text><rect x=130 y={y} width={width} height=20 fill=#2f6fed rx=3><title>{label}: {n}</title></rect>\
<text x={tx} y={ty} font-size=12>{n}</text>",
            ty = y + 14,
            tx = 136.0 + width,
            label = esc(label),
        ));
    }
    let height = 28 + steps.len() * 30;
    format!(
        "<div class=chart><svg role=img aria-label=\"{t}\" width=440 height={height}><text x=0 y=16 font-size=14 font-weight=600>{t}</text>{bars}</svg></div>",
        t = esc(title)
    )
}

/// One hour's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hour {
    pub at: DateTime<Utc>,
    pub leads: i64,
    pub sent: i64,
    pub delivered: i64,
}

const SERIES: [(&str, &str); 3] = [
    ("Leads", "#6b7280"),
    ("Sent", "#2f6fed"),
    ("Delivered", "#16794c"),
];

/// Three bars per hour (leads, sent, delivered), a label every 6 hours.
pub fn hourly(hours: &[Hour]) -> String {
    const BAR: usize = 5;
    const GROUP: usize = 3 * BAR + 4;
    const HEIGHT: f64 = 160.0;
    const TOP: usize = 34;
    let max = hours
        .iter()
        .map(|h| h.leads.max(h.sent))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut bars = String::new();
    for (i, h) in hours.iter().enumerate() {
        let x0 = 40 + i * GROUP;
        for (k, (value, (name, colour))) in [h.leads, h.sent, h.delivered]
            .iter()
            .zip(SERIES)
            .enumerate()
        {
            let height = (*value as f64 / max * HEIGHT).round();
            bars.push_str(&format!(
                "<rect x={x} y={y} width={BAR} height={height} fill={colour}><title>{at} UTC · {name}: {value}</title></rect>",
                x = x0 + k * BAR,
                y = TOP as f64 + HEIGHT - height,
                at = h.at.format("%m-%d %H:00"),
            ));
        }
        if h.at.hour() % 6 == 0 {
            bars.push_str(&format!(
                "<text x={x0} y={y} font-size=10 fill=#6b7280>{}</text>",
                h.at.format("%d %H:00"),
                y = TOP as f64 + HEIGHT + 14.0
            ));
        }
    }
    let mut legend = String::new();
    for (k, (name, colour)) in SERIES.iter().enumerate() {
        let x = 300 + k * 110;
        legend.push_str(&format!(
            "<rect x={x} y=6 width=10 height=10 fill={colour}></rect><text x={tx} y=15 font-size=12>{name}</text>",
            tx = x + 14
        ));
    }
    let width = 40 + hours.len() * GROUP + 10;
    format!(
        "<div class=chart><svg role=img aria-label=\"Per hour, last 48 hours\" width={width} height={h}>\
<text x=0 y=16 font-size=14 font-weight=600>Per hour, last 48 hours (UTC)</text>{legend}\
<text x=0 y={top} font-size=10 fill=#6b7280>{max}</text><line x1=38 x2={width} y1={base} y2={base} stroke=#c5ccd6></line>{bars}</svg></div>",
        h = TOP as f64 + HEIGHT + 22.0,
        top = TOP + 8,
        max = max as i64,
        base = TOP as f64 + HEIGHT,
    )
}

/// The queue now: per channel, stacked scheduled / due / sending / failed.
pub fn queue(counts: &[(String, [i64; 4])]) -> String {
    const KINDS: [(&str, &str); 4] = [
        ("scheduled", "#c5ccd6"),
        ("due", "#8a6d00"),
        ("sending", "#2f6fed"),
        ("failed", "#b42318"),
    ];
    let max = counts
        .iter()
        .map(|(_, c)| c.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut rows = String::new();
    for (i, (channel, c)) in counts.iter().enumerate() {
        let y = 40 + i * 34;
        rows.push_str(&format!(
            "<text x=0 y={ty} font-size=12>{}</text>",
            esc(channel),
            ty = y + 15
        ));
        let mut x = 110.0;
        for (n, (kind, colour)) in c.iter().zip(KINDS) {
            let width = (*n as f64 / max * 280.0).round();
            rows.push_str(&format!(
                "<rect x={x} y={y} width={width} height=22 fill={colour}><title>{channel} {kind}: {n}</title></rect>",
                channel = esc(channel),
            ));
            x += width;
        }
        rows.push_str(&format!(
            "<text x={tx} y={ty} font-size=12 class=queue-{ch}>{}</text>",
            c.iter()
                .zip(KINDS)
                .map(|(n, (k, _))| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(" · "),
            tx = x + 6.0,
            ty = y + 15,
            ch = esc(channel),
        ));
    }
    let mut legend = String::new();
    for (k, (kind, colour)) in KINDS.iter().enumerate() {
        let x = k * 90;
        legend.push_str(&format!(
            "<rect x={x} y=22 width=10 height=10 fill={colour}></rect><text x={tx} y=31 font-size=11>{kind}</text>",
            tx = x + 14
        ));
    }
    format!(
        "<div class=chart><svg role=img aria-label=\"Queue now\" width=640 height={h}><text x=0 y=14 font-size=14 font-weight=600>Queue now</text>{legend}{rows}</svg></div>",
        h = 44 + counts.len() * 34
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
                sent: 0,
                delivered: 0,
            })
            .collect();
        let svg = hourly(&hours);
        assert_eq!(svg.matches("<rect").count(), 48 * 3 + 3);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let svg = queue(&[("email".into(), [0, 0, 0, 0]), ("sms".into(), [3, 1, 0, 2])]);
        assert!(svg.contains("scheduled 3 · due 1 · sending 0 · failed 2"));
    }
}
