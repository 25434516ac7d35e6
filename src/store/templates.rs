//! The statements that read message templates and the rules that name them.
//! A version is immutable once written (`notification_template_versions`),
//! so the worker caches what it reads here by key, channel and version.

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::queue::QueueError;
use crate::domain::{Channel, TemplateSource};

/// Template $1 of channel $2, version $3.
pub const LOAD_VERSION: &str = "
select key, channel, version, locale, subject, html, text, body, resend_template
from public.notification_template_versions
where key = $1 and channel = $2 and version = $3";

/// Every enabled rule that sends a message, with the current version of the
/// template it names (null columns when there is none).
pub const ENABLED_RULES: &str = "
select r.id, r.source_pattern, r.channel, r.template, r.params, r.max_sms_segments,
       t.key, t.channel, t.version, t.locale, t.subject, t.html, t.text, t.body, t.resend_template
from public.notification_rules r
left join public.notification_templates t on t.key = r.template and t.channel = r.channel
where r.enabled and r.channel in ('email', 'sms')
order by r.id";

/// Changes when a template or a rule changes: the worker checks them again.
pub const FINGERPRINT: &str = "
select concat_ws('/',
  (select count(*) || ':' || coalesce(max(version), 0) || ':' || coalesce(max(updated_at)::text, '')
     from public.notification_templates),
  (select count(*) || ':' || coalesce(max(updated_at)::text, '') from public.notification_rules))";

/// An enabled rule and the current version of its template.
#[derive(Debug, Clone)]
pub struct RuleTemplate {
    pub rule_id: i64,
    pub source_pattern: String,
    pub channel: Channel,
    pub template: String,
    pub params: serde_json::Value,
    pub max_sms_segments: i32,
    pub current: Option<TemplateSource>,
}

fn source(row: &Row, at: usize) -> Option<TemplateSource> {
    let key: Option<String> = row.get(at);
    let channel: Option<String> = row.get(at + 1);
    Some(TemplateSource {
        key: key?,
        channel: Channel::parse(&channel?)?,
        version: row.get(at + 2),
        locale: row.get(at + 3),
        subject: row.get(at + 4),
        html: row.get(at + 5),
        text: row.get(at + 6),
        body: row.get(at + 7),
        resend_template: row.get(at + 8),
    })
}

pub async fn load_version(
    pool: &Pool,
    key: &str,
    channel: Channel,
    version: i32,
) -> Result<Option<TemplateSource>, QueueError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(LOAD_VERSION).await?;
    let row = client
        .query_opt(&statement, &[&key, &channel.as_str(), &version])
        .await?;
    Ok(row.and_then(|r| source(&r, 0)))
}

/// What each message of lead $1 is (or will be) made of: the channel, the
/// template, the version and the values, as the job's first claim fixed
/// them, or as a claim now would ($2: the default product link). With $3,
/// template $3 for both channels instead of the lead's own jobs.
pub const PREVIEW: &str = concat!(
    "
with wanted as (
  select t.key, t.channel from public.notification_templates t where t.key = $3::text
  union
  select j.template, j.channel from public.notification_jobs j
   where j.lead_id = $1 and j.channel in ('email', 'sms') and $3::text is null
)
select w.channel, w.key, coalesce(j.template_version, t.version), j.status,
       coalesce(j.sent_params, ",
    message_values!("$1", "j.rule_id", "w.channel", "w.key", "$2"),
    ")
from wanted w
left join public.notification_jobs j on j.lead_id = $1 and j.channel = w.channel and j.template = w.key
left join public.notification_templates t on t.key = w.key and t.channel = w.channel
where exists (select 1 from public.landing_leads where id = $1)
order by w.channel, w.key"
);

/// One message of a lead, as `PREVIEW` finds it.
#[derive(Debug, Clone)]
pub struct PreviewRow {
    pub channel: Channel,
    pub template: String,
    pub version: Option<i32>,
    /// The job's status, when the lead has a job for it.
    pub status: Option<String>,
    pub params: serde_json::Value,
}

pub async fn preview_rows(
    client: &tokio_postgres::Client,
    lead: uuid::Uuid,
    product_url: &str,
    template: Option<&str>,
) -> Result<Vec<PreviewRow>, QueueError> {
    Ok(client
        .query(PREVIEW, &[&lead, &product_url, &template])
        .await?
        .iter()
        .filter_map(|row| {
            Some(PreviewRow {
                channel: Channel::parse(row.get(0))?,
                template: row.get(1),
                version: row.get(2),
                status: row.get(3),
                params: row.get(4),
            })
        })
        .collect())
}

/// Version `version` of template `key` for `channel`, on a plain connection.
pub async fn load_version_with(
    client: &tokio_postgres::Client,
    key: &str,
    channel: Channel,
    version: i32,
) -> Result<Option<TemplateSource>, QueueError> {
    let row = client
        .query_opt(LOAD_VERSION, &[&key, &channel.as_str(), &version])
        .await?;
    Ok(row.and_then(|r| source(&r, 0)))
}

pub async fn enabled_rules(
    client: &tokio_postgres::Client,
) -> Result<Vec<RuleTemplate>, QueueError> {
    Ok(client
        .query(ENABLED_RULES, &[])
        .await?
        .iter()
        .filter_map(|row| {
            Some(RuleTemplate {
                rule_id: row.get(0),
                source_pattern: row.get(1),
                channel: Channel::parse(row.get(2))?,
                template: row.get(3),
                params: row.get(4),
                max_sms_segments: row.get(5),
                current: source(row, 6),
            })
        })
        .collect())
}

pub async fn fingerprint(pool: &Pool) -> Result<String, QueueError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(FINGERPRINT).await?;
    Ok(client.query_one(&statement, &[]).await?.get(0))
}

pub fn statements() -> [&'static str; 4] {
    [LOAD_VERSION, ENABLED_RULES, FINGERPRINT, PREVIEW]
}
