//! The database room: connections as libpq makes them (TLS, `sslmode`), the
//! queue's statements, the migrations and their history, and the private
//! clusters of dev mode and the tests. It uses `domain` and nothing else of
//! the crate; every room above may use it.

/// The values a message is made of, as one jsonb expression: lead `$lead`'s
/// fields and metadata, the params and SMS limit of its rule, and `$url` as
/// the default product link. The rule is the job's own (`$rule`, the rule
/// that made it, found by its key) while it still has channel `$channel` and
/// template `$template`; otherwise (a job made before jobs noted their rule,
/// a preview of a template, a rule deleted since) the first rule (enabled
/// first) of that channel and template whose pattern the lead's source
/// matches. A claim fixes it into the job (`sent_params`); a preview
/// computes it the same way.
macro_rules! message_values {
    ($lead:literal, $rule:literal, $channel:literal, $template:literal, $url:literal) => {
        concat!(
            "(select jsonb_build_object(
                    'name', l.name, 'email', l.email, 'phone', l.phone, 'source', l.source,
                    'created_at', l.created_at, 'metadata', coalesce(l.metadata, '{}'::jsonb),
                    'params', coalesce(r.params, '{}'::jsonb),
                    'max_sms_segments', r.max_sms_segments, 'product_url', ",
            $url,
            "::text)
             from public.landing_leads l
             left join public.notification_rules r on r.id = coalesce(
               (select own.id from public.notification_rules own
                 where own.id = ",
            $rule,
            " and own.channel = ",
            $channel,
            " and own.template = ",
            $template,
            "),
               (select m.id from public.notification_rules m
                 where m.channel = ",
            $channel,
            " and m.template = ",
            $template,
            " and l.source like m.source_pattern
                 order by m.enabled desc, m.id limit 1))
            where l.id = ",
            $lead,
            ")"
        )
    };
}

pub mod cluster;
mod connect;
pub mod conninfo;
pub mod forget;
pub mod grouping;
pub mod migrate;
pub mod operator;
pub mod queue;
pub mod search;
pub mod storable;
pub mod suppressions;
pub mod templates;
pub mod tls;

pub use connect::{
    Connection, DbError, Failed, WORKER_SESSION, connect, describe, explain, open, pool,
    worker_pool,
};
pub use conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode};
